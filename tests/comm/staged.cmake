# The staged communicator's own behaviour (its collectives run in comm_communicator_test's
# typed suite): label "comm".
came_add_test(comm_staged_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/staged_communicator_test.cc
  LIBS came_comm
  LABELS comm)

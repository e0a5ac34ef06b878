# Tests of runtime/comm: the stores and the communicators (label "comm").
came_add_test(comm_store_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/store_test.cc
  LIBS came_comm
  LABELS comm)

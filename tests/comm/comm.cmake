# Tests of runtime/comm: the stores and the communicators (label "comm").
came_add_test(comm_store_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/store_test.cc
  LIBS came_comm
  LABELS comm)

came_add_test(comm_communicator_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/communicator_test.cc
  LIBS came_comm
  LABELS comm)
if(CAME_WITH_CUDA)
  target_link_libraries(comm_communicator_test PRIVATE came_nccl)
  target_compile_definitions(comm_communicator_test PRIVATE CAME_TEST_WITH_NCCL=1)
endif()

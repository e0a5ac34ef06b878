came_add_test(sharded_came_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sharded_came_test.cc
              LIBS came_engine came_case_io LABELS engine)

came_add_test(checkpoint_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/checkpoint_test.cc
              LIBS came_engine came_case_io LABELS engine)

came_add_test(state_export_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/state_export_test.cc
              LIBS came_engine came_case_io LABELS engine)

came_add_test(golden_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/golden_test.cc LIBS came_case_io
              LABELS unit)

came_add_test(cpu_property_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_property_test.cc
              LIBS came_case_io LABELS unit)

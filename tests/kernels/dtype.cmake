came_add_test(dtype_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/dtype_test.cc LIBS came_kernels
              LABELS unit)

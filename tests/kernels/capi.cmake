# The kernels' C ABI (kernels/capi): its behaviour through libcame_capi.so, and the shared
# libraries themselves (exports, no CUDA dependency of the CPU one).
came_add_test(capi_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/capi_test.cc
              LIBS came_capi came_kernels LABELS unit)
add_test(NAME capi_library_cpu
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/capi_library_check.sh $<TARGET_FILE:came_capi> cpu)
set_tests_properties(capi_library_cpu PROPERTIES LABELS unit TIMEOUT 60)
if(TARGET came_capi_cuda)
  add_test(NAME capi_library_cuda
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/capi_library_check.sh $<TARGET_FILE:came_capi_cuda>
                   cuda)
  set_tests_properties(capi_library_cuda PROPERTIES LABELS unit TIMEOUT 60)
endif()

# cuda_bench: the fused CUDA step on GPT-2 small and XL shapes against the device-to-device copy
# bandwidth of the same run (needs a GPU; exits 2 without one). Run by scripts/gpu-check.
if(CAME_WITH_CUDA)
  add_executable(cuda_bench ${CMAKE_CURRENT_LIST_DIR}/cuda_bench.cc)
  target_link_libraries(cuda_bench PRIVATE came_cuda_kernels benchmark::benchmark came_warnings)
endif()

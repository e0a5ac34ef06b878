# The CUDA kernels. cuda_layout_test checks the chunk table and reductions on the CPU (plain
# C++, so it runs in every build); the others run the kernels and skip visibly without a GPU.
came_add_test(cuda_layout_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_layout_test.cc ${PROJECT_SOURCE_DIR}/kernels/cuda/layout.cc
  LIBS came_kernels LABELS unit)
if(CAME_WITH_CUDA)
  came_add_test(cuda_came_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_came_test.cc ${CMAKE_CURRENT_LIST_DIR}/cuda_test_util.cc
    LIBS came_cuda_kernels came_case_io LABELS "unit;gpu")
  came_add_test(cuda_golden_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_golden_test.cc ${CMAKE_CURRENT_LIST_DIR}/cuda_test_util.cc
    LIBS came_cuda_kernels came_case_io came_cuda_trajectory LABELS "unit;gpu")
endif()
# The phase kernels themselves, run on the CPU through a host emulation of threads, barriers
# and warp shuffles (no GPU needed).
came_add_test(cuda_emulation_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_emulation_test.cc ${PROJECT_SOURCE_DIR}/kernels/cuda/layout.cc
  LIBS came_case_io LABELS unit)
target_compile_options(cuda_emulation_test PRIVATE -Wno-unknown-pragmas)  # nvcc's #pragma unroll

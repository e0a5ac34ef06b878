# The step sequence on the CUDA backend against the CPU backend (skips visibly without a GPU).
if(CAME_WITH_CUDA)
  came_add_test(cuda_phases_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_phases_test.cc ${CMAKE_CURRENT_LIST_DIR}/cuda_test_util.cc
    LIBS came_cuda_kernels came_case_io LABELS "unit;gpu")
endif()

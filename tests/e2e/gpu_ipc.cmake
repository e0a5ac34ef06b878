# came.ShardedCAME on a GPU through came-launch --backend nccl (CUDA IPC buffers of
# came-rankd --device 0) against came.CAME in-process: test_gpu_ipc.py. Skips, saying so,
# without a GPU.
if(NOT TARGET came_launch)
  return()
endif()
add_test(NAME test_gpu_ipc COMMAND /usr/bin/python3 -m unittest -v test_gpu_ipc
         WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
set_tests_properties(test_gpu_ipc PROPERTIES
  ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/clients/python:${CMAKE_BINARY_DIR}/python;CAME_LAUNCH=$<TARGET_FILE:came_launch>"
  LABELS "python;e2e;gpu" TIMEOUT 400
  SKIP_REGULAR_EXPRESSION "skipped .no CUDA device")

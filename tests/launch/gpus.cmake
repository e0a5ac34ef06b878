# came-launch's GPU plan (label "launch"): gpus_test in-process with a fake /proc folder;
# launch_nccl_without_gpu_test runs the binary (skips where a GPU is visible).
came_add_test(gpus_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/gpus_test.cc
  LIBS came_launch_lib
  LABELS launch)
add_test(NAME launch_nccl_without_gpu_test
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/launch_nccl_without_gpu_test.sh $<TARGET_FILE:came_launch>)
set_tests_properties(launch_nccl_without_gpu_test PROPERTIES LABELS launch TIMEOUT 60
                     SKIP_RETURN_CODE 77)

# came-replay --impl cuda run as a subprocess: exit 2 and one line without a device, every
# golden case passing with one.
came_add_test(replay_cuda_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/replay_cuda_test.cc
              LIBS came_cuda_trajectory LABELS "tools;gpu")
target_compile_definitions(replay_cuda_test PRIVATE CAME_REPLAY_BIN="$<TARGET_FILE:came_replay>")
add_dependencies(replay_cuda_test came_replay)

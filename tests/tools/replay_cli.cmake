# came-replay run as a subprocess (tools/replay).
came_add_test(replay_cli_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/replay_cli_test.cc
              LIBS came_case_io LABELS tools)
target_compile_definitions(replay_cli_test PRIVATE CAME_REPLAY_BIN="$<TARGET_FILE:came_replay>")
add_dependencies(replay_cli_test came_replay)

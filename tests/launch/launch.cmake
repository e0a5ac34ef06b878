# came-launch tests (label "launch"): the supervisor, the output pump, spawning and the
# flags in-process; the came-launch binary end to end with stand-in daemons (shell scripts
# passed through --bin-dir).
came_add_test(launch_unit_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/launch_unit_test.cc
  LIBS came_launch_lib
  LABELS launch)

came_add_test(launch_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/launch_test.cc
  LIBS came_launch_lib
  LABELS launch)
target_compile_definitions(launch_test PRIVATE CAME_LAUNCH_BINARY="$<TARGET_FILE:came_launch>")
add_dependencies(launch_test came_launch)

# The launcher's restart, preemption and multi-node flags and the supervisor's SIGTERM
# handling, in-process (label launch).
came_add_test(restart_options_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/restart_options_test.cc
  LIBS came_launch_lib
  LABELS launch)

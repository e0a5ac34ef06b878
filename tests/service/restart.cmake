# The coordinator's restart generations, stop requests and checkpoint retention (label
# service).
came_add_test(coordinator_restart_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/coordinator_restart_test.cc
  LIBS came_coordinator_core
  LABELS service)
target_include_directories(coordinator_restart_test PRIVATE ${PROJECT_SOURCE_DIR})

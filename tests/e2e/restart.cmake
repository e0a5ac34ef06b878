# Restarts, preemption and multi-node jobs through real processes (label e2e;restart).
if(TARGET came_launch AND TARGET came-rankd AND TARGET came-coordinator)
  came_add_test(restart_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/restart_test.cc
                LIBS nlohmann_json::nlohmann_json LABELS e2e)
  target_compile_definitions(restart_test PRIVATE
    CAME_LAUNCH="$<TARGET_FILE:came_launch>"
    RESTART_TRAINER="${CMAKE_CURRENT_LIST_DIR}/restart_trainer.py")
  target_include_directories(restart_test PRIVATE ${PROJECT_SOURCE_DIR})
  add_dependencies(restart_test came_launch came-rankd came-coordinator)
endif()

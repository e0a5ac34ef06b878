# End-to-end tests through came-launch (Python trainers; label e2e).
if(TARGET came_launch AND TARGET came-rankd AND TARGET came-coordinator)
  came_add_test(e2e_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/e2e_test.cc
                LIBS came_engine came_case_io nlohmann_json::nlohmann_json LABELS e2e)
  target_compile_definitions(e2e_test PRIVATE
    CAME_LAUNCH="$<TARGET_FILE:came_launch>"
    E2E_TRAINER="${CMAKE_CURRENT_LIST_DIR}/e2e_trainer.py")
  add_dependencies(e2e_test came_launch came-rankd came-coordinator)
endif()

# Failure handling across real processes (label fault).
if(TARGET came-rankd AND TARGET came-coordinator AND TARGET came_rank_client)
  came_add_test(fault_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/fault_test.cc
                LIBS came_rank_client LABELS fault)
  target_compile_definitions(fault_test PRIVATE BIN_DIR="${CMAKE_RUNTIME_OUTPUT_DIRECTORY}")
  add_dependencies(fault_test came-rankd came-coordinator)
endif()

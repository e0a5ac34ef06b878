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

# Metrics: a real Prometheus server scrapes a running job; the shipped configuration checks.
find_program(CAME_PROMETHEUS prometheus)
find_program(CAME_PROMTOOL promtool)
if(CAME_PROMETHEUS AND TARGET came_launch AND TARGET came-cpp-trainer)
  add_test(NAME prometheus_scrape_test
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/prometheus_scrape_test.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY}
                   ${PROJECT_SOURCE_DIR}/deploy/prometheus/came_rules.yml)
  set_tests_properties(prometheus_scrape_test PROPERTIES LABELS "e2e;metrics" TIMEOUT 180)
endif()
if(CAME_PROMTOOL)
  add_test(NAME deploy_prometheus_config
           COMMAND ${CAME_PROMTOOL} check config ${PROJECT_SOURCE_DIR}/deploy/prometheus/prometheus.yml)
  set_tests_properties(deploy_prometheus_config PROPERTIES LABELS "deploy")
endif()

# A SIGKILLed rankd leaves shared memory that came-launch removes at the end of the job.
if(TARGET came_launch AND TARGET came-cpp-trainer)
  add_test(NAME shm_cleanup_test
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/shm_cleanup_test.sh ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
  set_tests_properties(shm_cleanup_test PROPERTIES LABELS "e2e;fault" TIMEOUT 120)
endif()

# Deployment: Prometheus rules and configs, the dashboard's metrics on a live job, the
# servers' health checks, the Kubernetes base, the Slurm script, and the compose stack
# really coming up (label compose: `ctest -L compose` runs it alone).
set(_deploy ${PROJECT_SOURCE_DIR}/deploy)
set(_here ${CMAKE_CURRENT_LIST_DIR})
set(_bin ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
find_program(CAME_PROMTOOL promtool)
find_program(CAME_DOCKER_COMPOSE docker-compose)
find_program(CAME_PODMAN podman)
find_program(CAME_MMDEBSTRAP mmdebstrap)

if(CAME_PROMTOOL)
  add_test(NAME deploy_prometheus_rules
           COMMAND ${CAME_PROMTOOL} test rules ${_deploy}/prometheus/came_rules_test.yml)
  add_test(NAME deploy_prometheus_compose_config
           COMMAND ${CAME_PROMTOOL} check config ${_deploy}/prometheus/prometheus-compose.yml)
  set_tests_properties(deploy_prometheus_rules deploy_prometheus_compose_config
                       PROPERTIES LABELS "deploy;metrics")
endif()

if(TARGET came_launch AND TARGET came-cpp-trainer)
  add_test(NAME deploy_metrics_exist
           COMMAND /usr/bin/python3 ${_here}/metrics_exist_test.py ${_bin}
                   ${_deploy}/grafana/dashboards ${_deploy}/prometheus/came_rules.yml)
  set_tests_properties(deploy_metrics_exist PROPERTIES LABELS "deploy;metrics;e2e" TIMEOUT 180)
endif()

if(TARGET came-coordinator AND TARGET came-rankd AND TARGET came-cpp-trainer)
  add_test(NAME deploy_health
           COMMAND /usr/bin/python3 ${_here}/health_test.py ${_bin} ${_deploy}/docker)
  set_tests_properties(deploy_health PROPERTIES LABELS "deploy" TIMEOUT 300)
endif()

# kubernetes-validate (PyPI, with the JSON schemas) and its dependencies, pinned, into
# <build>/pydeps-k8s; PyYAML is Debian's.
add_test(NAME deploy_k8s_pydeps
         COMMAND bash -c "source '${PROJECT_SOURCE_DIR}/scripts/lib/pydeps.sh' && came_pydeps kubernetes-validate==1.37.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0 typing-extensions==4.15.0 importlib-resources==6.5.2 packaging==25.0")
set_tests_properties(deploy_k8s_pydeps PROPERTIES
  ENVIRONMENT "CAME_PYDEPS=${CMAKE_BINARY_DIR}/pydeps-k8s"
  FIXTURES_SETUP came_k8s_pydeps LABELS "deploy" TIMEOUT 300)
add_test(NAME deploy_k8s_validate
         COMMAND /usr/bin/python3 ${_here}/k8s_validate.py ${_deploy}/k8s 1.30.0)
set_tests_properties(deploy_k8s_validate PROPERTIES
  ENVIRONMENT "PYTHONPATH=${CMAKE_BINARY_DIR}/pydeps-k8s"
  FIXTURES_REQUIRED came_k8s_pydeps LABELS "deploy" TIMEOUT 120)

if(TARGET came_launch AND TARGET came-cpp-trainer)
  add_test(NAME deploy_slurm
           COMMAND ${_here}/slurm_test.sh ${_deploy}/slurm/came.sbatch ${_bin})
  set_tests_properties(deploy_slurm PROPERTIES LABELS "deploy" TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()

if(CAME_DOCKER_COMPOSE)
  # Every profile's services validate (the GPU ones cannot run without GPUs).
  add_test(NAME deploy_compose_config
           COMMAND ${CAME_DOCKER_COMPOSE} --project-directory ${PROJECT_SOURCE_DIR}
                   -f ${PROJECT_SOURCE_DIR}/docker-compose.yml
                   --profile gpu --profile cpu --profile dashboard config -q)
  set_tests_properties(deploy_compose_config PROPERTIES
    ENVIRONMENT "CAME_TOKEN_FILE=/dev/null"
    LABELS "deploy")
endif()
if(CAME_DOCKER_COMPOSE AND CAME_PODMAN AND CAME_MMDEBSTRAP)
  add_test(NAME compose_test
           COMMAND ${_here}/compose_test.sh ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR}/compose-test)
  # Alone: the image build compiles the binaries on every core.
  set_tests_properties(compose_test PROPERTIES LABELS "compose" TIMEOUT 2700 RUN_SERIAL TRUE)
endif()

# The flags the compose file and the Kubernetes manifests pass exist in the binaries.
if(TARGET came-coordinator AND TARGET came-rankd)
  add_test(NAME deploy_flags
           COMMAND /usr/bin/python3 ${_here}/deploy_flags_test.py ${_bin} ${PROJECT_SOURCE_DIR})
  set_tests_properties(deploy_flags PROPERTIES LABELS "deploy")
endif()

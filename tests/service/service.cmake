# Control-plane tests (label "service"): the coordinator core on a fake clock, and the gRPC
# server, client and store on 127.0.0.1.
came_add_test(coordinator_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/coordinator_test.cc
  LIBS came_coordinator_core nlohmann_json::nlohmann_json
  LABELS service)

if(TARGET came_coordinator_server)
  came_add_test(coordinator_grpc_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/coordinator_grpc_test.cc
    LIBS came_coordinator_server came_coordinator_client
    LABELS service)
endif()

if(TARGET came-coordinator)
  came_add_test(coordinator_binary_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/coordinator_binary_test.cc
    LIBS came_coordinator_client
    LABELS service)
  target_compile_definitions(coordinator_binary_test
    PRIVATE CAME_COORDINATOR_BIN="$<TARGET_FILE:came-coordinator>")
  add_dependencies(coordinator_binary_test came-coordinator)
endif()

came_add_test(stop_request_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/stop_request_test.cc
  LIBS came_coordinator_core
  LABELS service)

if(TARGET came_service_common)
  came_add_test(cli_common_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/cli_common_test.cc
    LIBS came_service_common
    LABELS service)
endif()

came_add_test(kv_store_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/kv_store_test.cc
  LIBS came_coordinator_core
  LABELS service)

# came-rankd tests (label "rankd"): RankCore with ranks as threads (Gloo over an in-memory
# store, an in-process manifest agreement), and the gRPC adapter on 127.0.0.1 port 0.
if(TARGET came_rankd_service)
  came_add_test(rank_core_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_core_test.cc
    LIBS came_rankd_core came_engine came_case_io rt
    LABELS rankd)

  came_add_test(rank_service_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_service_test.cc
    LIBS came_rankd_service came_rank_client came_case_io rt
    LABELS rankd)
endif()

if(TARGET came_rankd_service)
  came_add_test(rank_metrics_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_metrics_test.cc
                LIBS came_rankd_service LABELS rankd)
endif()

if(TARGET came_rankd_core)
  came_add_test(rank_checkpoint_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_checkpoint_test.cc
    LIBS came_rankd_core came_coordinator_core came_engine rt
    LABELS rankd)
endif()

if(TARGET came_rankd_core)
  came_add_test(checkpoint_fuzz_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/checkpoint_fuzz_test.cc
    LIBS came_rankd_core came_coordinator_core came_engine nlohmann_json::nlohmann_json rt
    LABELS rankd)
endif()

# control_bench: Step round trip through gRPC minus the engine's time (in-process rankd).
if(TARGET came_rank_client AND TARGET came_rankd_service)
  add_executable(control_bench ${CMAKE_CURRENT_LIST_DIR}/control_bench.cc)
  target_link_libraries(control_bench
    PRIVATE came_rank_client came_rankd_service benchmark::benchmark came_warnings)
endif()

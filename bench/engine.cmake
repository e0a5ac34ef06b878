# engine_bench: one ShardedCame step per iteration, one process per rank over Gloo on
# 127.0.0.1 (bench/run_engine_bench.sh starts the ranks). Results: docs/PERF.md.
add_executable(engine_bench ${CMAKE_CURRENT_LIST_DIR}/engine_bench.cc)
target_link_libraries(engine_bench PRIVATE came_engine benchmark::benchmark came_warnings)

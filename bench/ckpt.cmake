# ckpt_bench: checkpoint save/load of GPT-2 small at W = 2 next to a raw write+fsync of the same
# bytes. Results: docs/PERF.md.
add_executable(ckpt_bench ${CMAKE_CURRENT_LIST_DIR}/ckpt_bench.cc)
target_link_libraries(ckpt_bench PRIVATE came_engine benchmark::benchmark nlohmann_json::nlohmann_json came_warnings)

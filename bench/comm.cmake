# comm_bench: Gloo reduce-scatter vs all-reduce over W=2 ranks as threads on 127.0.0.1.
add_executable(comm_bench ${CMAKE_CURRENT_LIST_DIR}/comm_bench.cc)
target_link_libraries(comm_bench PRIVATE came_comm benchmark::benchmark came_warnings)

# came_bench: the fused CPU CAME step against a STREAM-triad memory-bandwidth roofline and an
# unfused (eager-PyTorch-style) port of the reference loop. Results: docs/PERF.md.
add_executable(came_bench ${CMAKE_CURRENT_LIST_DIR}/came_bench.cc)
target_link_libraries(came_bench PRIVATE came_kernels benchmark::benchmark came_warnings)
target_compile_options(came_bench PRIVATE -O3 -fno-math-errno)

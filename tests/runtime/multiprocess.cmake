add_executable(engine_worker ${CMAKE_CURRENT_LIST_DIR}/engine_worker.cc)
target_link_libraries(engine_worker PRIVATE came_engine nlohmann_json::nlohmann_json came_warnings)
came_add_test(multiprocess_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/multiprocess_test.cc
              LIBS came_engine came_case_io LABELS engine)
target_compile_definitions(multiprocess_test PRIVATE ENGINE_WORKER="$<TARGET_FILE:engine_worker>")
add_dependencies(multiprocess_test engine_worker)

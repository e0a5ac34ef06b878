came_add_test(checkpoint_kill_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/checkpoint_kill_test.cc
              LIBS came_engine came_case_io nlohmann_json::nlohmann_json LABELS engine)

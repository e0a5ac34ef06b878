# came-ckpt (tools/ckpt): the library and the command line.
if(TARGET came_ckpt)
  came_add_test(ckpt_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ckpt_test.cc
                LIBS came_ckpt_state came_case_io nlohmann_json::nlohmann_json LABELS tools)
  target_compile_definitions(ckpt_test PRIVATE CAME_CKPT_BIN="$<TARGET_FILE:came_ckpt>")
  add_dependencies(ckpt_test came_ckpt)
endif()

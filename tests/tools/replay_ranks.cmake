# came-replay --ranks W: every golden case sharded over several world sizes (the tensor split
# mid-row, ranks that own nothing when W exceeds the element count).
file(GLOB _golden_cases ${PROJECT_SOURCE_DIR}/tests/data/golden/*.json)
foreach(case ${_golden_cases})
  get_filename_component(name ${case} NAME_WE)
  foreach(w 2 3 8)
    add_test(NAME replay_ranks.${name}.w${w}
             COMMAND $<TARGET_FILE:came_replay> --case ${case} --ranks ${w})
    set_tests_properties(replay_ranks.${name}.w${w} PROPERTIES LABELS "tools;engine" TIMEOUT 120)
  endforeach()
endforeach()

# Automatic checkpoints and stop requests through RankCore, ranks as threads (label rankd).
if(TARGET came_rankd_core)
  came_add_test(rank_stop_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_stop_test.cc
    LIBS came_rankd_core came_coordinator_core came_engine rt
    LABELS rankd)
endif()

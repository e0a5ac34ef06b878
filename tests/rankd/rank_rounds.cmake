if(TARGET came_rankd_core)
  came_add_test(rank_rounds_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/rank_rounds_test.cc
    LIBS came_rankd_core came_coordinator_core came_engine rt
    LABELS rankd)
endif()

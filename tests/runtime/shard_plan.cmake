came_add_test(shard_plan_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/shard_plan_test.cc
  LIBS came_engine
  LABELS unit)

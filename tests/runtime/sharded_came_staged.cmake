# ShardedCame over the staged communicator (host mover) against the plain Gloo engine.
came_add_test(sharded_came_staged_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/sharded_came_staged_test.cc
              LIBS came_engine LABELS engine)

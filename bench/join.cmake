# join_bench: how long N simulated ranks (threads, a channel each) take to Join a real
# came-coordinator on 127.0.0.1 and pass a rendezvous barrier.
if(TARGET came_coordinator_server)
  add_executable(join_bench ${CMAKE_CURRENT_LIST_DIR}/join_bench.cc)
  target_link_libraries(join_bench
    PRIVATE came_coordinator_server came_coordinator_client benchmark::benchmark came_warnings)
endif()

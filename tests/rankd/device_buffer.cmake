# came-rankd's device buffers (label "rankd"): the refusals run everywhere; the allocations
# and IPC handles need a GPU and skip, saying so, without one.
if(TARGET came_rankd_core)
  came_add_test(device_buffer_test
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/device_buffer_test.cc
    LIBS came_rankd_core came_engine rt
    LABELS rankd)
  if(CAME_WITH_CUDA)
    target_link_libraries(device_buffer_test PRIVATE CUDA::cudart)
    target_compile_definitions(device_buffer_test PRIVATE CAME_RANKD_TEST_WITH_CUDA=1)
  else()
    target_compile_definitions(device_buffer_test PRIVATE CAME_RANKD_TEST_WITH_CUDA=0)
  endif()
  add_test(NAME rankd_device_flag_test
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/rankd_device_flag_test.sh $<TARGET_FILE:came-rankd>)
  set_tests_properties(rankd_device_flag_test PROPERTIES LABELS rankd TIMEOUT 60)
endif()

if(TARGET came-rankd AND TARGET came-coordinator)
  add_test(NAME rankd_backend_mismatch_test
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/rankd_backend_mismatch_test.sh
                   $<TARGET_FILE:came-coordinator> $<TARGET_FILE:came-rankd>)
  set_tests_properties(rankd_backend_mismatch_test PROPERTIES LABELS rankd TIMEOUT 120)
endif()

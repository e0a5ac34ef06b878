# The Python client over TLS against real came-coordinator and came-rankd processes.
if(TARGET came-rankd AND TARGET came-coordinator)
  add_test(NAME test_rank_client_tls
           COMMAND /usr/bin/python3 -m unittest -v test_rank_client_tls
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(test_rank_client_tls PROPERTIES
    ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/clients/python:${CMAKE_BINARY_DIR}/python;CAME_BIN_DIR=$<TARGET_FILE_DIR:came-rankd>"
    LABELS "python;rankd" TIMEOUT 120)
endif()

# came-ckpt import/export with came-pytorch and the safetensors library (PyPI packages into
# <build>/pydeps through scripts/lib/pydeps.sh), and came-rankd continuing the import.
if(TARGET came_ckpt AND TARGET came_launch)
  add_test(NAME ckpt_torch_pydeps
           COMMAND bash -c "source '${PROJECT_SOURCE_DIR}/scripts/lib/pydeps.sh' && came_pydeps came-pytorch==0.1.3 safetensors==0.4.2")
  set_tests_properties(ckpt_torch_pydeps PROPERTIES
    ENVIRONMENT "CAME_BUILD=${CMAKE_BINARY_DIR}"
    FIXTURES_SETUP ckpt_torch_pydeps LABELS "python;tools" TIMEOUT 600)
  add_test(NAME test_ckpt_torch COMMAND /usr/bin/python3 -m unittest -v test_ckpt_torch
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(test_ckpt_torch PROPERTIES
    ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/clients/python:${CMAKE_BINARY_DIR}/python:${CMAKE_BINARY_DIR}/pydeps;CAME_CKPT=$<TARGET_FILE:came_ckpt>;CAME_LAUNCH=$<TARGET_FILE:came_launch>"
    FIXTURES_REQUIRED ckpt_torch_pydeps LABELS "python;tools" TIMEOUT 900)
endif()

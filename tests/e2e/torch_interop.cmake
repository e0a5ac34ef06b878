# came.ShardedCAME's torch interop through real came-rankd processes (came-launch):
# state_dict round trips with came_pytorch.CAME both ways and across world sizes, OneCycleLR,
# the refusals (test_torch_interop.py), and Hugging Face Trainer's save and resume
# (test_hf_trainer.py). The PyPI packages they need go into <build>/pydeps
# (scripts/lib/pydeps.sh); their Debian dependencies are in scripts/setup.
if(NOT TARGET came_launch)
  return()
endif()
set(_interop_pydeps came-pytorch==0.1.3 transformers==4.35.2 huggingface-hub==0.21.4
    tokenizers==0.15.2 safetensors==0.4.2 accelerate==0.25.0)
list(JOIN _interop_pydeps " " _interop_pydeps)
add_test(NAME torch_interop_pydeps
         COMMAND bash -c "source '${PROJECT_SOURCE_DIR}/scripts/lib/pydeps.sh' && came_pydeps ${_interop_pydeps}")
set_tests_properties(torch_interop_pydeps PROPERTIES
  ENVIRONMENT "CAME_BUILD=${CMAKE_BINARY_DIR}"
  FIXTURES_SETUP torch_interop_pydeps LABELS "python;e2e" TIMEOUT 600)

foreach(_suite test_torch_interop test_hf_trainer)
  add_test(NAME ${_suite} COMMAND /usr/bin/python3 -m unittest -v ${_suite}
           WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR})
  set_tests_properties(${_suite} PROPERTIES
    ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/clients/python:${CMAKE_BINARY_DIR}/python:${CMAKE_BINARY_DIR}/pydeps;CAME_LAUNCH=$<TARGET_FILE:came_launch>"
    FIXTURES_REQUIRED torch_interop_pydeps LABELS "python;e2e" TIMEOUT 900)
endforeach()

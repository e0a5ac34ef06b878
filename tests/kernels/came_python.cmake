# came.CAME (clients/python/came/optim.py) on libcame_capi.so against the authors'
# came_pytorch 0.1.3, which the fixture installs into <build>/pydeps (scripts/lib/pydeps.sh).
# came/_lib.py finds <build>/lib through <build>/python on PYTHONPATH.
set(_came_py /usr/bin/python3)  # Debian's python3 with torch
add_test(NAME came_python_pydeps
         COMMAND bash -c "source '${PROJECT_SOURCE_DIR}/scripts/lib/pydeps.sh' && came_pydeps came-pytorch==0.1.3")
set_tests_properties(came_python_pydeps PROPERTIES
  ENVIRONMENT "CAME_BUILD=${CMAKE_BINARY_DIR}"
  FIXTURES_SETUP came_pydeps LABELS python TIMEOUT 300)

add_test(NAME came_optim_tests
         COMMAND ${_came_py} -m unittest discover -s ${PROJECT_SOURCE_DIR}/clients/python/came_tests
                 -t ${PROJECT_SOURCE_DIR}/clients/python -v)
set_tests_properties(came_optim_tests PROPERTIES
  ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/clients/python:${CMAKE_BINARY_DIR}/python:${CMAKE_BINARY_DIR}/pydeps"
  FIXTURES_REQUIRED came_pydeps LABELS python TIMEOUT 300)

# The package as a user installs it: pip install ./clients/python into a fresh virtualenv
# (pip fetches scikit-build-core from PyPI for the isolated build), then came.CAME on the CPU
# from outside the source tree.
add_test(NAME came_wheel_test
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/came_wheel_test.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(came_wheel_test PROPERTIES LABELS python TIMEOUT 600)

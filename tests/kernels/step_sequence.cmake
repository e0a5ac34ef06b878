# The one step sequence of every kernel backend (kernels/step_sequence.h).
came_add_test(step_sequence_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/step_sequence_test.cc
              LIBS came_kernels LABELS unit)

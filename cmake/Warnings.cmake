# came_warnings: the warning flags every target of ours builds with.
add_library(came_warnings INTERFACE)
target_compile_options(came_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers>)

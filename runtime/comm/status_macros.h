// CAME_COMM_RETURN_IF_ERROR: returns the Status of `expr` from the enclosing function when it
// is not OK. For the .cc files of runtime/comm.
#pragma once

#include "absl/status/status.h"

#define CAME_COMM_RETURN_IF_ERROR(expr)          \
  do {                                           \
    absl::Status _came_status = (expr);          \
    if (!_came_status.ok()) return _came_status; \
  } while (false)

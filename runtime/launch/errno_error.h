// ErrnoError: the Status for a failed system call, for the launcher's .cc files.
#pragma once

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace came::launch {

// Returns Internal "<what>: <strerror(err)>"; `err` defaults to the current errno.
inline absl::Status ErrnoError(absl::string_view what, int err = errno) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace came::launch

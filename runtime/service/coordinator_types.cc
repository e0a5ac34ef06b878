#include "runtime/service/coordinator_types.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace came::service {

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kForming:
      return "FORMING";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kFinished:
      return "FINISHED";
  }
  return "UNKNOWN";
}

std::string_view BackendName(Backend backend) {
  return backend == Backend::kNccl ? "nccl" : "gloo";
}

absl::StatusOr<Backend> ParseBackend(std::string_view name) {
  if (name == "gloo") return Backend::kGloo;
  if (name == "nccl") return Backend::kNccl;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", std::string(name), "' (expected gloo or nccl)"));
}

}  // namespace came::service

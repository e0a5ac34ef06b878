#include "runtime/comm/backend.h"

#include <string>

#include "absl/strings/str_cat.h"

#if CAME_COMM_WITH_NCCL
#include "runtime/comm/nccl_communicator.h"
#endif

namespace came::comm {

std::string_view BackendName(Backend backend) {
  switch (backend) {
    case Backend::kGloo: return "gloo";
    case Backend::kNccl: return "nccl";
  }
  return "unknown";
}

absl::StatusOr<Backend> ParseBackend(std::string_view name) {
  if (name == "gloo") return Backend::kGloo;
  if (name == "nccl") return Backend::kNccl;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend '", std::string(name), "' (want gloo or nccl)"));
}

bool NcclBuilt() { return CAME_COMM_WITH_NCCL != 0; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(
    Backend backend, Store& store, int rank, int size, const CommunicatorOptions& options) {
  switch (backend) {
    case Backend::kGloo: return GlooCommunicator::Create(store, rank, size, options.gloo);
    case Backend::kNccl:
#if CAME_COMM_WITH_NCCL
      return NcclCommunicator::Create(store, rank, size, options.cuda_device, options.nccl_timeout);
#else
      return absl::FailedPreconditionError(
          "the NCCL backend is not built: configure with -DCAME_WITH_CUDA=ON (needs CUDA and "
          "NCCL)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown backend ", static_cast<int>(backend)));
}

}  // namespace came::comm

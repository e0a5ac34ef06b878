// CreateCommunicator: one entry point for the engine to build a Communicator of either
// backend from a rendezvous Store. Thread-safe (each call builds an independent object).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/store.h"

namespace came::comm {

enum class Backend : uint8_t { kGloo, kNccl };

// Returns "gloo" or "nccl".
std::string_view BackendName(Backend backend);

// Parses "gloo" or "nccl"; InvalidArgument otherwise.
absl::StatusOr<Backend> ParseBackend(std::string_view name);

// Returns whether this build has the NCCL backend (CAME_WITH_CUDA).
bool NcclBuilt();

struct CommunicatorOptions {
  GlooOptions gloo;                                 // kGloo
  int cuda_device = 0;                              // kNccl: the rank's device
  absl::Duration nccl_timeout = absl::Seconds(60);  // kNccl: id exchange and init
};

// Builds rank `rank` of `size` ranks of `backend`, rendezvousing through `store`. The
// errors are those of GlooCommunicator::Create and NcclCommunicator::Create;
// FailedPrecondition for kNccl in a build without CUDA.
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(
    Backend backend, Store& store, int rank, int size, const CommunicatorOptions& options = {});

}  // namespace came::comm

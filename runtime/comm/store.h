// A small key-value store for rendezvous (Note [Rendezvous]): how ranks exchange Gloo
// addresses and the NCCL unique id before any communicator exists.
//
// Note [Rendezvous]
// Every rank calls Set for its own keys and Get (which waits up to a deadline) for the keys
// of the others; Add is an atomic counter for barriers and rank assignment. Implementations:
// InMemoryStore (ranks as threads), FileStore (processes on one host, a shared folder),
// PrefixStore (a namespace over another store) and, with the control plane, a store backed
// by the coordinator over gRPC. All implementations are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace came::comm {

class Store {
 public:
  virtual ~Store() = default;

  // Sets key to value, replacing any earlier value.
  virtual absl::Status Set(std::string_view key, std::string_view value) = 0;

  // Returns the value of key, waiting until it is set or `timeout` passes
  // (DeadlineExceeded).
  virtual absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) = 0;

  // Adds delta to the integer counter at key (0 when unset) and returns the new value.
  virtual absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta) = 0;
};

}  // namespace came::comm

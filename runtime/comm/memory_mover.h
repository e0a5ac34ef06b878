// MemoryMover: the copies between callers' buffers and host staging memory that
// StagedCommunicator (staged_communicator.h) needs, behind a small interface: HostMover for
// host buffers (tests of the staging logic on any machine) and CudaMover (cuda_mover.h) for
// device buffers on one CUDA stream.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace came::comm {

class MemoryMover {
 public:
  virtual ~MemoryMover() = default;

  // Allocates `bytes` of host staging memory (page-locked for a device mover); freed with
  // FreeHost.
  virtual absl::StatusOr<void*> AllocateHost(size_t bytes) = 0;
  virtual void FreeHost(void* host) = 0;
  // Queues a copy of `bytes` from a caller's buffer to host staging memory, ordered after
  // the work already queued where the buffer was produced (a device mover's stream).
  virtual absl::Status ToHost(void* host, const void* buf, size_t bytes) = 0;
  // Queues a copy of `bytes` from host staging memory to a caller's buffer.
  virtual absl::Status FromHost(void* buf, const void* host, size_t bytes) = 0;
  // Waits until every queued copy is done; DeadlineExceeded at `deadline` (the copies may
  // then still be in flight: the staging memory must stay allocated).
  virtual absl::Status Wait(absl::Time deadline) = 0;
};

// Copies host buffers with memcpy; Wait returns at once.
std::unique_ptr<MemoryMover> MakeHostMover();

}  // namespace came::comm

// StagedCommunicator: a Communicator for buffers a host communicator cannot read (device
// memory) over any host Communicator (Gloo), by staging every call through host memory
// (Note [Staged collectives]). It is how ranks that share one GPU run (NCCL refuses two
// ranks on one device) and the fallback where NCCL is missing.
//
// Note [Staged collectives]
// A call copies its input from the caller's buffer into page-locked host staging memory
// (MemoryMover::ToHost, on the mover's stream: make it the stream that produced the buffer,
// the engine's), waits for the copy, runs the host collective on the staging memory, queues
// the copy of the result back and waits for it, so every call returns with the result in
// the caller's buffer and the mover's stream idle: the stream is synchronized at both
// boundaries of every call. One timeout covers the copies and the host collective. The
// staging memory is allocated once, at Create, for the largest call (`capacity_bytes`: the
// engine's reduce-scatter input, W chunks); a larger call is InvalidArgument and harmless.
// A copy that misses its deadline leaves the communicator broken (later calls: Aborted) and
// aborts the host communicator so that the peers fail instead of hanging; the staging memory
// then lives until destruction, after the mover is done with it.
//
// Ownership: owns the host communicator, the mover and the staging memory. Thread-safety:
// one thread at a time calls the collectives; Abort and stats may be called from any thread
// (they forward to the host communicator).
#pragma once

#include <atomic>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/memory_mover.h"

namespace came::comm {

class StagedCommunicator final : public Communicator {
 public:
  // Wraps `host` (any host-memory communicator) with `mover`, staging calls of up to
  // `capacity_bytes`. InvalidArgument for a null communicator or mover; the mover's
  // allocation error otherwise.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(std::unique_ptr<Communicator> host,
                                                              std::unique_ptr<MemoryMover> mover,
                                                              size_t capacity_bytes);
  ~StagedCommunicator() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  size_t capacity_bytes() const { return capacity_; }

  absl::Status AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                         absl::Duration timeout) override;
  absl::Status ReduceScatter(const void* send, void* recv, size_t recv_count, ElemType type,
                             ReduceOp op, absl::Duration timeout) override;
  absl::Status AllGather(const void* send, void* recv, size_t send_count, ElemType type,
                         absl::Duration timeout) override;
  absl::Status Broadcast(void* buf, size_t count, ElemType type, int root,
                         absl::Duration timeout) override;
  absl::Status Barrier(absl::Duration timeout) override;
  void Abort() override;
  // The host communicator's counters (the staged calls send the same bytes).
  CommStats stats() const override { return host_->stats(); }

 private:
  StagedCommunicator(std::unique_ptr<Communicator> host, std::unique_ptr<MemoryMover> mover,
                     void* staging, size_t capacity);
  // Checks what the host communicator cannot see of a call (buffers, size, timeout, type).
  absl::Status Check(const void* a, const void* b, size_t bytes, ElemType type,
                     absl::Duration timeout) const;
  // Waits for the mover; on a missed deadline breaks this communicator and the host's.
  absl::Status WaitCopies(absl::Time deadline);

  std::unique_ptr<Communicator> host_;
  std::unique_ptr<MemoryMover> mover_;
  uint8_t* const staging_;
  const size_t capacity_;
  std::atomic<bool> broken_{false};
};

}  // namespace came::comm

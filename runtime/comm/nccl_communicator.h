// NcclCommunicator: the GPU backend of Communicator (Note [Communicators]) over NCCL, with
// device buffers (Note [NCCL deadlines] in nccl_communicator.cc). Only built when
// CAME_WITH_CUDA is ON; CreateCommunicator (backend.h) reports FailedPrecondition otherwise.
//
// Thread-safety: one thread at a time calls the collectives (it need not be the thread that
// called Create: each call makes the communicator's device current and restores the
// caller's); Abort and stats may be called from any thread. The communicator owns its
// ncclComm_t, one non-blocking CUDA stream and a 4-byte device buffer for Barrier. Buffers
// passed to the collectives belong to the caller and must be device memory of this
// communicator's device, already holding their data: the collectives run on the
// communicator's own stream, which is not ordered after the caller's streams (synchronize
// the stream that produced a buffer before the call). Every call returns only once the
// device is done with the buffers (or the communicator was aborted).
#pragma once

#include <atomic>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/store.h"

struct ncclComm;     // ncclComm_t
struct CUstream_st;  // cudaStream_t

namespace came::comm {

class NcclCommunicator final : public Communicator {
 public:
  // The store key under which rank 0 publishes the NCCL unique id. Namespace it with a
  // PrefixStore when a store serves several communicators.
  static constexpr char kUniqueIdKey[] = "nccl_unique_id";

  // Joins rank `rank` of `size` ranks on CUDA device `device`: rank 0 creates the NCCL
  // unique id and Sets it in `store`, the others Get it; the communicator is initialised
  // non-blocking and polled until `timeout`. InvalidArgument for a bad rank, size or device;
  // FailedPrecondition when CUDA has no device; DeadlineExceeded when the id or the peers
  // do not arrive in time (the half-built communicator is aborted); Internal for other NCCL
  // or CUDA errors. Makes `device` current on the calling thread.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int size,
                                                              int device, absl::Duration timeout);

  // Aborts the NCCL communicator (local, never blocks on peers) and frees the stream.
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }

  absl::Status AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                         absl::Duration timeout) override;
  absl::Status ReduceScatter(const void* send, void* recv, size_t recv_count, ElemType type,
                             ReduceOp op, absl::Duration timeout) override;
  absl::Status AllGather(const void* send, void* recv, size_t send_count, ElemType type,
                         absl::Duration timeout) override;
  absl::Status Broadcast(void* buf, size_t count, ElemType type, int root,
                         absl::Duration timeout) override;
  // An all-reduce of one int32 on an internal device buffer (NCCL has no barrier).
  absl::Status Barrier(absl::Duration timeout) override;
  void Abort() override;
  // bytes_sent counts what the ring algorithm sends per rank (NCCL does not report it):
  // all-reduce 2(W-1)/W, reduce-scatter and all-gather (W-1)/W of the full buffer,
  // broadcast the buffer once (W > 1).
  CommStats stats() const override;

 private:
  NcclCommunicator(int rank, int size, int device, ncclComm* comm, CUstream_st* stream,
                   void* barrier_buf);

  // Runs one collective: checks state, enqueues it with `enqueue` on stream_, then polls
  // until it completes, fails, is aborted or the deadline passes (Note [NCCL deadlines]).
  template <typename Enqueue>
  absl::Status Run(CollectiveKind kind, absl::Duration timeout, int64_t bytes_sent,
                   Enqueue&& enqueue);
  // Waits until the enqueue of a non-blocking call is done. Sets *fail on error.
  absl::Status WaitForEnqueue(absl::Time deadline);
  // Polls stream_ and the communicator until the enqueued work is done.
  absl::Status WaitForStream(absl::Time deadline);
  // Aborts comm_ (once) and records `cause`. Only the thread running collectives or a
  // caller that holds no collective in flight may call it.
  void AbortLocked(const absl::Status& cause) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int rank_;
  const int size_;
  const int device_;
  CUstream_st* const stream_;
  void* const barrier_buf_;  // 4 bytes of device memory

  mutable absl::Mutex mu_;
  ncclComm* comm_ ABSL_GUARDED_BY(mu_);  // null once aborted
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;
  // Set by Abort while a collective is in flight; that collective aborts comm_ itself.
  std::atomic<bool> abort_requested_{false};
  CommStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace came::comm

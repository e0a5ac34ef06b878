// Communicator: collectives over a fixed group of ranks (Note [Communicators]).
//
// Note [Communicators]
// A Communicator moves bytes and knows nothing of optimizers. Every call takes a timeout and
// returns a Status: DeadlineExceeded when the timeout passed, Aborted once the communicator
// was torn down (by Abort, or by an earlier failure that left it unusable), InvalidArgument
// for bad arguments. Calls are collective: every rank must make the same calls in the same
// order with the same counts and types. One thread at a time may call the collectives;
// Abort may be called from any thread. Buffers live in host memory for the Gloo backend and
// in device memory for the NCCL backend.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace came::comm {

enum class ElemType : uint8_t { kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8 };

// Returns the size of one element in bytes.
size_t ElemSize(ElemType t);

enum class ReduceOp : uint8_t { kSum, kMax, kAvg };

enum class CollectiveKind : uint8_t {
  kAllReduce = 0,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kBarrier,
  kCount,
};

// Returns "all_reduce", "reduce_scatter", ... (the metric label).
std::string_view CollectiveName(CollectiveKind kind);

// Counters of one collective kind since the communicator was created.
struct CollectiveCounters {
  int64_t calls = 0;
  int64_t bytes_sent = 0;  // payload bytes this rank put on the wire
  double seconds = 0.0;    // wall time spent inside the calls
};

struct CommStats {
  std::array<CollectiveCounters, static_cast<size_t>(CollectiveKind::kCount)> by_kind;
  const CollectiveCounters& of(CollectiveKind k) const { return by_kind[static_cast<size_t>(k)]; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Reduces `count` elements of buf across ranks, in place, on every rank.
  virtual absl::Status AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                                 absl::Duration timeout) = 0;

  // Reduces size() * recv_count elements of `send` across ranks and leaves block rank() of
  // the result (recv_count elements) in `recv`. op is kSum or kAvg.
  virtual absl::Status ReduceScatter(const void* send, void* recv, size_t recv_count,
                                     ElemType type, ReduceOp op, absl::Duration timeout) = 0;

  // Gathers send_count elements from every rank into recv (size() * send_count elements,
  // rank r's block at r * send_count). `send` may alias block rank() of recv.
  virtual absl::Status AllGather(const void* send, void* recv, size_t send_count,
                                 ElemType type, absl::Duration timeout) = 0;

  // Copies `count` elements of root's buf into every rank's buf.
  virtual absl::Status Broadcast(void* buf, size_t count, ElemType type, int root,
                                 absl::Duration timeout) = 0;

  // Returns once every rank has entered the barrier.
  virtual absl::Status Barrier(absl::Duration timeout) = 0;

  // Tears the communicator down: calls in flight on other ranks fail instead of hanging, and
  // every later call here returns Aborted. Thread-safe; idempotent.
  virtual void Abort() = 0;

  // Returns the byte and time counters per collective kind.
  virtual CommStats stats() const = 0;
};

}  // namespace came::comm

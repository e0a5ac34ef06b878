// GlooCommunicator: the CPU backend of Communicator (Note [Communicators]) over Gloo's TCP
// transport, with host buffers. See Note [Gloo collectives] in gloo_communicator.cc for how
// the collectives are built and how timeouts and aborts reach them.
//
// Thread-safety: one thread at a time calls the collectives (as for every Communicator);
// Abort, stats, rank and size may be called from any thread. The communicator owns its Gloo
// device and context; it does not keep the store after Create returns.
//
// Creating a GlooCommunicator ignores SIGPIPE in the process (Note [SIGPIPE]).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/store.h"

namespace gloo {
class Context;
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo

namespace came::comm {

struct GlooOptions {
  // Address to bind and advertise to the peers (a name or numeric address).
  std::string hostname = "127.0.0.1";
  // Network interface to bind instead of hostname (e.g. "eth0"); empty: use hostname.
  std::string iface;
  // Deadline for the whole rendezvous: every peer's address and every TCP connection.
  absl::Duration connect_timeout = absl::Seconds(30);
  // Namespace of the rendezvous keys in the store; must be unique per communicator built
  // over the same store (a second communicator with the same prefix would read stale
  // addresses).
  std::string key_prefix = "gloo";
};

class GlooCommunicator final : public Communicator {
 public:
  // Connects rank `rank` of `size` ranks through `store` (Note [Rendezvous]); every rank
  // must call it with the same size and key prefix. InvalidArgument for a bad rank, size or
  // address; DeadlineExceeded when the peers do not all show up within
  // options.connect_timeout; Unavailable for other transport errors.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int size,
                                                              GlooOptions options = {});

  ~GlooCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::Status AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                         absl::Duration timeout) override;
  // Ring reduce-scatter: each rank sends (size()-1)/size() of the input. op may be kSum,
  // kAvg or kMax. recv may alias block rank() of send.
  absl::Status ReduceScatter(const void* send, void* recv, size_t recv_count, ElemType type,
                             ReduceOp op, absl::Duration timeout) override;
  absl::Status AllGather(const void* send, void* recv, size_t send_count, ElemType type,
                         absl::Duration timeout) override;
  absl::Status Broadcast(void* buf, size_t count, ElemType type, int root,
                         absl::Duration timeout) override;
  absl::Status Barrier(absl::Duration timeout) override;
  void Abort() override;
  CommStats stats() const override;

 private:
  class Call;
  friend class Call;

  GlooCommunicator(int rank, int size, std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::Context> context);

  // Runs one collective (Note [Gloo collectives]): checks state, converts Gloo exceptions to
  // a Status, marks the communicator broken on failure and updates the counters.
  template <typename Body>
  absl::Status Run(CollectiveKind kind, absl::Duration timeout, int slots, Body&& body);

  // Marks the communicator unusable with `cause` and closes its connections, so that peers
  // blocked on it fail too. Idempotent: the first cause is kept.
  void Break(const absl::Status& cause);

  // Returns Aborted with the reason the communicator broke, or OK if it is usable.
  absl::Status CheckUsable() const;

  const int rank_;
  const int size_;
  // Declared before context_ so that the context (and its pairs) goes first.
  const std::shared_ptr<gloo::transport::Device> device_;
  const std::shared_ptr<gloo::Context> context_;

  // Only touched by the thread that runs collectives.
  uint64_t next_slot_ = 0;
  std::vector<char> scratch_;

  mutable absl::Mutex mu_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);  // OK while usable
  bool connections_closed_ ABSL_GUARDED_BY(mu_) = false;
  // Buffers with a pending send or receive, so that Abort can wake their waiters.
  std::vector<gloo::transport::UnboundBuffer*> pending_ ABSL_GUARDED_BY(mu_);
  CommStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace came::comm

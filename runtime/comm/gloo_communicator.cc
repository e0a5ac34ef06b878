#include "runtime/comm/gloo_communicator.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/context.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "runtime/comm/host_reduce.h"
#include "runtime/comm/prefix_store.h"
#include "runtime/comm/status_macros.h"

// Note [Gloo collectives]
// The collectives are written here over Gloo's unbound buffers (point-to-point send/recv
// tagged with a slot) rather than calling gloo::allreduce & co, for three reasons:
//  - ReduceScatter must cost (W-1)/W of the data per rank, not a full all-reduce, for any
//    W (Gloo's halving-doubling reduce-scatter has no timeout and wants powers of two);
//  - every wait gets the time left to the call's deadline (waitRecv/waitSend(timeout));
//  - Abort must wake a waiting thread: every buffer with a pending operation is registered
//    in pending_, and Abort calls abortWaitRecv/abortWaitSend on them.
// The algorithms: ring reduce-scatter (W-1 steps; at step s rank r sends its partial sum of
// block r-s-1 to r+1 and adds the block r-s-2 it receives from r-1 to its own input; after
// W-1 steps it holds the full sum of block r), ring all-reduce (the same reduce-scatter in
// place over W nearly equal blocks, then a ring all-gather), ring all-gather, broadcast by
// direct sends from the root, and a dissemination barrier (ceil(log2 W) rounds of 1 byte).
// Each call takes `slots` consecutive Gloo slots (one per step) from next_slot_; since all
// ranks make the same calls in the same order, slots match without communication.
//
// Failures: a wait that times out makes Gloo close every connection of the context
// (signalException) and throw; a peer that closes its side makes our waits throw. Either
// way the call returns an error (DeadlineExceeded when the deadline passed, Aborted
// otherwise) and Break() leaves the communicator unusable: later calls return Aborted. Gloo
// exceptions never leave this file.
//
// Note [SIGPIPE]
// Gloo writes to its sockets with writev(2), which raises SIGPIPE when a peer has closed its
// end (a peer that aborted or timed out). The default action would kill the process, so
// Create sets SIGPIPE to SIG_IGN once, unless the program installed its own handler; the
// write then fails with EPIPE and the call returns an error. (gRPC does the same.)

namespace came::comm {
namespace {

void IgnoreSigpipeOnce() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    struct sigaction current {};
    if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
      struct sigaction ignore {};
      ignore.sa_handler = SIG_IGN;
      sigemptyset(&ignore.sa_mask);
      ::sigaction(SIGPIPE, &ignore, nullptr);
    }
  });
}

std::chrono::milliseconds ToChrono(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(0, absl::ToInt64Milliseconds(d)));
}

// Adapts our Store to Gloo's rendezvous store; the only place both are seen. Gloo expects
// exceptions, so failures are thrown as gloo::IoException and the first one is kept as a
// Status for Create to return.
class GlooStoreAdapter final : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(comm::Store& store, absl::Time deadline) : store_(store), deadline_(deadline) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    Check(store_.Set(key, std::string_view(data.data(), data.size())));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> value = store_.Get(key, deadline_ - absl::Now());
    Check(value.status());
    return std::vector<char>(value->begin(), value->end());
  }

  void wait(const std::vector<std::string>& keys) override { WaitUntil(keys, deadline_); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    WaitUntil(keys, std::min(deadline_, absl::Now() + absl::FromChrono(timeout)));
  }

  const absl::Status& error() const { return error_; }

 private:
  void WaitUntil(const std::vector<std::string>& keys, absl::Time deadline) {
    for (const std::string& key : keys) Check(store_.Get(key, deadline - absl::Now()).status());
  }

  void Check(const absl::Status& status) {
    if (status.ok()) return;
    if (error_.ok()) error_ = status;
    throw gloo::IoException(std::string(status.message()));
  }

  comm::Store& store_;
  const absl::Time deadline_;
  absl::Status error_;
};

struct Block {
  size_t offset;  // elements
  size_t count;
};

// Returns block i of `count` elements split into `parts` nearly equal blocks.
Block BlockOf(size_t count, int parts, int i) {
  const size_t base = count / static_cast<size_t>(parts);
  const size_t extra = count % static_cast<size_t>(parts);
  const size_t index = static_cast<size_t>(i);
  return {index * base + std::min(index, extra), base + (index < extra ? 1 : 0)};
}

int Mod(int a, int n) { return ((a % n) + n) % n; }

char* Bytes(void* p) { return static_cast<char*>(p); }
const char* Bytes(const void* p) { return static_cast<const char*>(p); }

absl::Status CheckBuffer(const void* p, size_t count, std::string_view name) {
  if (count > 0 && p == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(name), " is null with count ", count));
  }
  return absl::OkStatus();
}

absl::Status CheckCount(size_t count, ElemType type, int blocks) {
  const size_t elem = ElemSize(type);
  if (elem == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown element type ", static_cast<int>(type)));
  }
  if (count > SIZE_MAX / elem / static_cast<size_t>(blocks)) {
    return absl::InvalidArgumentError(absl::StrCat("count ", count, " overflows"));
  }
  return absl::OkStatus();
}

}  // namespace

// One collective in flight: its deadline, its first slot and the bytes it sent.
class GlooCommunicator::Call {
 public:
  Call(GlooCommunicator& comm, absl::Time deadline, uint64_t slot)
      : comm_(comm), deadline_(deadline), slot_(slot) {}

  absl::Time deadline() const { return deadline_; }
  int64_t bytes_sent() const { return bytes_sent_; }

  // Sends send_bytes at `send` to rank dst while receiving recv_bytes from rank src into
  // `recv`, both on slot `step`; waits for both. A side with zero bytes is skipped (both
  // ends compute the same sizes).
  absl::Status SendRecv(int dst, const void* send, size_t send_bytes, int src, void* recv,
                        size_t recv_bytes, int step) {
    Tracked in;
    Tracked out;
    if (recv_bytes > 0) {
      CAME_COMM_RETURN_IF_ERROR(Track(recv, recv_bytes, in));
      in.buf->recv(src, slot_ + static_cast<uint64_t>(step));
    }
    if (send_bytes > 0) {
      CAME_COMM_RETURN_IF_ERROR(Track(const_cast<void*>(send), send_bytes, out));
      out.buf->send(dst, slot_ + static_cast<uint64_t>(step));
    }
    if (recv_bytes > 0) CAME_COMM_RETURN_IF_ERROR(Wait(*in.buf, /*recv=*/true));
    if (send_bytes > 0) {
      CAME_COMM_RETURN_IF_ERROR(Wait(*out.buf, /*recv=*/false));
      bytes_sent_ += static_cast<int64_t>(send_bytes);
    }
    return absl::OkStatus();
  }

  // Sends `bytes` at `send` to every other rank on slot `step` and waits for all sends.
  absl::Status SendToAll(const void* send, size_t bytes, int step) {
    if (bytes == 0) return absl::OkStatus();
    Tracked out;
    CAME_COMM_RETURN_IF_ERROR(Track(const_cast<void*>(send), bytes, out));
    for (int peer = 0; peer < comm_.size_; ++peer) {
      if (peer != comm_.rank_) out.buf->send(peer, slot_ + static_cast<uint64_t>(step));
    }
    for (int peer = 0; peer < comm_.size_ - 1; ++peer) {
      CAME_COMM_RETURN_IF_ERROR(Wait(*out.buf, /*recv=*/false));
      bytes_sent_ += static_cast<int64_t>(bytes);
    }
    return absl::OkStatus();
  }

 private:
  // An unbound buffer registered in comm_.pending_ for its lifetime.
  struct Tracked {
    GlooCommunicator* comm = nullptr;
    std::unique_ptr<gloo::transport::UnboundBuffer> buf;
    Tracked() = default;
    Tracked(const Tracked&) = delete;
    Tracked& operator=(const Tracked&) = delete;
    ~Tracked() {
      if (comm == nullptr) return;
      absl::MutexLock lock(&comm->mu_);
      auto& pending = comm->pending_;
      pending.erase(std::find(pending.begin(), pending.end(), buf.get()));
    }
  };

  absl::Status Track(void* ptr, size_t bytes, Tracked& tracked) {
    tracked.buf = comm_.context_->createUnboundBuffer(ptr, bytes);
    absl::MutexLock lock(&comm_.mu_);
    if (!comm_.broken_.ok()) {
      return absl::AbortedError(absl::StrCat("communicator aborted: ", comm_.broken_.message()));
    }
    comm_.pending_.push_back(tracked.buf.get());
    tracked.comm = &comm_;
    return absl::OkStatus();
  }

  // Waits for one completion of buf until the deadline; Aborted when Abort woke it. A
  // timeout throws gloo::IoException (caught in Run).
  absl::Status Wait(gloo::transport::UnboundBuffer& buf, bool recv) {
    // Round up so that a timeout is only reported once the deadline really passed.
    const auto left = ToChrono(deadline_ - absl::Now() + absl::Milliseconds(1));
    const bool done = recv ? buf.waitRecv(left) : buf.waitSend(left);
    if (!done) return absl::AbortedError("communicator aborted while waiting");
    return absl::OkStatus();
  }

  GlooCommunicator& comm_;
  const absl::Time deadline_;
  const uint64_t slot_;
  int64_t bytes_sent_ = 0;
};

absl::StatusOr<std::unique_ptr<Communicator>> GlooCommunicator::Create(Store& store, int rank,
                                                                       int size,
                                                                       GlooOptions options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("bad rank ", rank, " of size ", size));
  }
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout must be positive");
  }
  if (options.hostname.empty() && options.iface.empty()) {
    return absl::InvalidArgumentError("GlooOptions needs a hostname or an iface");
  }
  IgnoreSigpipeOnce();
  absl::StatusOr<std::unique_ptr<PrefixStore>> prefixed =
      PrefixStore::Create(options.key_prefix, store);
  if (!prefixed.ok()) return prefixed.status();
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  GlooStoreAdapter adapter(**prefixed, deadline);

  std::shared_ptr<gloo::transport::Device> device;
  try {
    gloo::transport::tcp::attr attr;
    if (options.iface.empty()) {
      attr.hostname = options.hostname;
    } else {
      attr.iface = options.iface;
    }
    device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot bind Gloo device to '",
                     options.iface.empty() ? options.hostname : options.iface, "': ", e.what()));
  }

  auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
  try {
    context->setTimeout(ToChrono(options.connect_timeout));
    context->connectFullMesh(adapter, device);
  } catch (const std::exception& e) {
    if (!adapter.error().ok()) {
      return absl::Status(adapter.error().code(),
                          absl::StrCat("Gloo rendezvous of rank ", rank, " of ", size,
                                       " failed: ", adapter.error().message()));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("Gloo connect of rank ", rank, " of ", size, " timed out: ", e.what()));
    }
    return absl::UnavailableError(
        absl::StrCat("Gloo connect of rank ", rank, " of ", size, " failed: ", e.what()));
  }
  return std::unique_ptr<Communicator>(
      new GlooCommunicator(rank, size, std::move(device), std::move(context)));
}

GlooCommunicator::GlooCommunicator(int rank, int size,
                                   std::shared_ptr<gloo::transport::Device> device,
                                   std::shared_ptr<gloo::Context> context)
    : rank_(rank), size_(size), device_(std::move(device)), context_(std::move(context)) {}

GlooCommunicator::~GlooCommunicator() = default;

absl::Status GlooCommunicator::CheckUsable() const {
  absl::MutexLock lock(&mu_);
  if (broken_.ok()) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat("communicator unusable: ", broken_.ToString()));
}

void GlooCommunicator::Break(const absl::Status& cause) {
  absl::MutexLock lock(&mu_);
  if (broken_.ok()) broken_ = cause;
  for (gloo::transport::UnboundBuffer* buf : pending_) {
    buf->abortWaitRecv();
    buf->abortWaitSend();
  }
  if (connections_closed_) return;
  connections_closed_ = true;
  try {
    context_->closeConnections();
  } catch (const std::exception&) {
    // The connections are being torn down anyway; nothing is left to report to.
  }
}

void GlooCommunicator::Abort() { Break(absl::AbortedError("Abort() was called")); }

CommStats GlooCommunicator::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

template <typename Body>
absl::Status GlooCommunicator::Run(CollectiveKind kind, absl::Duration timeout, int slots,
                                   Body&& body) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(CollectiveName(kind)), ": timeout must be positive"));
  }
  CAME_COMM_RETURN_IF_ERROR(CheckUsable());
  const absl::Time start = absl::Now();
  Call call(*this, start + timeout, next_slot_);
  next_slot_ += static_cast<uint64_t>(std::max(slots, 1));
  absl::Status status;
  try {
    status = body(call);
  } catch (const std::exception& e) {  // gloo::IoException, gloo::EnforceNotMet, ...
    if (!CheckUsable().ok()) {
      status = absl::AbortedError(
          absl::StrCat(std::string(CollectiveName(kind)), ": aborted: ", e.what()));
    } else if (absl::Now() >= call.deadline()) {
      status = absl::DeadlineExceededError(
          absl::StrCat(std::string(CollectiveName(kind)), " on rank ", rank_, " of ", size_,
                       " timed out after ", absl::FormatDuration(timeout), ": ", e.what()));
    } else {
      status = absl::AbortedError(absl::StrCat(std::string(CollectiveName(kind)), " on rank ",
                                               rank_, " failed (peer gone?): ", e.what()));
    }
  }
  if (!status.ok()) Break(status);
  absl::MutexLock lock(&mu_);
  CollectiveCounters& counters = stats_.by_kind[static_cast<size_t>(kind)];
  ++counters.calls;
  counters.bytes_sent += call.bytes_sent();
  counters.seconds += absl::ToDoubleSeconds(absl::Now() - start);
  return status;
}

absl::Status GlooCommunicator::AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                                         absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(buf, count, "AllReduce buf"));
  CAME_COMM_RETURN_IF_ERROR(CheckCount(count, type, 1));
  CAME_COMM_RETURN_IF_ERROR(CheckReduceOp(type, op));
  const int w = size_;
  const int r = rank_;
  const size_t elem = ElemSize(type);
  return Run(CollectiveKind::kAllReduce, timeout, 2 * (w - 1), [&](Call& call) {
    if (count == 0 || w == 1) return absl::OkStatus();
    scratch_.resize(std::max(scratch_.size(), BlockOf(count, w, 0).count * elem));
    char* data = Bytes(buf);
    // Reduce-scatter in place: block r ends up holding the full reduction.
    for (int s = 0; s < w - 1; ++s) {
      const Block out = BlockOf(count, w, Mod(r - s - 1, w));
      const Block in = BlockOf(count, w, Mod(r - s - 2, w));
      CAME_COMM_RETURN_IF_ERROR(call.SendRecv(Mod(r + 1, w), data + out.offset * elem,
                                              out.count * elem, Mod(r - 1, w), scratch_.data(),
                                              in.count * elem, s));
      char* acc = data + in.offset * elem;
      ReduceElements(acc, acc, scratch_.data(), in.count, type, op);
    }
    const Block own = BlockOf(count, w, r);
    if (op == ReduceOp::kAvg) DivideInPlace(data + own.offset * elem, own.count, type, w);
    // All-gather the reduced blocks.
    for (int s = 0; s < w - 1; ++s) {
      const Block out = BlockOf(count, w, Mod(r - s, w));
      const Block in = BlockOf(count, w, Mod(r - s - 1, w));
      CAME_COMM_RETURN_IF_ERROR(call.SendRecv(Mod(r + 1, w), data + out.offset * elem,
                                              out.count * elem, Mod(r - 1, w),
                                              data + in.offset * elem, in.count * elem, w - 1 + s));
    }
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::ReduceScatter(const void* send, void* recv, size_t recv_count,
                                             ElemType type, ReduceOp op, absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(send, recv_count, "ReduceScatter send"));
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(recv, recv_count, "ReduceScatter recv"));
  CAME_COMM_RETURN_IF_ERROR(CheckCount(recv_count, type, size_));
  CAME_COMM_RETURN_IF_ERROR(CheckReduceOp(type, op));
  const int w = size_;
  const int r = rank_;
  const size_t bytes = recv_count * ElemSize(type);
  return Run(CollectiveKind::kReduceScatter, timeout, w - 1, [&](Call& call) {
    if (recv_count == 0) return absl::OkStatus();
    const char* in = Bytes(send);
    if (w == 1) {
      std::memmove(recv, in, bytes);
      return absl::OkStatus();
    }
    // Two scratch blocks: the partial sum being sent and the one being received.
    scratch_.resize(std::max(scratch_.size(), 2 * bytes));
    char* partial[2] = {scratch_.data(), scratch_.data() + bytes};
    for (int s = 0; s < w - 1; ++s) {
      const char* outgoing =
          s == 0 ? in + static_cast<size_t>(Mod(r - 1, w)) * bytes : partial[(s - 1) % 2];
      char* incoming = partial[s % 2];
      CAME_COMM_RETURN_IF_ERROR(
          call.SendRecv(Mod(r + 1, w), outgoing, bytes, Mod(r - 1, w), incoming, bytes, s));
      const char* own = in + static_cast<size_t>(Mod(r - s - 2, w)) * bytes;
      const bool last = s == w - 2;
      // An average divides on the last hop, in the same pass as the last addition.
      ReduceElements(last ? recv : incoming, incoming, own, recv_count, type, op,
                     last && op == ReduceOp::kAvg ? w : 1);
    }
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::AllGather(const void* send, void* recv, size_t send_count,
                                         ElemType type, absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(send, send_count, "AllGather send"));
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(recv, send_count, "AllGather recv"));
  CAME_COMM_RETURN_IF_ERROR(CheckCount(send_count, type, size_));
  const int w = size_;
  const int r = rank_;
  const size_t bytes = send_count * ElemSize(type);
  return Run(CollectiveKind::kAllGather, timeout, w - 1, [&](Call& call) {
    if (send_count == 0) return absl::OkStatus();
    char* out = Bytes(recv);
    char* own = out + static_cast<size_t>(r) * bytes;
    if (own != send) std::memmove(own, send, bytes);
    for (int s = 0; s < w - 1; ++s) {
      CAME_COMM_RETURN_IF_ERROR(call.SendRecv(
          Mod(r + 1, w), out + static_cast<size_t>(Mod(r - s, w)) * bytes, bytes, Mod(r - 1, w),
          out + static_cast<size_t>(Mod(r - s - 1, w)) * bytes, bytes, s));
    }
    return absl::OkStatus();
  });
}

absl::Status GlooCommunicator::Broadcast(void* buf, size_t count, ElemType type, int root,
                                         absl::Duration timeout) {
  CAME_COMM_RETURN_IF_ERROR(CheckBuffer(buf, count, "Broadcast buf"));
  CAME_COMM_RETURN_IF_ERROR(CheckCount(count, type, 1));
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast root ", root, " not in [0, ", size_, ")"));
  }
  const size_t bytes = count * ElemSize(type);
  return Run(CollectiveKind::kBroadcast, timeout, 1, [&](Call& call) {
    if (count == 0 || size_ == 1) return absl::OkStatus();
    if (rank_ == root) return call.SendToAll(buf, bytes, 0);
    return call.SendRecv(root, nullptr, 0, root, buf, bytes, 0);
  });
}

absl::Status GlooCommunicator::Barrier(absl::Duration timeout) {
  int rounds = 0;
  while ((1 << rounds) < size_) ++rounds;
  return Run(CollectiveKind::kBarrier, timeout, rounds, [&](Call& call) {
    char token_out = 1;
    char token_in = 0;
    for (int k = 0; k < rounds; ++k) {
      const int distance = 1 << k;
      CAME_COMM_RETURN_IF_ERROR(call.SendRecv(Mod(rank_ + distance, size_), &token_out, 1,
                                              Mod(rank_ - distance, size_), &token_in, 1, k));
    }
    return absl::OkStatus();
  });
}

}  // namespace came::comm

#include "runtime/comm/staged_communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "runtime/comm/host_reduce.h"

namespace came::comm {
namespace {

class HostMover final : public MemoryMover {
 public:
  absl::StatusOr<void*> AllocateHost(size_t bytes) override {
    void* p = std::malloc(bytes == 0 ? 1 : bytes);
    if (p == nullptr)
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes of staging memory"));
    return p;
  }
  void FreeHost(void* host) override { std::free(host); }
  absl::Status ToHost(void* host, const void* buf, size_t bytes) override {
    std::memcpy(host, buf, bytes);
    return absl::OkStatus();
  }
  absl::Status FromHost(void* buf, const void* host, size_t bytes) override {
    std::memcpy(buf, host, bytes);
    return absl::OkStatus();
  }
  absl::Status Wait(absl::Time) override { return absl::OkStatus(); }
};

// The rest of a call's timeout for the host collective; at least 1 ns, so that a spent
// deadline ends as the host's DeadlineExceeded.
absl::Duration Left(absl::Time deadline) {
  return std::max(deadline - absl::Now(), absl::Nanoseconds(1));
}

bool KnownType(ElemType t) {
  return static_cast<uint8_t>(t) <= static_cast<uint8_t>(ElemType::kUInt8);
}

}  // namespace

std::unique_ptr<MemoryMover> MakeHostMover() { return std::make_unique<HostMover>(); }

absl::StatusOr<std::unique_ptr<Communicator>> StagedCommunicator::Create(
    std::unique_ptr<Communicator> host, std::unique_ptr<MemoryMover> mover, size_t capacity_bytes) {
  if (host == nullptr)
    return absl::InvalidArgumentError("staged communicator: no host communicator");
  if (mover == nullptr) return absl::InvalidArgumentError("staged communicator: no memory mover");
  absl::StatusOr<void*> staging = mover->AllocateHost(capacity_bytes);
  if (!staging.ok()) return staging.status();
  return std::unique_ptr<Communicator>(
      new StagedCommunicator(std::move(host), std::move(mover), *staging, capacity_bytes));
}

StagedCommunicator::StagedCommunicator(std::unique_ptr<Communicator> host,
                                       std::unique_ptr<MemoryMover> mover, void* staging,
                                       size_t capacity)
    : host_(std::move(host)),
      mover_(std::move(mover)),
      staging_(static_cast<uint8_t*>(staging)),
      capacity_(capacity) {}

StagedCommunicator::~StagedCommunicator() {
  host_->Abort();
  // Copies still in flight after a missed deadline must finish before the memory goes.
  (void)mover_->Wait(absl::InfiniteFuture());
  mover_->FreeHost(staging_);
}

void StagedCommunicator::Abort() {
  broken_ = true;
  host_->Abort();
}

absl::Status StagedCommunicator::Check(const void* a, const void* b, size_t bytes, ElemType type,
                                       absl::Duration timeout) const {
  if (broken_) return absl::AbortedError("staged communicator was aborted");
  if (!KnownType(type)) return absl::InvalidArgumentError("unknown element type");
  if (timeout <= absl::ZeroDuration())
    return absl::InvalidArgumentError("timeout must be positive");
  if (bytes != 0 && (a == nullptr || b == nullptr))
    return absl::InvalidArgumentError("null buffer for a non-empty collective");
  if (bytes > capacity_)
    return absl::InvalidArgumentError(
        absl::StrCat("a staged collective of ", bytes, " bytes exceeds the staging memory of ",
                     capacity_, " bytes; create the staged communicator with a larger capacity"));
  return absl::OkStatus();
}

absl::Status StagedCommunicator::WaitCopies(absl::Time deadline) {
  absl::Status s = mover_->Wait(deadline);
  if (!s.ok()) {
    // The peers must not wait for this rank's next collective (Note [Staged collectives]).
    broken_ = true;
    host_->Abort();
  }
  return s;
}

absl::Status StagedCommunicator::AllReduce(void* buf, size_t count, ElemType type, ReduceOp op,
                                           absl::Duration timeout) {
  const size_t bytes = count * (KnownType(type) ? ElemSize(type) : 0);
  if (absl::Status s = Check(buf, buf, bytes, type, timeout); !s.ok()) return s;
  if (absl::Status s = CheckReduceOp(type, op); !s.ok()) return s;
  if (bytes == 0) return host_->AllReduce(nullptr, 0, type, op, timeout);
  const absl::Time deadline = absl::Now() + timeout;
  if (absl::Status s = mover_->ToHost(staging_, buf, bytes); !s.ok()) return s;
  if (absl::Status s = WaitCopies(deadline); !s.ok()) return s;
  if (absl::Status s = host_->AllReduce(staging_, count, type, op, Left(deadline)); !s.ok())
    return s;
  if (absl::Status s = mover_->FromHost(buf, staging_, bytes); !s.ok()) return s;
  return WaitCopies(deadline);
}

absl::Status StagedCommunicator::ReduceScatter(const void* send, void* recv, size_t recv_count,
                                               ElemType type, ReduceOp op, absl::Duration timeout) {
  const size_t block = recv_count * (KnownType(type) ? ElemSize(type) : 0);
  const size_t bytes = block * static_cast<size_t>(size());
  if (absl::Status s = Check(send, recv, bytes, type, timeout); !s.ok()) return s;
  if (bytes == 0) return host_->ReduceScatter(nullptr, nullptr, 0, type, op, timeout);
  const absl::Time deadline = absl::Now() + timeout;
  uint8_t* mine = staging_ + block * static_cast<size_t>(rank());
  if (absl::Status s = mover_->ToHost(staging_, send, bytes); !s.ok()) return s;
  if (absl::Status s = WaitCopies(deadline); !s.ok()) return s;
  if (absl::Status s = host_->ReduceScatter(staging_, mine, recv_count, type, op, Left(deadline));
      !s.ok())
    return s;
  if (absl::Status s = mover_->FromHost(recv, mine, block); !s.ok()) return s;
  return WaitCopies(deadline);
}

absl::Status StagedCommunicator::AllGather(const void* send, void* recv, size_t send_count,
                                           ElemType type, absl::Duration timeout) {
  const size_t block = send_count * (KnownType(type) ? ElemSize(type) : 0);
  const size_t bytes = block * static_cast<size_t>(size());
  if (absl::Status s = Check(send, recv, bytes, type, timeout); !s.ok()) return s;
  if (bytes == 0) return host_->AllGather(nullptr, nullptr, 0, type, timeout);
  const absl::Time deadline = absl::Now() + timeout;
  uint8_t* mine = staging_ + block * static_cast<size_t>(rank());
  if (absl::Status s = mover_->ToHost(mine, send, block); !s.ok()) return s;
  if (absl::Status s = WaitCopies(deadline); !s.ok()) return s;
  if (absl::Status s = host_->AllGather(mine, staging_, send_count, type, Left(deadline)); !s.ok())
    return s;
  if (absl::Status s = mover_->FromHost(recv, staging_, bytes); !s.ok()) return s;
  return WaitCopies(deadline);
}

absl::Status StagedCommunicator::Broadcast(void* buf, size_t count, ElemType type, int root,
                                           absl::Duration timeout) {
  const size_t bytes = count * (KnownType(type) ? ElemSize(type) : 0);
  if (absl::Status s = Check(buf, buf, bytes, type, timeout); !s.ok()) return s;
  if (root < 0 || root >= size())
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast root ", root, " is not a rank of ", size()));
  if (bytes == 0) return host_->Broadcast(nullptr, 0, type, root, timeout);
  const absl::Time deadline = absl::Now() + timeout;
  if (rank() == root) {
    if (absl::Status s = mover_->ToHost(staging_, buf, bytes); !s.ok()) return s;
    if (absl::Status s = WaitCopies(deadline); !s.ok()) return s;
  }
  if (absl::Status s = host_->Broadcast(staging_, count, type, root, Left(deadline)); !s.ok())
    return s;
  if (rank() == root) return absl::OkStatus();
  if (absl::Status s = mover_->FromHost(buf, staging_, bytes); !s.ok()) return s;
  return WaitCopies(deadline);
}

absl::Status StagedCommunicator::Barrier(absl::Duration timeout) {
  if (broken_) return absl::AbortedError("staged communicator was aborted");
  return host_->Barrier(timeout);
}

}  // namespace came::comm

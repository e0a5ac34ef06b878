// DeferredCalls: callbacks collected under a lock and run after it is released.
//
// Note [Callbacks outside the lock]
// The coordinator completes waits (StoreGet, Barrier, SubmitManifest) by calling the
// waiter's callback, and a callback may do anything: finish a gRPC reactor, take another
// lock, even call back into the coordinator. So no callback runs under the coordinator's
// locks. A method declares a DeferredCalls before its MutexLock; members are destroyed in
// reverse order, so the lock is released first and the callbacks run after it.
#pragma once

#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace came::service {

class DeferredCalls {
 public:
  DeferredCalls() = default;
  DeferredCalls(const DeferredCalls&) = delete;
  DeferredCalls& operator=(const DeferredCalls&) = delete;
  ~DeferredCalls() {
    for (auto& call : calls_) call();
  }

  // Queues f to run when this object is destroyed.
  void Add(absl::AnyInvocable<void()> f) { calls_.push_back(std::move(f)); }

 private:
  std::vector<absl::AnyInvocable<void()>> calls_;
};

}  // namespace came::service

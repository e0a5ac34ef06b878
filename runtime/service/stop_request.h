// StopRequest: the one decision to stop a daemon, requested from any thread (the signal
// thread on SIGINT/SIGTERM, the heartbeat thread when the job fails). The first request wins
// and keeps its reason; later ones change nothing. (absl::Notification must be notified at
// most once, and two threads that both see !HasBeenNotified() before either notifies would
// notify twice: that race crashed came-rankd when a signal and a job failure came together.)
// Thread-safe.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace came::service {

class StopRequest {
 public:
  // Requests the stop with `reason` (OK: an orderly stop). Returns whether this was the first
  // request.
  bool Request(absl::Status reason) {
    absl::MutexLock lock(&mu_);
    if (requested_) return false;
    requested_ = true;
    reason_ = std::move(reason);
    return true;
  }

  // Blocks until the first request (the daemon's main thread: it waits for the whole life of
  // the process, so there is no deadline); returns its reason.
  absl::Status Wait() const {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&requested_));
    return reason_;
  }

 private:
  mutable absl::Mutex mu_;
  bool requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status reason_ ABSL_GUARDED_BY(mu_);
};

}  // namespace came::service

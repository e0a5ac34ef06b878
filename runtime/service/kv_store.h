// KvStore: the coordinator's rendezvous key-value store (Note [Rendezvous] in
// runtime/comm/store.h), with waits that never block a thread.
//
// A Get of a key that is not set yet registers a waiter: its callback runs when the key is
// set, when its deadline passes (noticed by Poll, on the store's clock), or when the store
// is aborted. Callbacks run outside the store's lock (Note [Callbacks outside the lock]),
// on the thread that completes them. All methods are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/service/clock.h"
#include "runtime/service/deferred_calls.h"
#include "runtime/service/limits.h"

namespace came::service {

using ValueCallback = absl::AnyInvocable<void(absl::StatusOr<std::string>)>;

struct KvStoreLimits {
  int64_t max_keys = kMaxStoreKeys;
  int64_t max_bytes = kMaxStoreBytes;      // of every key and value held
  int64_t max_waiters = kMaxStoreWaiters;  // Gets waiting at once
};

class KvStore {
 public:
  // The clock is not owned and must outlive the store.
  explicit KvStore(const Clock* clock, KvStoreLimits limits = {}) : clock_(clock), limits_(limits) {}
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  // Sets key to value and completes the waiters of key. InvalidArgument for an empty or
  // oversize key or value; ResourceExhausted when the store would hold more keys or bytes
  // than its limits.
  absl::Status Set(std::string_view key, std::string_view value);

  // Calls done with the value of key: at once when it is set, else when it is set, or with
  // DeadlineExceeded once `deadline` has passed (see Poll), or with the abort status;
  // ResourceExhausted at once when max_waiters Gets are already waiting.
  void Get(std::string_view key, absl::Time deadline, ValueCallback done);

  // Adds delta to the decimal integer at key (0 when unset); returns the new value.
  // InvalidArgument when the value is not an integer, OutOfRange on overflow.
  absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta);

  // Completes, with DeadlineExceeded, every waiter whose deadline has passed.
  void Poll();

  // Completes every waiter with `status` (not OK); later Gets of unset keys fail with it.
  void Abort(absl::Status status);

 private:
  struct Waiter {
    absl::Time deadline;
    ValueCallback done;
  };

  // Stores value at key and queues the callbacks of its waiters.
  void SetLocked(std::string_view key, std::string value, DeferredCalls& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks that storing `value_bytes` at key stays within the limits.
  absl::Status CheckCapacityLocked(std::string_view key, size_t value_bytes) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Clock* const clock_;
  const KvStoreLimits limits_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::string, std::less<>> values_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<Waiter>, std::less<>> waiters_ ABSL_GUARDED_BY(mu_);
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;    // of every key and value in values_
  int64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;  // Waiters in waiters_
};

}  // namespace came::service

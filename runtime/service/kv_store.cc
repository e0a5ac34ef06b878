#include "runtime/service/kv_store.h"

#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/service/deferred_calls.h"
#include "runtime/service/limits.h"
#include "runtime/service/validation.h"

namespace came::service {
namespace {

absl::Status CheckKey(std::string_view key) { return CheckName("store key", key, kMaxKeyBytes); }

}  // namespace

absl::Status KvStore::CheckCapacityLocked(std::string_view key) const {
  if (static_cast<int64_t>(values_.size()) >= kMaxStoreKeys && !values_.contains(std::string(key))) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("the store holds %d keys, its limit", kMaxStoreKeys));
  }
  return absl::OkStatus();
}

void KvStore::SetLocked(std::string_view key, std::string value, DeferredCalls& deferred) {
  auto it = waiters_.find(key);
  if (it != waiters_.end()) {
    for (Waiter& w : it->second) {
      deferred.Add([done = std::move(w.done), value]() mutable { done(value); });
    }
    waiters_.erase(it);
  }
  values_.insert_or_assign(std::string(key), std::move(value));
}

absl::Status KvStore::Set(std::string_view key, std::string_view value) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  if (absl::Status s = CheckLength("store value", value, kMaxValueBytes); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckCapacityLocked(key); !s.ok()) return s;
  SetLocked(key, std::string(value), deferred);
  return absl::OkStatus();
}

void KvStore::Get(std::string_view key, absl::Time deadline, ValueCallback done) {
  if (absl::Status s = CheckKey(key); !s.ok()) return done(s);
  absl::StatusOr<std::string> result;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = values_.find(key); it != values_.end()) {
      result = it->second;
    } else if (!aborted_.ok()) {
      result = aborted_;
    } else if (deadline <= clock_->Now()) {
      result = absl::DeadlineExceededError(absl::StrCat("store key '", std::string(key), "' is not set"));
    } else {
      waiters_[std::string(key)].push_back(Waiter{deadline, std::move(done)});
      return;
    }
  }
  done(std::move(result));
}

absl::StatusOr<int64_t> KvStore::Add(std::string_view key, int64_t delta) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  int64_t value = 0;
  if (auto it = values_.find(key); it != values_.end()) {
    if (!absl::SimpleAtoi(it->second, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("store key '", std::string(key), "' does not hold a decimal integer"));
    }
  } else if (absl::Status s = CheckCapacityLocked(key); !s.ok()) {
    return s;
  }
  if ((delta > 0 && value > std::numeric_limits<int64_t>::max() - delta) ||
      (delta < 0 && value < std::numeric_limits<int64_t>::min() - delta)) {
    return absl::OutOfRangeError(absl::StrCat("store key '", std::string(key), "' would overflow"));
  }
  value += delta;
  SetLocked(key, absl::StrCat(value), deferred);
  return value;
}

void KvStore::Poll() {
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    std::vector<Waiter>& list = it->second;
    for (size_t i = 0; i < list.size();) {
      if (list[i].deadline > now) {
        ++i;
        continue;
      }
      deferred.Add([done = std::move(list[i].done), key = it->first]() mutable {
        done(absl::DeadlineExceededError(absl::StrCat("store key '", std::string(key), "' is not set")));
      });
      list[i] = std::move(list.back());
      list.pop_back();
    }
    if (list.empty()) {
      waiters_.erase(it++);
    } else {
      ++it;
    }
  }
}

void KvStore::Abort(absl::Status status) {
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  if (aborted_.ok()) aborted_ = status;
  for (auto& [key, list] : waiters_) {
    for (Waiter& w : list) {
      deferred.Add([done = std::move(w.done), status = aborted_]() mutable { done(status); });
    }
  }
  waiters_.clear();
}

}  // namespace came::service

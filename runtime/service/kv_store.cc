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

absl::Status KvStore::CheckCapacityLocked(std::string_view key, size_t value_bytes) const {
  auto it = values_.find(key);
  if (it == values_.end() && static_cast<int64_t>(values_.size()) >= limits_.max_keys) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("the store holds %d keys, its limit", limits_.max_keys));
  }
  const int64_t now = bytes_ - (it == values_.end() ? 0 : static_cast<int64_t>(key.size() + it->second.size()));
  if (now + static_cast<int64_t>(key.size() + value_bytes) > limits_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the store holds %d bytes; %d more would pass its limit of %d", bytes_,
        key.size() + value_bytes, limits_.max_bytes));
  }
  return absl::OkStatus();
}

void KvStore::SetLocked(std::string_view key, std::string value, DeferredCalls& deferred) {
  auto it = waiters_.find(key);
  if (it != waiters_.end()) {
    for (Waiter& w : it->second) {
      deferred.Add([done = std::move(w.done), value]() mutable { done(value); });
    }
    waiting_ -= static_cast<int64_t>(it->second.size());
    waiters_.erase(it);
  }
  if (auto old = values_.find(key); old != values_.end())
    bytes_ -= static_cast<int64_t>(key.size() + old->second.size());
  bytes_ += static_cast<int64_t>(key.size() + value.size());
  values_.insert_or_assign(std::string(key), std::move(value));
}

absl::Status KvStore::Set(std::string_view key, std::string_view value) {
  if (absl::Status s = CheckKey(key); !s.ok()) return s;
  if (absl::Status s = CheckLength("store value", value, kMaxValueBytes); !s.ok()) return s;
  DeferredCalls deferred;
  absl::MutexLock lock(&mu_);
  if (absl::Status s = CheckCapacityLocked(key, value.size()); !s.ok()) return s;
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
    } else if (waiting_ >= limits_.max_waiters) {
      result = absl::ResourceExhaustedError(absl::StrFormat(
          "%d store reads are waiting, the limit: retry later", limits_.max_waiters));
    } else {
      waiters_[std::string(key)].push_back(Waiter{deadline, std::move(done)});
      ++waiting_;
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
  } else if (absl::Status s = CheckCapacityLocked(key, 20); !s.ok()) {  // 20: any int64
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
      --waiting_;
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
  waiting_ = 0;
}

}  // namespace came::service

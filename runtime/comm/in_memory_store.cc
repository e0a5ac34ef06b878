#include "runtime/comm/in_memory_store.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace came::comm {

std::unique_ptr<InMemoryStore> InMemoryStore::Create() {
  return std::unique_ptr<InMemoryStore>(new InMemoryStore());
}

absl::Status InMemoryStore::Set(std::string_view key, std::string_view value) {
  absl::MutexLock lock(&mu_);
  values_[std::string(key)] = std::string(value);
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryStore::Get(std::string_view key, absl::Duration timeout) {
  const std::string k(key);
  absl::MutexLock lock(&mu_);
  auto is_set = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return values_.contains(k); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&is_set), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "store key '", std::string(key), "' not set within ", absl::FormatDuration(timeout)));
  }
  return values_.at(k);
}

absl::StatusOr<int64_t> InMemoryStore::Add(std::string_view key, int64_t delta) {
  absl::MutexLock lock(&mu_);
  std::string& slot = values_[std::string(key)];
  int64_t value = 0;
  if (!slot.empty() && !absl::SimpleAtoi(slot, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("store key '", std::string(key), "' holds a non-integer value"));
  }
  value += delta;
  slot = absl::StrCat(value);
  return value;
}

}  // namespace came::comm

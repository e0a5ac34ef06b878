#include "runtime/service/coordinator_store.h"

namespace came::service {

absl::Status CoordinatorStore::Set(std::string_view key, std::string_view value) {
  return client_->StoreSet(key, value);
}

absl::StatusOr<std::string> CoordinatorStore::Get(std::string_view key,
                                                  absl::Duration timeout) {
  return client_->StoreGet(key, timeout);
}

absl::StatusOr<int64_t> CoordinatorStore::Add(std::string_view key, int64_t delta) {
  return client_->StoreAdd(key, delta);
}

}  // namespace came::service

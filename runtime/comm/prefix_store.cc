#include "runtime/comm/prefix_store.h"

#include "absl/strings/str_cat.h"

namespace came::comm {

absl::StatusOr<std::unique_ptr<PrefixStore>> PrefixStore::Create(std::string_view prefix,
                                                                 Store& base) {
  if (prefix.empty()) return absl::InvalidArgumentError("PrefixStore needs a non-empty prefix");
  return std::unique_ptr<PrefixStore>(new PrefixStore(std::string(prefix), base));
}

std::string PrefixStore::Key(std::string_view key) const {
  return absl::StrCat(prefix_, "/", std::string(key));
}

absl::Status PrefixStore::Set(std::string_view key, std::string_view value) {
  return base_.Set(Key(key), value);
}

absl::StatusOr<std::string> PrefixStore::Get(std::string_view key, absl::Duration timeout) {
  return base_.Get(Key(key), timeout);
}

absl::StatusOr<int64_t> PrefixStore::Add(std::string_view key, int64_t delta) {
  return base_.Add(Key(key), delta);
}

}  // namespace came::comm

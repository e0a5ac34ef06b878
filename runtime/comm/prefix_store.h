// PrefixStore: a namespace over another Store. Every key becomes "<prefix>/<key>" in the
// backing store, so several communicators (or jobs) can rendezvous over one store without
// colliding. Thread-safe as far as the backing store is (all of ours are). Does not own the
// backing store, which must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "runtime/comm/store.h"

namespace came::comm {

class PrefixStore final : public Store {
 public:
  // Returns a store that prefixes keys with `prefix` + "/". InvalidArgument for an empty
  // prefix (it would not namespace anything).
  static absl::StatusOr<std::unique_ptr<PrefixStore>> Create(std::string_view prefix, Store& base);

  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;
  absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta) override;

  const std::string& prefix() const { return prefix_; }

 private:
  PrefixStore(std::string prefix, Store& base) : prefix_(std::move(prefix)), base_(base) {}
  std::string Key(std::string_view key) const;

  const std::string prefix_;
  Store& base_;
};

}  // namespace came::comm

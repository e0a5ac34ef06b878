// InMemoryStore: a Store held in this process's memory, for ranks that run as threads (tests,
// single-process jobs). Thread-safe; Get waits on a condition variable until its deadline.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "runtime/comm/store.h"

namespace came::comm {

class InMemoryStore final : public Store {
 public:
  // Returns an empty store. Never fails; the factory keeps the shape of the other stores.
  static std::unique_ptr<InMemoryStore> Create();

  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;
  absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta) override;

 private:
  InMemoryStore() = default;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace came::comm

// CoordinatorStore: the rendezvous Store (runtime/comm/store.h, Note [Rendezvous]) backed by
// the coordinator's Store RPCs, for ranks on different hosts. Get's wait becomes a bounded
// wait on the server (StoreGet with wait_ms); the call's deadline is the timeout plus
// CoordinatorClient::kWaitSlack. Thread-safe (so is the client).
#pragma once

#include <memory>

#include "runtime/comm/store.h"
#include "runtime/service/coordinator_client.h"

namespace came::service {

class CoordinatorStore final : public comm::Store {
 public:
  explicit CoordinatorStore(std::shared_ptr<CoordinatorClient> client)
      : client_(std::move(client)) {}

  absl::Status Set(std::string_view key, std::string_view value) override;
  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override;
  absl::StatusOr<int64_t> Add(std::string_view key, int64_t delta) override;

 private:
  std::shared_ptr<CoordinatorClient> client_;
};

}  // namespace came::service

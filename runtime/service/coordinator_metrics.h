// CoordinatorMetrics: the coordinator's Prometheus metrics (prefix came_), in a registry an
// Exposer serves on /metrics.
//   came_ranks_alive                    joined, unfinished ranks within their lease
//   came_world_size                     ranks the job expects
//   came_heartbeat_age_seconds{rank}    since the rank's last Join or Heartbeat
//   came_job_state{state}               1 for the job's state, 0 for the others
//   came_checkpoint_commits_total       checkpoints committed
//   came_rpc_total{method,code}         RPCs answered, by method and status code
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "runtime/service/coordinator_types.h"

namespace came::service {

class CoordinatorMetrics {
 public:
  CoordinatorMetrics();

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Counts one answered RPC.
  void CountRpc(std::string_view method, absl::StatusCode code);

  // Sets the gauges (and the commit counter) from a snapshot of the job.
  void Update(const JobStatus& status, absl::Duration lease);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& ranks_alive_;
  prometheus::Family<prometheus::Gauge>& world_size_;
  prometheus::Family<prometheus::Gauge>& heartbeat_age_;
  prometheus::Family<prometheus::Gauge>& job_state_;
  prometheus::Family<prometheus::Counter>& checkpoint_commits_;
  prometheus::Family<prometheus::Counter>& rpc_total_;
  absl::Mutex mu_;
  int64_t commits_seen_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace came::service

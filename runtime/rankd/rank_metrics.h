// RankMetrics: one rank's Prometheus metrics (prefix came_, label rank), served by rankd on
// --metrics-port:
//   came_steps_total{rank}                          optimizer steps run
//   came_skipped_steps_total{rank}                  steps skipped for a non-finite gradient
//   came_step_phase_seconds_total{rank,phase}       time per phase (reduce_scatter,
//                                                   stats_all_reduce, kernels, all_gather)
//   came_step_duration_seconds{rank}                histogram of whole steps
//   came_collective_bytes_total{rank,collective}    payload bytes sent
//   came_grad_norm{rank}, came_clip_scale{rank}     of the last step
//   came_optimizer_state_bytes{rank,kind}           master, momentum, second_moment, factored
//   came_checkpoint_duration_seconds{rank}          histogram of checkpoints, begin to commit
//   came_checkpoint_bytes_total{rank}               shard bytes this rank wrote
// Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/service/clock.h"
#include "runtime/sharded_came.h"

namespace came::rankd {

class RankMetrics {
 public:
  explicit RankMetrics(int rank);
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Records one step (skipped or not) and the state it left.
  void Observe(const EngineStepStats& stats, const StateBytes& bytes);

  // Returns `hooks` with every checkpoint measured: the time from begin to a successful
  // commit (the shard written, every rank's shard in, the manifest committed) and the shard
  // bytes reported. Hooks that are not set stay unset. `clock` and this object must outlive
  // the returned hooks.
  CheckpointHooks Instrument(CheckpointHooks hooks,
                             const service::Clock* clock = service::RealClock::Get());

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* steps_;
  prometheus::Counter* skipped_;
  prometheus::Counter* rs_seconds_;
  prometheus::Counter* stats_seconds_;
  prometheus::Counter* kernel_seconds_;
  prometheus::Counter* ag_seconds_;
  prometheus::Histogram* step_seconds_;
  prometheus::Counter* rs_bytes_;
  prometheus::Counter* stats_bytes_;
  prometheus::Counter* ag_bytes_;
  prometheus::Gauge* grad_norm_;
  prometheus::Gauge* clip_scale_;
  prometheus::Gauge* master_bytes_;
  prometheus::Gauge* momentum_bytes_;
  prometheus::Gauge* second_moment_bytes_;
  prometheus::Gauge* factored_bytes_;
  prometheus::Histogram* checkpoint_seconds_;
  prometheus::Counter* checkpoint_bytes_;
  absl::Mutex mu_;
  std::map<std::string, absl::Time> checkpoint_begun_ ABSL_GUARDED_BY(mu_);  // by id
};

}  // namespace came::rankd

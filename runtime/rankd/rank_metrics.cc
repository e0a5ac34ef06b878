#include "runtime/rankd/rank_metrics.h"

#include <string>
#include <utility>

namespace came::rankd {

RankMetrics::RankMetrics(int rank) : registry_(std::make_shared<prometheus::Registry>()) {
  const std::string r = std::to_string(rank);
  steps_ = &prometheus::BuildCounter().Name("came_steps_total").Help("Optimizer steps run")
                .Register(*registry_).Add({{"rank", r}});
  skipped_ = &prometheus::BuildCounter().Name("came_skipped_steps_total")
                  .Help("Steps skipped because a gradient was not finite")
                  .Register(*registry_).Add({{"rank", r}});
  auto& phase = prometheus::BuildCounter().Name("came_step_phase_seconds_total")
                    .Help("Time spent in each phase of the optimizer step").Register(*registry_);
  rs_seconds_ = &phase.Add({{"rank", r}, {"phase", "reduce_scatter"}});
  stats_seconds_ = &phase.Add({{"rank", r}, {"phase", "stats_all_reduce"}});
  kernel_seconds_ = &phase.Add({{"rank", r}, {"phase", "kernels"}});
  ag_seconds_ = &phase.Add({{"rank", r}, {"phase", "all_gather"}});
  step_seconds_ = &prometheus::BuildHistogram().Name("came_step_duration_seconds")
                       .Help("Duration of whole optimizer steps inside rankd")
                       .Register(*registry_)
                       .Add({{"rank", r}}, prometheus::Histogram::BucketBoundaries{
                                               0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30});
  auto& bytes = prometheus::BuildCounter().Name("came_collective_bytes_total")
                    .Help("Payload bytes this rank sent, by collective").Register(*registry_);
  rs_bytes_ = &bytes.Add({{"rank", r}, {"collective", "reduce_scatter"}});
  stats_bytes_ = &bytes.Add({{"rank", r}, {"collective", "all_reduce"}});
  ag_bytes_ = &bytes.Add({{"rank", r}, {"collective", "all_gather"}});
  grad_norm_ = &prometheus::BuildGauge().Name("came_grad_norm")
                    .Help("Global L2 norm of the averaged gradient of the last step")
                    .Register(*registry_).Add({{"rank", r}});
  clip_scale_ = &prometheus::BuildGauge().Name("came_clip_scale")
                     .Help("Smallest update clip scale of the last step (1: no clipping)")
                     .Register(*registry_).Add({{"rank", r}});
  auto& state = prometheus::BuildGauge().Name("came_optimizer_state_bytes")
                    .Help("Optimizer state held by this rank, by kind").Register(*registry_);
  master_bytes_ = &state.Add({{"rank", r}, {"kind", "master"}});
  momentum_bytes_ = &state.Add({{"rank", r}, {"kind", "momentum"}});
  second_moment_bytes_ = &state.Add({{"rank", r}, {"kind", "second_moment"}});
  factored_bytes_ = &state.Add({{"rank", r}, {"kind", "factored"}});
  checkpoint_seconds_ = &prometheus::BuildHistogram().Name("came_checkpoint_duration_seconds")
                             .Help("Checkpoints from begin to commit, as this rank saw them")
                             .Register(*registry_)
                             .Add({{"rank", r}}, prometheus::Histogram::BucketBoundaries{
                                                     0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000});
  checkpoint_bytes_ = &prometheus::BuildCounter().Name("came_checkpoint_bytes_total")
                           .Help("Checkpoint shard bytes this rank wrote")
                           .Register(*registry_).Add({{"rank", r}});
}

CheckpointHooks RankMetrics::Instrument(CheckpointHooks hooks, const service::Clock* clock) {
  if (hooks.begin) {
    hooks.begin = [this, clock, begin = std::move(hooks.begin)](int64_t step) mutable
        -> absl::StatusOr<std::pair<std::string, std::string>> {
      const absl::Time start = clock->Now();
      auto info = begin(step);
      if (info.ok()) {
        absl::MutexLock lock(&mu_);
        checkpoint_begun_[info->first] = start;
      }
      return info;
    };
  }
  if (hooks.report) {
    hooks.report = [this, report = std::move(hooks.report)](
                       const std::string& id, const std::string& file, int64_t bytes,
                       const std::string& sha256) mutable {
      absl::Status s = report(id, file, bytes, sha256);
      if (s.ok()) checkpoint_bytes_->Increment(static_cast<double>(bytes));
      return s;
    };
  }
  if (hooks.commit) {
    hooks.commit = [this, clock, commit = std::move(hooks.commit)](
                       const std::string& id) mutable -> absl::StatusOr<std::string> {
      auto manifest = commit(id);
      absl::MutexLock lock(&mu_);
      auto it = checkpoint_begun_.find(id);
      if (it == checkpoint_begun_.end()) return manifest;
      if (manifest.ok()) checkpoint_seconds_->Observe(absl::ToDoubleSeconds(clock->Now() - it->second));
      checkpoint_begun_.erase(it);
      return manifest;
    };
  }
  return hooks;
}

void RankMetrics::Observe(const EngineStepStats& s, const StateBytes& b) {
  steps_->Increment();
  if (s.skipped) skipped_->Increment();
  rs_seconds_->Increment(s.seconds.reduce_scatter);
  stats_seconds_->Increment(s.seconds.stats_all_reduce);
  kernel_seconds_->Increment(s.seconds.kernels);
  ag_seconds_->Increment(s.seconds.all_gather);
  step_seconds_->Observe(s.seconds.total);
  rs_bytes_->Increment(static_cast<double>(s.bytes_reduce_scatter));
  stats_bytes_->Increment(static_cast<double>(s.bytes_stats));
  ag_bytes_->Increment(static_cast<double>(s.bytes_all_gather));
  grad_norm_->Set(s.grad_norm);
  clip_scale_->Set(s.min_clip_scale);
  master_bytes_->Set(static_cast<double>(b.master));
  momentum_bytes_->Set(static_cast<double>(b.momentum));
  second_moment_bytes_->Set(static_cast<double>(b.second_moment));
  factored_bytes_->Set(static_cast<double>(b.factored));
}

}  // namespace came::rankd

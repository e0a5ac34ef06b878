// LocalCluster: W ranks of ShardedCame as threads in one process, each with its own flat
// buffers (as separate processes would have), connected by Gloo over 127.0.0.1 through an
// in-memory store. For came-replay --ranks and for tests; real jobs run one rank per process.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/store.h"
#include "runtime/shard_plan.h"
#include "runtime/sharded_came.h"

namespace came {

class LocalCluster {
 public:
  // Plans `tensors` over `world_size` ranks and builds every rank's engine; `initial[t]` holds
  // tensor t's initial values (rounded to the plan's dtype).
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Create(
      std::vector<TensorSpec> tensors, int world_size, int64_t alignment,
      const std::vector<std::vector<double>>& initial, EngineOptions options);
  ~LocalCluster();

  // Fills rank `rank`'s gradient of tensor `t` (numel values, rounded to the plan's dtype).
  using GradFn = std::function<void(int rank, int t, std::span<float> out)>;

  // Writes every rank's gradients, then runs one step on all ranks concurrently. Returns the
  // first failure, or rank 0's statistics.
  absl::StatusOr<EngineStepStats> Step(const GradFn& grads, const StepInputs& inputs);

  int world_size() const { return static_cast<int>(ranks_.size()); }
  const ShardPlan& plan() const { return plan_; }
  ShardedCame& engine(int rank);

  // Returns tensor t's parameters as rank `rank` sees them in its flat buffer.
  std::vector<double> Param(int t, int rank = 0) const;
  // Returns tensor t's optimizer state assembled from the ranks that hold it, by the golden
  // format's names (exp_avg, exp_avg_sq or exp_avg_{sq,res}_{row,col}). Factored statistics
  // come from the first sharer; FailedPrecondition if the sharers' copies differ
  // (Note [Split tensors] says they must not).
  absl::StatusOr<std::map<std::string, std::vector<double>>> State(int t) const;

 private:
  struct Rank;
  LocalCluster() = default;

  ShardPlan plan_;
  std::unique_ptr<comm::Store> store_;
  std::vector<std::unique_ptr<Rank>> ranks_;
};

}  // namespace came

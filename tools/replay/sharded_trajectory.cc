#include "tools/replay/sharded_trajectory.h"

#include "runtime/local_cluster.h"

namespace came {

absl::StatusOr<Trajectory> RunSharded(const GoldenCase& c, int world_size, int threads_per_rank) {
  EngineOptions options;
  options.groups = {c.hyper};
  options.num_threads = threads_per_rank;
  options.collective_timeout = absl::Seconds(120);
  auto cluster = LocalCluster::Create({TensorSpec{"param", c.shape, DType::kFloat32, 0}},
                                      world_size, /*alignment=*/1, {c.param0}, options);
  if (!cluster.ok()) return cluster.status();
  Trajectory out;
  for (int k = 0; k < c.steps; ++k) {
    StepInputs in;
    in.step = k + 1;
    auto stats = (*cluster)->Step(
        [&](int, int, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(c.grads[k][i]);
        },
        in);
    if (!stats.ok()) return stats.status();
    out.skipped.push_back(stats->skipped);
    out.params.push_back((*cluster)->Param(0));
  }
  auto state = (*cluster)->State(0);
  if (!state.ok()) return state.status();
  out.state = *std::move(state);
  return out;
}

}  // namespace came

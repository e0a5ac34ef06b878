#include "runtime/local_cluster.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"

namespace came {

struct LocalCluster::Rank {
  std::vector<uint8_t> params, grads;
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<ShardedCame> engine;
  std::vector<float> scratch;
};

LocalCluster::~LocalCluster() = default;

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Create(
    std::vector<TensorSpec> tensors, int world_size, int64_t alignment,
    const std::vector<std::vector<double>>& initial, EngineOptions options) {
  auto plan = ShardPlan::Make(std::move(tensors), world_size, alignment);
  if (!plan.ok()) return plan.status();
  if (initial.size() != plan->tensors.size())
    return absl::InvalidArgumentError("one initial value vector per tensor is required");
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->plan_ = *std::move(plan);
  c->store_ = comm::InMemoryStore::Create();
  const size_t elem = DTypeSize(c->plan_.dtype);
  const int64_t padded = c->plan_.padded_size;
  for (int r = 0; r < world_size; ++r) {
    auto rank = std::make_unique<Rank>();
    rank->params.assign(padded * elem, 0);
    rank->grads.assign(padded * elem, 0);
    for (size_t t = 0; t < c->plan_.tensors.size(); ++t) {
      const auto& tensor = c->plan_.tensors[t];
      if (static_cast<int64_t>(initial[t].size()) != tensor.geom.numel)
        return absl::InvalidArgumentError(
            absl::StrCat("initial values of '", tensor.spec.name, "': expected ",
                         tensor.geom.numel, ", got ", initial[t].size()));
      for (int64_t i = 0; i < tensor.geom.numel; ++i)
        StoreFromFloat(rank->params.data(), c->plan_.dtype, tensor.offset + i,
                       static_cast<float>(initial[t][i]));
    }
    c->ranks_.push_back(std::move(rank));
  }
  // Connect all ranks at once: each Create waits for its peers.
  std::vector<absl::StatusOr<std::unique_ptr<comm::Communicator>>> comms(world_size);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < world_size; ++r)
      threads.emplace_back([&, r] {
        comms[r] = comm::GlooCommunicator::Create(*c->store_, r, world_size);
      });
    for (auto& t : threads) t.join();
  }
  for (int r = 0; r < world_size; ++r) {
    if (!comms[r].ok()) return comms[r].status();
    c->ranks_[r]->comm = *std::move(comms[r]);
    auto engine = ShardedCame::Create(c->plan_, c->ranks_[r]->comm.get(),
                                      c->ranks_[r]->params.data(), c->ranks_[r]->grads.data(),
                                      options);
    if (!engine.ok()) return engine.status();
    c->ranks_[r]->engine = *std::move(engine);
  }
  return c;
}

ShardedCame& LocalCluster::engine(int rank) { return *ranks_[rank]->engine; }

absl::StatusOr<EngineStepStats> LocalCluster::Step(const GradFn& grads, const StepInputs& inputs) {
  const int w = world_size();
  for (int r = 0; r < w; ++r) {
    Rank& rank = *ranks_[r];
    for (size_t t = 0; t < plan_.tensors.size(); ++t) {
      const auto& tensor = plan_.tensors[t];
      rank.scratch.assign(tensor.geom.numel, 0.0f);
      grads(r, static_cast<int>(t), rank.scratch);
      for (int64_t i = 0; i < tensor.geom.numel; ++i)
        StoreFromFloat(rank.grads.data(), plan_.dtype, tensor.offset + i, rank.scratch[i]);
    }
  }
  std::vector<absl::StatusOr<EngineStepStats>> results(w, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < w; ++r)
    threads.emplace_back([&, r] { results[r] = ranks_[r]->engine->Step(inputs); });
  for (auto& t : threads) t.join();
  for (int r = 0; r < w; ++r)
    if (!results[r].ok())
      return absl::Status(results[r].status().code(),
                          absl::StrCat("rank ", r, ": ", results[r].status().message()));
  return results[0];
}

std::vector<double> LocalCluster::Param(int t, int rank) const {
  const auto& tensor = plan_.tensors[t];
  std::vector<double> out(tensor.geom.numel);
  for (int64_t i = 0; i < tensor.geom.numel; ++i)
    out[i] = LoadAsFloat(ranks_[rank]->params.data(), plan_.dtype, tensor.offset + i);
  return out;
}

absl::StatusOr<std::map<std::string, std::vector<double>>> LocalCluster::State(int t) const {
  const auto& tensor = plan_.tensors[t];
  const TensorGeometry& g = tensor.geom;
  std::map<std::string, std::vector<double>> out;
  out["exp_avg"].assign(g.numel, 0.0);
  if (!g.factored) out["exp_avg_sq"].assign(g.numel, 0.0);
  bool have_stats = false;
  for (int r = tensor.first_rank; r <= tensor.last_rank; ++r) {
    const TensorStateView v = ranks_[r]->engine->tensor_state(t);
    if (v.end <= v.begin) continue;
    std::copy(v.exp_avg.begin(), v.exp_avg.end(), out["exp_avg"].begin() + v.begin);
    if (!g.factored) {
      std::copy(v.exp_avg_sq.begin(), v.exp_avg_sq.end(), out["exp_avg_sq"].begin() + v.begin);
      continue;
    }
    const std::pair<const char*, std::span<const float>> stats[] = {
        {"exp_avg_sq_row", v.exp_avg_sq_row},
        {"exp_avg_sq_col", v.exp_avg_sq_col},
        {"exp_avg_res_row", v.exp_avg_res_row},
        {"exp_avg_res_col", v.exp_avg_res_col}};
    for (const auto& [name, span] : stats) {
      std::vector<double> values(span.begin(), span.end());
      if (!have_stats) {
        out[name] = std::move(values);
      } else if (out[name] != values) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor '", tensor.spec.name, "': rank ", r, "'s copy of ", name,
            " differs from rank ", tensor.first_rank, "'s"));
      }
    }
    have_stats = true;
  }
  return out;
}

}  // namespace came

#include "runtime/checkpoint.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/geometry.h"

namespace came {
namespace {

struct Piece {
  int64_t begin, end;
  size_t shard;
};

absl::StatusOr<std::vector<OpenedShard>> OpenAll(const std::vector<std::string>& paths,
                                                 const CheckpointManifest* manifest) {
  std::vector<OpenedShard> shards;
  for (size_t i = 0; i < paths.size(); ++i) {
    auto s = OpenShard(paths[i], manifest ? manifest->shard_bytes[i] : -1);
    if (!s.ok()) return s.status();
    if (manifest && (s->header.step != manifest->step || s->header.world_size != manifest->world_size ||
                     s->header.alignment != manifest->plan_alignment))
      return absl::DataLossError(absl::StrCat(
          paths[i], " is a shard of step ", s->header.step, " at world size ",
          s->header.world_size, " (alignment ", s->header.alignment, "); its manifest ",
          manifest->path, " says step ", manifest->step, " at world size ", manifest->world_size,
          " (alignment ", manifest->plan_alignment, ")"));
    shards.push_back(*std::move(s));
  }
  return shards;
}

}  // namespace

absl::Status CheckCoverage(const std::vector<OpenedShard>& shards) {
  std::map<std::string, std::vector<Piece>> pieces;
  std::map<std::string, int64_t> numel;
  for (size_t i = 0; i < shards.size(); ++i)
    for (const auto& [name, t] : shards[i].header.tensors) {
      pieces[name].push_back({t.begin, t.end, i});
      auto [it, fresh] = numel.emplace(name, t.numel);
      if (!fresh && it->second != t.numel)
        return absl::DataLossError(absl::StrCat(shards[i].file.path, ": tensor '", name, "' has ",
                                                t.numel, " elements; another shard says ", it->second));
    }
  for (auto& [name, list] : pieces) {
    std::sort(list.begin(), list.end(), [](const Piece& a, const Piece& b) { return a.begin < b.begin; });
    int64_t next = 0;
    for (const Piece& p : list) {
      if (p.begin < next)
        return absl::DataLossError(absl::StrCat(
            shards[p.shard].file.path, " holds elements [", p.begin, ", ", p.end, ") of tensor '",
            name, "', which overlap another shard's"));
      if (p.begin > next)
        return absl::DataLossError(absl::StrCat("no shard holds elements [", next, ", ", p.begin,
                                                ") of tensor '", name, "' (", shards[p.shard].file.path, " starts after them)"));
      next = p.end;
    }
    if (next != numel[name])
      return absl::DataLossError(absl::StrCat("no shard holds elements [", next, ", ", numel[name],
                                              ") of tensor '", name, "'"));
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<PendingLoad> Read(const ShardedCame& engine, const std::vector<OpenedShard>& shards) {
  const ShardPlan& plan = engine.plan();
  PendingLoad out;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorStateView mine = engine.tensor_state(static_cast<int>(t));
    if (mine.end <= mine.begin) continue;
    const auto& tensor = plan.tensors[t];
    const std::string& n = tensor.spec.name;
    PendingLoad::Tensor l;
    l.tensor = static_cast<int>(t);
    const int64_t len = mine.end - mine.begin;
    l.master.assign(len, 0.0f);
    l.exp_avg.assign(len, 0.0f);
    if (!tensor.geom.factored) l.exp_avg_sq.assign(len, 0.0f);
    int64_t covered = 0;
    bool have_stats = !tensor.geom.factored;
    for (const OpenedShard& sh : shards) {
      auto it = sh.header.tensors.find(n);
      if (it == sh.header.tensors.end()) continue;
      const ShardTensor& piece = it->second;
      if (piece.shape != tensor.spec.shape)
        return absl::FailedPreconditionError(absl::StrCat(
            sh.file.path, " holds tensor '", n, "' with shape ", ShapeString(piece.shape),
            "; the model's is ", ShapeString(tensor.spec.shape), ": was it written for another model?"));
      const int64_t lo = std::max(mine.begin, piece.begin);
      const int64_t hi = std::min(mine.end, piece.end);
      if (lo < hi) {
        const int64_t first = lo - piece.begin, count = hi - lo, at = lo - mine.begin;
        for (auto [kind, dst] : {std::pair{"/master", &l.master}, std::pair{"/exp_avg", &l.exp_avg},
                                 std::pair{"/exp_avg_sq", &l.exp_avg_sq}}) {
          if (dst->empty()) continue;
          if (absl::Status s = ReadShardFloats(sh, n + kind, first, count, dst->data() + at); !s.ok())
            return s;
        }
        covered += count;
      }
      if (!have_stats) {
        l.sq_row.assign(tensor.geom.rows(), 0.0f);
        l.res_row.assign(tensor.geom.rows(), 0.0f);
        l.sq_col.assign(tensor.geom.cols(), 0.0f);
        l.res_col.assign(tensor.geom.cols(), 0.0f);
        for (auto [kind, dst] : {std::pair{"/exp_avg_sq_row", &l.sq_row}, std::pair{"/exp_avg_sq_col", &l.sq_col},
                                 std::pair{"/exp_avg_res_row", &l.res_row},
                                 std::pair{"/exp_avg_res_col", &l.res_col}}) {
          if (absl::Status s = ReadShardFloats(sh, n + kind, 0, static_cast<int64_t>(dst->size()), dst->data());
              !s.ok())
            return s;
        }
        have_stats = true;
      }
    }
    if (covered != len || !have_stats)
      return absl::FailedPreconditionError(absl::StrCat(
          "the checkpoint does not cover tensor '", n, "' elements [", mine.begin, ", ", mine.end,
          "): was it written for another model?"));
    out.tensors.push_back(std::move(l));
  }
  return out;
}

absl::StatusOr<PendingLoad> ReadChecked(const ShardedCame& engine, const std::vector<std::string>& paths,
                                        const CheckpointManifest* manifest) {
  auto shards = OpenAll(paths, manifest);
  if (!shards.ok()) return shards.status();
  // A manifest lists the whole checkpoint, whose pieces must cover every tensor exactly once;
  // a bare list of paths may be a subset (then this rank's range must still be covered).
  if (manifest != nullptr)
    if (absl::Status s = CheckCoverage(*shards); !s.ok()) return s;
  return Read(engine, *shards);
}

}  // namespace

absl::StatusOr<ShardFile> WriteShard(const ShardedCame& engine, int64_t step,
                                     const std::string& path) {
  const ShardPlan& plan = engine.plan();
  std::vector<ShardPieceData> pieces;
  for (size_t t = 0; t < plan.tensors.size(); ++t) {
    const TensorStateView v = engine.tensor_state(static_cast<int>(t));
    if (v.end <= v.begin) continue;
    const auto& spec = plan.tensors[t].spec;
    ShardPieceData p;
    p.tensor = ShardTensor{spec.name, static_cast<int>(t), spec.shape, plan.tensors[t].geom.numel,
                           v.begin, v.end};
    p.entries["master"] = v.master;
    p.entries["exp_avg"] = v.exp_avg;
    if (!v.exp_avg_sq.empty()) p.entries["exp_avg_sq"] = v.exp_avg_sq;
    if (!v.exp_avg_sq_row.empty()) {
      p.entries["exp_avg_sq_row"] = v.exp_avg_sq_row;
      p.entries["exp_avg_sq_col"] = v.exp_avg_sq_col;
      p.entries["exp_avg_res_row"] = v.exp_avg_res_row;
      p.entries["exp_avg_res_col"] = v.exp_avg_res_col;
    }
    pieces.push_back(std::move(p));
  }
  return WriteShardFile(path, step, plan.world_size, plan.alignment, pieces);
}

absl::StatusOr<PendingLoad> ReadShards(const ShardedCame& engine,
                                       const std::vector<std::string>& shard_paths) {
  return ReadChecked(engine, shard_paths, nullptr);
}

absl::StatusOr<PendingLoad> ReadShards(const ShardedCame& engine, const CheckpointManifest& manifest) {
  return ReadChecked(engine, manifest.shard_paths, &manifest);
}

absl::Status ApplyShards(ShardedCame& engine, const PendingLoad& load) {
  for (const PendingLoad::Tensor& l : load.tensors) {
    TensorStateView v = engine.tensor_state(l.tensor);
    v.master = l.master;
    v.exp_avg = l.exp_avg;
    v.exp_avg_sq = l.exp_avg_sq;
    v.exp_avg_sq_row = l.sq_row;
    v.exp_avg_sq_col = l.sq_col;
    v.exp_avg_res_row = l.res_row;
    v.exp_avg_res_col = l.res_col;
    if (absl::Status s = engine.SetTensorState(l.tensor, v); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status LoadShards(ShardedCame& engine, const std::vector<std::string>& shard_paths) {
  auto load = ReadShards(engine, shard_paths);
  if (!load.ok()) return load.status();
  return ApplyShards(engine, *load);
}

}  // namespace came

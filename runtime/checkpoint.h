// Checkpoint shards of the sharded engine (docs/design.md, "Failures").
//
// Note [Shard files]
// Each rank writes one file in the safetensors layout (8-byte little-endian header length, a
// JSON header, then raw little-endian data): for every piece it owns, "<tensor>/exp_avg",
// "<tensor>/master" (fp32 parameter values) and, unfactored, "<tensor>/exp_avg_sq", each
// covering the piece's element range [begin, end) recorded in the header's __metadata__ as
// "<tensor>/range" = "begin,end" (with "<tensor>/numel", "<tensor>/shape" = "d0,d1,..." and
// "<tensor>/index", its place in the plan); factored tensors also store their whole
// row/column statistics ("<tensor>/exp_avg_sq_row", ...). The metadata also holds the step,
// world size and plan alignment. A checkpoint is the set of every rank's shard plus the
// coordinator's manifest.json listing them. Loading reads, for each piece a rank owns now,
// the overlapping ranges of every shard, so a checkpoint written with one world size loads
// with another (resharding). Files are written to a new private temporary name, fsynced and
// renamed (checkpoint_io.h); every header is checked before use (checkpoint_shard.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint_manifest.h"
#include "runtime/checkpoint_shard.h"
#include "runtime/sharded_came.h"

namespace came {

// Writes the engine's state (this rank's pieces) and `step` to `path`.
absl::StatusOr<ShardFile> WriteShard(const ShardedCame& engine, int64_t step,
                                     const std::string& path);

// This rank's state read from a checkpoint, not yet applied (see ReadShards).
struct PendingLoad {
  struct Tensor {
    int tensor = 0;
    std::vector<float> master, exp_avg, exp_avg_sq, sq_row, sq_col, res_row, res_col;
  };
  std::vector<Tensor> tensors;
};

// Reads what this rank owns from the shards without changing the engine, so that every rank
// can confirm it read its part before any rank changes state. Every tensor's pieces across the
// shards must cover it exactly once (DataLoss naming the shards otherwise); a tensor this rank
// owns that the shards do not hold, or hold with another shape, is FailedPrecondition. With a
// manifest, each shard's size, step and world size must be the manifest's.
absl::StatusOr<PendingLoad> ReadShards(const ShardedCame& engine,
                                       const std::vector<std::string>& shard_paths);
absl::StatusOr<PendingLoad> ReadShards(const ShardedCame& engine,
                                       const CheckpointManifest& manifest);
// Checks that the pieces of every tensor in the shards cover it exactly once (DataLoss naming
// the shard and the elements otherwise).
absl::Status CheckCoverage(const std::vector<OpenedShard>& shards);

// Applies what ReadShards returned.
absl::Status ApplyShards(ShardedCame& engine, const PendingLoad& load);

// Loads this rank's pieces from the shards of a checkpoint (written with any world size)
// into the engine, parameters included (this rank's chunk; call
// ShardedCame::GatherParameters on every rank afterwards). NotFound / DataLoss /
// FailedPrecondition name the file and tensor at fault; the engine is unchanged on error.
absl::Status LoadShards(ShardedCame& engine, const std::vector<std::string>& shard_paths);

}  // namespace came

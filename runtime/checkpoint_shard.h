// One checkpoint shard file (Note [Shard files] in runtime/checkpoint.h): writing it from
// plain buffers, and opening it with every length, offset, range and size in its header
// checked (Note [Checkpoint file safety] in runtime/checkpoint_io.h) before anything is read.
// Used by the engine's checkpoints (checkpoint.h) and by came-ckpt, which needs no engine.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint_io.h"

namespace came {

// Entry kinds: per element of the piece, and (factored tensors) per row / per column.
inline constexpr const char* kPieceKinds[] = {"master", "exp_avg", "exp_avg_sq"};
inline constexpr const char* kStatKinds[] = {"exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row",
                                             "exp_avg_res_col"};

// The piece of one tensor a shard holds.
struct ShardTensor {
  std::string name;
  int index = 0;               // the tensor's position in the plan (flat-buffer order)
  std::vector<int64_t> shape;  // the whole tensor's
  int64_t numel = 0;
  int64_t begin = 0, end = 0;  // the element range of the piece
  bool factored() const { return shape.size() >= 2; }
};

struct ShardHeader {
  int64_t step = 0;
  int world_size = 0;
  int64_t alignment = 1;
  std::map<std::string, ShardTensor> tensors;  // by name
  // "<tensor>/<kind>" -> the byte range [first, second) of its floats after data_start.
  std::map<std::string, std::pair<uint64_t, uint64_t>> entries;
  uint64_t data_start = 0;
};

struct OpenedShard {
  ReadableFile file;
  ShardHeader header;
};

// Opens a shard and checks its header against itself (and, when expected_bytes >= 0, the
// file's size). NotFound for a missing file; DataLoss naming the file and the problem.
absl::StatusOr<OpenedShard> OpenShard(const std::string& path, int64_t expected_bytes = -1);

// Reads floats [first, first + count) of entry "<tensor>/<kind>"; DataLoss when the shard
// has no such entry or it is shorter.
absl::Status ReadShardFloats(const OpenedShard& shard, const std::string& entry, int64_t first,
                             int64_t count, float* out);

// What WriteShardFile writes: pieces with their entries (kind -> values).
struct ShardPieceData {
  ShardTensor tensor;
  std::map<std::string, std::span<const float>> entries;  // kinds from kPieceKinds/kStatKinds
};

struct ShardFile {
  std::string path;
  int64_t bytes = 0;
  std::string sha256;  // lowercase hex
};

// Writes a shard (a new private temporary file, fsync, rename, folder fsync).
absl::StatusOr<ShardFile> WriteShardFile(const std::string& path, int64_t step, int world_size,
                                         int64_t alignment, const std::vector<ShardPieceData>& pieces);

}  // namespace came

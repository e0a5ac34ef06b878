// A checkpoint as whole tensors, independent of any world size: what came-ckpt reads from a
// checkpoint's shards (checking every checksum and that every element is covered exactly
// once), writes back as shards for any world size (resharding), and exports to or imports
// from one safetensors file.
//
// Note [Export names]
// The safetensors file of `came-ckpt export` holds, for every parameter `<name>` (the name
// the trainer registered, e.g. torch's model.named_parameters() name), the fp32 parameter
// as `<name>` with its shape, and its CAME state under came-pytorch 0.1.3's state names:
// `<name>.exp_avg` (the parameter's shape), then `<name>.exp_avg_sq` for 0-D and 1-D
// parameters, or `<name>.exp_avg_sq_row`, `.exp_avg_sq_col`, `.exp_avg_res_row`,
// `.exp_avg_res_col` (shapes [batch..., n] and [batch..., m]) for factored ones. Its
// __metadata__ holds "step" and "format" = "came-export". `came-ckpt import` reads the same
// layout.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint.h"

namespace came::ckpt {

struct FullTensor {
  std::string name;
  std::vector<int64_t> shape;
  // "master", "exp_avg", "exp_avg_sq" (unfactored) or the four factored kinds.
  std::map<std::string, std::vector<float>> values;
  bool factored() const { return shape.size() >= 2; }
};

struct FullState {
  int64_t step = 0;
  int64_t alignment = 1;
  std::vector<FullTensor> tensors;  // in plan order
};

// Returns the shape of a factored statistic kind ("exp_avg_sq_row": [batch..., n]).
std::vector<int64_t> StatShape(const std::vector<int64_t>& shape, const std::string& kind);

// Reads a whole checkpoint: verifies every shard's size and SHA-256, checks that every
// tensor's pieces cover it exactly once, and assembles every tensor.
absl::StatusOr<FullState> ReadFullState(const CheckpointManifest& manifest);

// Writes `state` as a checkpoint of `world_size` ranks into folder `dir` (created, 0700):
// one shard per rank and a manifest.json (written last). Returns the manifest's path.
absl::StatusOr<std::string> WriteCheckpoint(const FullState& state, int world_size,
                                            const std::string& dir);

// Writes / reads the export file (Note [Export names]).
absl::Status WriteExport(const FullState& state, const std::string& path);
absl::StatusOr<FullState> ReadExport(const std::string& path, int64_t alignment);

}  // namespace came::ckpt

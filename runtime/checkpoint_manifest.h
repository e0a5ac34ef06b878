// The manifest of a committed checkpoint (Note [Checkpoint layout] in
// runtime/service/checkpoint_files.h), read defensively (Note [Checkpoint file safety] in
// runtime/checkpoint_io.h): any field of the wrong JSON type, missing, out of range or naming
// a file outside the manifest's folder is DataLoss naming the manifest and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace came {

inline constexpr uint64_t kMaxManifestBytes = 64ull << 20;
inline constexpr int64_t kMaxCheckpointStep = int64_t{1} << 62;
inline constexpr int kMaxCheckpointWorld = 65536;
inline constexpr int64_t kMaxShardBytes = int64_t{1} << 50;

struct CheckpointManifest {
  std::string path;    // of manifest.json
  std::string sha256;  // of the manifest's bytes (what ranks compare before they load)
  int64_t step = 0;
  int world_size = 0;
  int64_t plan_alignment = 1;  // every shard's must be the same
  // One per rank, in rank order.
  std::vector<std::string> shard_paths;
  std::vector<int64_t> shard_bytes;
  std::vector<std::string> shard_sha256;
};

// Reads and checks a manifest.json. NotFound when it does not exist; DataLoss naming it (and
// the field) when it is not a well-formed came checkpoint manifest.
absl::StatusOr<CheckpointManifest> ReadCheckpointManifest(const std::string& manifest_path);

// Parses manifest text as read from `manifest_path` (used for error messages and to resolve
// shard names against its folder).
absl::StatusOr<CheckpointManifest> ParseCheckpointManifest(const std::string& text,
                                                           const std::string& manifest_path);

// Checks every shard's size and SHA-256 against the manifest (reading no more than the
// manifest's size of each); DataLoss naming the file, NotFound for a missing one.
absl::Status VerifyShards(const CheckpointManifest& manifest);

}  // namespace came

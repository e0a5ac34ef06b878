// The coordinator's checkpoint files: the manifest of a committed checkpoint, written
// atomically, and the search for the latest one when a coordinator starts (so a restarted
// job resumes from it).
//
// Note [Checkpoint layout]
//   <checkpoint_dir>/step-<step, 12 digits>/           one folder per checkpoint
//       <shard files>                                  one per rank, written by rankd
//       manifest.json                                  written by the coordinator last
// A checkpoint is committed exactly when its manifest.json exists: the coordinator writes it
// only when every rank has reported its shard, to a temporary name, fsyncs it, renames it
// and fsyncs the folder. Readers ignore folders without a manifest.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/service/coordinator_types.h"

namespace came::service {

inline constexpr std::string_view kManifestFileName = "manifest.json";

// Returns "step-000000000100" for step 100.
std::string CheckpointId(int64_t step);

// Writes contents to path: a new private temporary file in the same folder (O_EXCL,
// O_NOFOLLOW, mode 0600), fsync, rename, fsync of the folder. On error the old file (if any) is unchanged and no temporary file remains.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// Creates the folder and its parents when missing (new ones with mode 0700).
absl::Status CreateDirectories(const std::string& path);

// The file operations of the coordinator's checkpoint commits, behind an interface so tests
// can slow or fail them (a slow disk must never stall heartbeats: the coordinator calls
// these without holding its lock). RealCheckpointStorage() is the file system. Thread-safe.
class CheckpointStorage {
 public:
  virtual ~CheckpointStorage() = default;
  virtual absl::Status CreateDirectories(const std::string& path) = 0;
  virtual absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) = 0;
  // Deletes all but the newest `keep` committed checkpoints (checkpoint_retention.h).
  virtual absl::Status Prune(const std::string& checkpoint_dir, int keep) = 0;
};
CheckpointStorage* RealCheckpointStorage();

// Returns the committed checkpoint with the highest step under checkpoint_dir, or nullopt
// when there is none (or the folder does not exist).
std::optional<CheckpointInfo> FindLatestCheckpoint(const std::string& checkpoint_dir);

}  // namespace came::service

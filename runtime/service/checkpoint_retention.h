// Checkpoint retention (came-coordinator --keep-checkpoints K): after a commit, the
// coordinator deletes the committed checkpoints older than the newest K, and the folders of
// checkpoints that can never be committed any more (Note [Checkpoint layout]).
//
// Note [Checkpoint retention]
// Only the coordinator deletes, and only right after a commit, from the thread that
// committed: a checkpoint is deleted only when K newer ones are committed, so the latest is
// never deleted, and neither is one being written (BeginCheckpoint accepts only steps
// above the latest committed one, so every checkpoint in progress is newer than all that
// are deleted). A deleted checkpoint loses its manifest.json first (renamed away and the
// folder fsynced), so a crash midway leaves a folder that readers ignore, never a manifest
// whose shards are gone. A folder without a manifest whose step is below the latest
// committed one (a save interrupted by a crash) is removed too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace came::service {

// Returns the steps of the committed checkpoints under checkpoint_dir, ascending.
std::vector<int64_t> CommittedCheckpointSteps(const std::string& checkpoint_dir);

// Deletes what Note [Checkpoint retention] says may go, keeping the newest `keep` (>= 1)
// committed checkpoints. Returns the first error (the remaining folders are still tried).
absl::Status PruneCheckpoints(const std::string& checkpoint_dir, int keep);

}  // namespace came::service

// Plain C++ types of the coordinator's API: the core (coordinator.h), the gRPC adapter and
// the client (coordinator_client.h) all speak them; only the adapter and the client see
// the proto messages (proto/came/v1/coordinator.proto documents every field).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/came_math.h"
#include "runtime/service/limits.h"

namespace came::service {

enum class JobState { kForming, kRunning, kFailed, kFinished };

// Returns "FORMING", "RUNNING", "FAILED" or "FINISHED".
std::string_view JobStateName(JobState state);

enum class Backend { kGloo, kNccl };

// Returns "gloo" or "nccl".
std::string_view BackendName(Backend backend);
// Parses "gloo" or "nccl" (InvalidArgument otherwise).
absl::StatusOr<Backend> ParseBackend(std::string_view name);

// The configuration every rank of a job shares.
struct JobConfig {
  CameHyper defaults;  // lr = 0: no default
  Backend backend = Backend::kGloo;
  int64_t plan_alignment = 1;
  int64_t plan_version = kShardPlanVersion;
  std::string checkpoint_dir;  // "" = checkpoints off
  absl::Duration lease = absl::Seconds(10);
  int64_t checkpoint_every = 0;  // every rank saves after every N-th step by itself; 0 = off
};

struct JoinRequest {
  int requested_rank = -1;  // -1: the lowest free rank
  int world_size = 0;       // 0: any
  std::vector<std::string> endpoints;
  std::string host;
  int64_t generation = 0;   // Note [Restart generations] in coordinator.h
};

struct JoinResult {
  int rank = 0;
  int world_size = 0;
  JobConfig config;
  std::string job_id;
};

struct HeartbeatResult {
  JobState state = JobState::kForming;
  std::string abort_reason;  // set when state is kFailed
  absl::Duration lease;
  bool stop_requested = false;  // RequestStop was called: save at the next step and stop
};

// A digest of a tensor manifest (names, shapes, dtypes, groups) and its tensor count.
struct ManifestDigest {
  std::string digest;
  int64_t tensor_count = 0;
  friend bool operator==(const ManifestDigest&, const ManifestDigest&) = default;
};

struct ShardReport {
  std::string checkpoint_id;
  int rank = 0;
  std::string file;  // a plain file name inside the checkpoint's directory
  int64_t bytes = 0;
  std::string sha256;  // 64 lowercase hex digits
};

struct CheckpointInfo {
  std::string id;  // "step-000000000100"
  int64_t step = 0;
  std::string directory;
  std::string manifest_path;  // set once committed
};

struct MemberStatus {
  int rank = 0;
  std::string host;
  std::vector<std::string> endpoints;
  absl::Duration heartbeat_age;
  int64_t step = -1;
  bool finished = false;
};

struct JobStatus {
  JobState state = JobState::kForming;
  std::string abort_reason;
  int world_size = 0;
  std::string job_id;
  std::vector<MemberStatus> members;  // joined ranks, by rank
  int64_t step = -1;                  // the lowest step over members
  std::optional<CheckpointInfo> latest_checkpoint;
  int64_t checkpoint_commits = 0;     // since the coordinator started
  bool stop_requested = false;
  int64_t generation = 0;
};

}  // namespace came::service

// Coordinator: the job's control-plane core, plain C++ (no gRPC types; the adapter is
// coordinator_service.h). One per job. It owns:
//   - membership: a shared-secret token, rank assignment, the world size;
//   - heartbeat leases on an injectable Clock: a rank whose lease runs out fails the job
//     with a reason naming the rank, and every later Heartbeat answers FAILED with it;
//   - the job state machine: FORMING until every rank joined, RUNNING, then FAILED (a rank
//     failed or lost its lease) or FINISHED (every rank called Finish); both are final;
//   - the rendezvous store (kv_store.h), barriers and tensor-manifest agreement, whose
//     waits end at the caller's deadline;
//   - the checkpoint commit protocol (Note [Checkpoint layout] in checkpoint_files.h).
//
// Note [Waits without threads]
// Calls that wait (StoreGet, Barrier, SubmitManifest) take a callback instead of blocking:
// the callback runs once, when the wait is satisfied, when its deadline passes, when the
// job fails (Aborted, with the failure reason) or on Shutdown (Unavailable). Deadlines are
// noticed by Poll, which the owner calls periodically (the server every few milliseconds,
// tests after advancing a FakeClock). Callbacks never run under the coordinator's lock
// (Note [Callbacks outside the lock]) and may run on the calling thread. So a gRPC
// callback handler registers a wait and returns; no thread is blocked per waiting call.
//
// Every method is thread-safe. Input is checked against limits.h before any state
// changes (InvalidArgument).
//
// Note [Restart generations]
// A job restarted from its last checkpoint (came-launch --max-restarts) runs a fresh
// coordinator and fresh ranks; the launcher numbers the attempts 0, 1, 2, ... and gives the
// number to both. A coordinator admits only ranks of its own generation: a rank of a later
// one gets Unavailable (it retries until the restarted coordinator answers on the same
// address: on another node, the old coordinator may not have been stopped yet), a rank of
// an earlier one gets FailedPrecondition (a straggler of the failed attempt).
//
// Note [Stop requests]
// RequestStop (a preempted job: came-launch received SIGTERM) sets a flag that every
// Heartbeat answer carries. A rank that has seen it votes to stop in its next step; the
// vote travels in the step's first all-reduce (StepInputs::stop_vote in sharded_came.h), so
// every rank learns in the same step that some rank voted, saves the checkpoint of that
// step and then refuses further steps: the trainers exit cleanly and a new job resumes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/service/checkpoint_files.h"
#include "runtime/service/clock.h"
#include "runtime/service/coordinator_types.h"
#include "runtime/service/deferred_calls.h"
#include "runtime/service/kv_store.h"

namespace came::service {

using StatusCallback = absl::AnyInvocable<void(absl::Status)>;

struct CoordinatorOptions {
  int world_size = 1;       // 1 .. kMaxWorldSize
  std::string token;        // the shared secret; must not be empty
  JobConfig config;         // lease > 0, plan_alignment >= 1
  std::string job_id;       // "" = a random id
  int64_t generation = 0;   // Note [Restart generations]
  int keep_checkpoints = 0; // > 0: keep only the newest K committed checkpoints
                            // (Note [Checkpoint retention] in checkpoint_retention.h)
  CheckpointStorage* storage = nullptr;  // not owned; null: RealCheckpointStorage()
};

class Coordinator {
 public:
  // Checks the options, creates the checkpoint folder if one is configured and finds the
  // latest committed checkpoint in it. The clock is not owned and must outlive the
  // coordinator.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      CoordinatorOptions options, const Clock* clock = RealClock::Get());
  ~Coordinator();

  // Returns OK when token is the job's secret (compared in constant time), Unauthenticated
  // otherwise.
  absl::Status Authenticate(std::string_view token) const;

  // Admits a rank: the requested one, or the lowest free one. InvalidArgument for a world
  // size that differs from the job's or a rank out of range; AlreadyExists for a rank that
  // has joined; FailedPrecondition when every rank has joined or the job is over.
  absl::StatusOr<JoinResult> Join(const JoinRequest& request);

  // Renews the lease of rank and records its step.
  absl::StatusOr<HeartbeatResult> Heartbeat(int rank, int64_t step);

  absl::Status StoreSet(std::string_view key, std::string_view value);
  void StoreGet(std::string_view key, absl::Time deadline, ValueCallback done);
  absl::StatusOr<int64_t> StoreAdd(std::string_view key, int64_t delta);

  // Calls done with OK once every rank has entered barrier `name` (the name can be used
  // again after that); DeadlineExceeded naming the missing ranks at the deadline (the
  // caller's arrival is withdrawn).
  void Barrier(std::string_view name, int rank, absl::Time deadline, StatusCallback done);

  // Calls done with OK once every rank has submitted the same manifest, or with
  // FailedPrecondition naming the first rank whose manifest differs from rank 0's. After
  // an agreement a later submission (a rank that attaches again) is compared at once.
  void SubmitManifest(int rank, ManifestDigest manifest, absl::Time deadline,
                      StatusCallback done);

  // Starts (or, for the same step, returns) the checkpoint of step. FailedPrecondition
  // when checkpoints are off or the job is not RUNNING; AlreadyExists once committed.
  absl::StatusOr<CheckpointInfo> BeginCheckpoint(int rank, int64_t step);
  // Records that a rank wrote its shard (a second report of a rank replaces the first).
  absl::Status ReportShard(const ShardReport& report);
  // Writes the manifest once every rank reported (FailedPrecondition naming the missing
  // ranks before that); committing a committed checkpoint returns it again.
  absl::StatusOr<CheckpointInfo> CommitCheckpoint(std::string_view checkpoint_id, int rank);
  std::optional<CheckpointInfo> LatestCheckpoint() const;

  // Returns the job's state and members (after expiring leases).
  JobStatus Status();

  // Marks rank finished; returns the job's state (FINISHED once every rank has finished).
  absl::StatusOr<JobState> Finish(int rank);
  // Fails the job: "rank <rank>: <reason>" (rank -1: "operator: <reason>"). The first
  // failure's reason is kept.
  absl::Status Fail(int rank, std::string_view reason);
  // Asks every rank to checkpoint at its next step and stop (Note [Stop requests]).
  // FailedPrecondition when checkpoints are off or the job is over.
  absl::Status RequestStop();

  // Expires leases and the waits whose deadline has passed (Note [Waits without threads]).
  void Poll();
  // Completes every wait with Unavailable; later waits fail at once.
  void Shutdown();

  int world_size() const { return options_.world_size; }
  absl::Duration lease() const { return options_.config.lease; }

 private:
  struct Member {
    std::string host;
    std::vector<std::string> endpoints;
    absl::Time last_heartbeat;
    int64_t step = -1;
    bool finished = false;
  };
  struct Waiter {
    absl::Time deadline;
    StatusCallback done;
  };
  struct PendingCheckpoint {
    CheckpointInfo info;
    std::map<int, ShardReport> shards;
  };

  Coordinator(CoordinatorOptions options, const Clock* clock);

  // Completes, with `expired`, the waiters whose deadline has passed; returns their ranks.
  static std::vector<int> ExpireWaiters(std::map<int, Waiter>& waiters, absl::Time now,
                                        const absl::Status& expired, DeferredCalls& deferred);
  // Completes every wait (barriers, manifest agreement, store) with status.
  void AbortWaitsLocked(const absl::Status& status, DeferredCalls& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails the job unless it is over; queues the aborts of every wait.
  void FailLocked(std::string reason, DeferredCalls& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeasesLocked(absl::Time now, DeferredCalls& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckMemberLocked(int rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The status a new wait gets at once when the job is over or shutting down.
  absl::Status WaitBlockerLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteManifestRoundLocked(DeferredCalls& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns the manifest.json text of a checkpoint whose shards are all in.
  std::string ManifestTextLocked(const PendingCheckpoint& pending) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorOptions options_;
  const Clock* const clock_;
  KvStore store_;

  CheckpointStorage* const storage_;
  // Note [Checkpoint I/O outside the lock]: BeginCheckpoint and CommitCheckpoint hold
  // checkpoint_io_mu_ (one checkpoint operation at a time) across their file I/O and take mu_
  // only around the bookkeeping, so a slow disk delays checkpoints but never a Heartbeat,
  // a store call or a barrier (nothing else takes checkpoint_io_mu_).
  absl::Mutex checkpoint_io_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  JobState state_ ABSL_GUARDED_BY(mu_) = JobState::kForming;
  std::string abort_reason_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int, Member> members_ ABSL_GUARDED_BY(mu_);
  // barriers_[name][rank]: the ranks waiting in barrier `name`.
  std::map<std::string, std::map<int, Waiter>, std::less<>> barriers_ ABSL_GUARDED_BY(mu_);
  std::map<int, ManifestDigest> manifests_ ABSL_GUARDED_BY(mu_);  // this round's
  std::map<int, Waiter> manifest_waiters_ ABSL_GUARDED_BY(mu_);
  std::optional<ManifestDigest> agreed_manifest_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, PendingCheckpoint, std::less<>> pending_checkpoints_ ABSL_GUARDED_BY(mu_);
  std::optional<CheckpointInfo> latest_checkpoint_ ABSL_GUARDED_BY(mu_);
  int64_t checkpoint_commits_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace came::service

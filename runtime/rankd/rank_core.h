// RankCore: the logic of came-rankd without gRPC. It owns this rank's communicator, the
// shared parameter and gradient buffers of the attached trainer and the ShardedCame engine,
// and runs every call that may wait (manifest agreement, collectives) on its own worker
// thread, so no RPC thread ever blocks on a collective (Note [Rank calls]).
//
// Note [Rank calls]
// A trainer's life: Attach (manifest -> layout and shared buffers; every rank must send the
// same manifest, checked through the coordinator), SyncParameters (rank 0's initial
// parameters are broadcast into every rank's buffer, then the engine is built), Step* (one
// per optimizer step, numbers strictly increasing), Detach. Each call validates its input
// at once on the caller's thread (bad input never reaches the queue and changes nothing),
// then runs in arrival order on the worker thread, and reports through its callback, which
// may run on either thread. A collective call's own refusals are the exception: a step
// (its number, lr count, hyperparameters, ...), an export or a save refused after the engine
// exists still joins its round, refused, so that every rank fails that call together at
// once (Note [Step rounds] in runtime/sharded_came.h); nothing changes then either. After Abort
// (the job failed, or a collective failed) every queued and later call fails with the
// abort's status.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "runtime/comm/communicator.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/rankd/trainer_buffer.h"
#include "runtime/shard_plan.h"
#include "runtime/sharded_came.h"

namespace came::rankd {

// What a trainer registers.
struct Manifest {
  std::vector<TensorSpec> tensors;  // in flat-buffer order
  std::vector<CameHyper> groups;    // one per parameter group
};

// What Attach returns.
struct Layout {
  std::string attachment_id;
  int rank = 0;
  int world_size = 1;
  ShardPlan plan;
  std::string params_name;  // shared-memory names ("" for device buffers)
  std::string grads_name;
  int device = -1;          // the buffers' CUDA device, -1: host shared memory
  std::string params_ipc_handle;  // cudaIpcMemHandle_t bytes of device buffers
  std::string grads_ipc_handle;
  size_t buffer_bytes = 0;  // of each buffer: plan.padded_size elements of plan.dtype
  std::string digest;       // the manifest digest agreed with the other ranks
};

// Hyperparameters a step sets for one group; unset values keep the group's Attach value.
struct HyperOverride {
  std::optional<double> lr, eps1, eps2, clip_threshold, beta1, beta2, beta3, weight_decay;
  // Returns `base` with the set values replaced.
  CameHyper Apply(CameHyper base) const;
};

struct StepCall {
  std::string attachment_id;
  int64_t step = 0;
  std::vector<double> lr;            // one per group
  std::vector<double> weight_decay;  // empty, or one per group
  std::vector<HyperOverride> hyper;  // empty, or one per group; wins over lr and weight_decay
  double max_grad_norm = 0.0;        // 0: off
};

// A whole optimizer state in a shared buffer (ShardedCame::StateLayoutOf's layout).
struct StateTransfer {
  std::string buffer_name;
  size_t buffer_bytes = 0;
  StateLayout layout;
  int64_t step = 0;  // the step the state follows
};

struct StepOutcome {
  EngineStepStats stats;
  StateBytes state_bytes;
  // The job is stopping (Note [Stop requests] in runtime/service/coordinator.h): this step
  // was not run, nothing changed, and the state after step `stopped_after` is checkpointed.
  bool stopped = false;
  int64_t stopped_after = 0;
  // The automatic checkpoint of this step failed (the step was taken): why; empty otherwise.
  std::string checkpoint_error;
};

// How a rank takes part in a checkpoint through the coordinator (Note [Checkpoint layout] in
// runtime/service/checkpoint_files.h): begin returns the checkpoint's id and folder, report
// records this rank's shard, commit writes the manifest once every shard is in and returns
// its path, latest returns the path of the newest committed manifest (NotFound: none).
struct CheckpointHooks {
  absl::AnyInvocable<absl::StatusOr<std::pair<std::string, std::string>>(int64_t step)> begin;
  absl::AnyInvocable<absl::Status(const std::string& id, const std::string& file, int64_t bytes,
                                  const std::string& sha256)>
      report;
  absl::AnyInvocable<absl::StatusOr<std::string>(const std::string& id)> commit;
  absl::AnyInvocable<absl::StatusOr<std::string>()> latest;
};

struct SavedCheckpoint {
  std::string id;
  std::string manifest_path;
};

struct LoadedCheckpoint {
  std::string manifest_path;
  int64_t step = 0;
  int saved_world_size = 0;
};

struct RankCoreOptions {
  int rank = 0;
  int world_size = 1;
  int num_threads = 1;          // CPU kernel threads
  int64_t alignment = 16;       // shard-plan alignment in elements
  bool reduce_in_float32 = false;  // EngineOptions::reduce_in_float32 (16-bit gradients)
  std::string shm_prefix;       // e.g. "/came-<job>-r0"; buffers are <prefix>-<n>-params|grads
  // >= 0: the parameter and gradient buffers live in this CUDA device's memory (Note
  // [Trainer buffers]); the communicator must then take device buffers (NCCL). The state
  // buffers of ExportState and ReserveStateBuffer stay in host shared memory.
  int device = -1;
  int64_t checkpoint_every = 0;  // > 0: save after every N-th step by itself (needs hooks)
  absl::Duration collective_timeout = absl::Minutes(5);
  absl::Duration agreement_timeout = absl::Minutes(5);
};

// Validates a manifest against the service limits (limits.h) and CAME's rules; returns
// InvalidArgument naming the first problem.
absl::Status ValidateManifest(const Manifest& manifest);

// Returns a digest of the manifest (names, shapes, dtypes, groups and hyperparameters) that
// every rank computes identically.
std::string ManifestDigestOf(const Manifest& manifest);

class RankCore {
 public:
  // Asks the coordinator whether every rank submitted the same digest (waits for all).
  using Agreement = absl::AnyInvocable<absl::Status(const std::string& digest,
                                                    int64_t tensor_count,
                                                    absl::Duration timeout)>;
  // Called on the worker thread after every step that ran (skipped or not).
  using StepObserver = absl::AnyInvocable<void(int64_t step, const EngineStepStats& stats,
                                               const StateBytes& bytes)>;
  template <typename T>
  using Done = absl::AnyInvocable<void(T)>;

  static absl::StatusOr<std::unique_ptr<RankCore>> Create(
      RankCoreOptions options, std::unique_ptr<comm::Communicator> comm, Agreement agreement,
      StepObserver observer = nullptr, CheckpointHooks checkpoints = {});
  ~RankCore();  // aborts queued calls and joins the worker

  void Attach(Manifest manifest, Done<absl::StatusOr<Layout>> done);
  // Reports the optimizer state bytes this rank now holds.
  void SyncParameters(std::string attachment_id, Done<absl::StatusOr<StateBytes>> done);
  void Step(StepCall call, Done<absl::StatusOr<StepOutcome>> done);
  // Releases the attachment. Collective once the engine exists (a detach round, Note [Step
  // rounds]): every rank's trainer detaches, and another rank's pending export, step, save
  // or load fails at once naming the detach. Not collective after an abort.
  void Detach(std::string attachment_id, Done<absl::Status> done);
  // Writes this rank's shard of the state after step `step` (the last step taken) and, once
  // every rank has (a barrier), commits the checkpoint. Collective: every rank calls it.
  void SaveCheckpoint(std::string attachment_id, int64_t step, Done<absl::StatusOr<SavedCheckpoint>> done);
  // Loads a committed checkpoint ("" = the latest), written with any world size: optimizer
  // state and parameters; the next step must be numbered above the checkpoint's.
  // Collective.
  void LoadCheckpoint(std::string attachment_id, std::string manifest_path,
                      Done<absl::StatusOr<LoadedCheckpoint>> done);
  // Gathers the whole optimizer state into a new shared buffer (kept until this
  // attachment's next call). Collective: the other ranks take part from their own
  // ExportState or their next Step (Note [Step rounds]).
  void ExportState(std::string attachment_id, Done<absl::StatusOr<StateTransfer>> done);
  // Returns a zeroed shared buffer of the state layout for the trainer to fill, then
  // ImportState. Not collective.
  void ReserveStateBuffer(std::string attachment_id, Done<absl::StatusOr<StateTransfer>> done);
  // Replaces this rank's optimizer state with its part of the reserved buffer, the state
  // after step `step`; the next step must be numbered above it. Not collective: every
  // rank's trainer imports the same state. Releases the buffer.
  void ImportState(std::string attachment_id, int64_t step, Done<absl::Status> done);

  // Fails the job: aborts the communicator (a collective in flight returns) and fails every
  // queued and later call with `reason`. Thread-safe; the first reason wins.
  void Abort(absl::Status reason);
  // Votes, in every later step, that the job checkpoint and stop (Note [Stop requests] in
  // runtime/service/coordinator.h): once any rank voted in a step, every rank saves the
  // checkpoint of that step and answers every later Step with StepOutcome::stopped.
  // Thread-safe.
  void RequestStop();
  // Returns the abort reason, or OK.
  absl::Status aborted() const;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }

 private:
  struct Attachment;
  RankCore(RankCoreOptions options, std::unique_ptr<comm::Communicator> comm,
           Agreement agreement, StepObserver observer, CheckpointHooks checkpoints);
  absl::Status CheckEngine(const std::string& id) const;  // worker thread only
  void Enqueue(absl::AnyInvocable<void(absl::Status aborted)> task);
  void WorkerLoop();
  absl::Status CheckAttachment(const std::string& id) const;  // worker thread only
  // Replaces the attachment's state buffer with a new zeroed one; worker thread only.
  absl::StatusOr<StateTransfer> StateBufferOnWorker();
  // Saves the attached engine's state after `step` (the last step taken); a second save of
  // the same step returns the first. Worker thread only; collective.
  absl::StatusOr<SavedCheckpoint> SaveOnWorker(int64_t step);
  // Joins the engine's round of `kind` refusing this rank's call with `reason`, so that
  // every rank fails that call at once (Note [Step rounds]); returns `reason` or the
  // round's failure, and fails the job when the round's collective failed. Worker thread
  // only, with an engine.
  absl::Status Refuse(RoundKind kind, int64_t step, absl::Status reason);

  const RankCoreOptions options_;
  std::unique_ptr<comm::Communicator> comm_;
  Agreement agreement_;
  StepObserver observer_;
  CheckpointHooks checkpoints_;

  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void(absl::Status)>> queue_ ABSL_GUARDED_BY(mu_);
  absl::Status abort_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;

  // Worker-thread state.
  std::unique_ptr<Attachment> attachment_;
  int64_t attach_count_ = 0;
  std::thread worker_;
};

}  // namespace came::rankd

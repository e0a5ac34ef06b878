// CoordinatorClient: a C++ client of the coordinator (came.v1.Coordinator) for rankd and
// tools. It speaks the plain types of coordinator_types.h; every call has a deadline
// (options.rpc_timeout, or the wait plus kWaitSlack for calls that wait, so the server's
// own DEADLINE_EXCEEDED, which names what was missing, arrives first). Thread-safe.
//
// HeartbeatThread renews a rank's lease in the background and reports, once, when the job
// failed or the coordinator stayed unreachable for a whole lease.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "came/v1/coordinator.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "runtime/service/coordinator_types.h"

namespace came::service {

struct CoordinatorClientOptions {
  std::string target;  // "host:port"
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: insecure
  std::string token;                                      // the job's shared secret
  absl::Duration rpc_timeout = absl::Seconds(30);         // calls that do not wait
  // For TLS: the name the server certificate is checked against ("" = the target's host).
  std::string tls_server_name;
};

class CoordinatorClient {
 public:
  // The extra deadline a waiting call gets beyond its wait.
  static constexpr absl::Duration kWaitSlack = absl::Seconds(5);

  // Creates the channel (it connects lazily). InvalidArgument for an empty target or token.
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(
      CoordinatorClientOptions options);

  absl::StatusOr<JoinResult> Join(const JoinRequest& request);
  absl::StatusOr<HeartbeatResult> Heartbeat(int rank, int64_t step);

  absl::Status StoreSet(std::string_view key, std::string_view value);
  // Waits up to `wait` for the key (zero: does not wait).
  absl::StatusOr<std::string> StoreGet(std::string_view key, absl::Duration wait);
  absl::StatusOr<int64_t> StoreAdd(std::string_view key, int64_t delta);

  absl::Status Barrier(std::string_view name, int rank, absl::Duration timeout);
  absl::Status SubmitManifest(int rank, const ManifestDigest& manifest,
                              absl::Duration timeout);

  absl::StatusOr<CheckpointInfo> BeginCheckpoint(int rank, int64_t step);
  absl::Status ReportShard(const ShardReport& report);
  // Returns the committed checkpoint (its manifest_path set).
  absl::StatusOr<CheckpointInfo> CommitCheckpoint(std::string_view checkpoint_id, int rank);
  // Returns nullopt when no checkpoint is committed.
  absl::StatusOr<std::optional<CheckpointInfo>> LatestCheckpoint();

  absl::StatusOr<JobStatus> GetJobStatus();
  absl::StatusOr<JobState> Finish(int rank);
  absl::Status Fail(int rank, std::string_view reason);

 private:
  CoordinatorClient(CoordinatorClientOptions options, std::shared_ptr<grpc::Channel> channel);
  // Prepares a call context: the token and a deadline `timeout` from now.
  void Prepare(grpc::ClientContext& ctx, absl::Duration timeout) const;

  const CoordinatorClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

class HeartbeatThread {
 public:
  // Called once: Aborted with the reason when the job failed, Unavailable when no heartbeat
  // succeeded for a whole lease. Not called when the job finishes.
  using AbortCallback = absl::AnyInvocable<void(absl::Status)>;
  // Called once, on the heartbeat thread, when an answer says the job was asked to stop
  // (Note [Stop requests] in coordinator.h).
  using StopCallback = absl::AnyInvocable<void()>;

  // Starts heartbeats for rank every `interval` (typically the lease / 3). The client is not
  // owned and must outlive the thread.
  HeartbeatThread(CoordinatorClient* client, int rank, absl::Duration interval,
                  absl::Duration lease, AbortCallback on_abort, StopCallback on_stop = nullptr);
  ~HeartbeatThread();  // stops
  HeartbeatThread(const HeartbeatThread&) = delete;
  HeartbeatThread& operator=(const HeartbeatThread&) = delete;

  // Sets the step reported by the next heartbeats.
  void SetStep(int64_t step);
  // Returns the job state of the last successful heartbeat.
  JobState state();
  // Stops the thread and joins it (at most one heartbeat call later).
  void Stop();

 private:
  void Run();

  CoordinatorClient* const client_;
  const int rank_;
  const absl::Duration interval_;
  const absl::Duration lease_;
  AbortCallback on_abort_;
  StopCallback on_stop_;  // heartbeat thread only
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t step_ ABSL_GUARDED_BY(mu_) = -1;
  JobState state_ ABSL_GUARDED_BY(mu_) = JobState::kForming;
  std::thread thread_;
};

}  // namespace came::service

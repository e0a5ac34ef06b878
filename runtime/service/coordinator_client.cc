#include "runtime/service/coordinator_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/channel_arguments.h"
#include "runtime/service/auth.h"
#include "runtime/service/grpc_status.h"
#include "runtime/service/limits.h"
#include "runtime/service/proto_convert.h"

namespace came::service {

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    CoordinatorClientOptions options) {
  if (options.target.empty()) return absl::InvalidArgumentError("no coordinator address");
  if (options.token.empty()) return absl::InvalidArgumentError("no token");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessageBytes));
  args.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto credentials =
      options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  auto channel = grpc::CreateCustomChannel(options.target, credentials, args);
  return std::unique_ptr<CoordinatorClient>(
      new CoordinatorClient(std::move(options), std::move(channel)));
}

CoordinatorClient::CoordinatorClient(CoordinatorClientOptions options,
                                     std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      stub_(v1::Coordinator::NewStub(channel_)) {}

void CoordinatorClient::Prepare(grpc::ClientContext& ctx, absl::Duration timeout) const {
  AddBearerToken(ctx, options_.token);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

absl::StatusOr<JoinResult> CoordinatorClient::Join(const JoinRequest& request) {
  v1::JoinRequest req;
  req.set_requested_rank(request.requested_rank);
  req.set_world_size(request.world_size);
  for (const std::string& e : request.endpoints) req.add_endpoints(e);
  req.set_host(request.host);
  req.set_generation(request.generation);
  v1::JoinResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->Join(&ctx, req, &resp)); !s.ok()) return s;
  return JoinResult{resp.rank(), resp.world_size(), FromProto(resp.config()), resp.job_id()};
}

absl::StatusOr<HeartbeatResult> CoordinatorClient::Heartbeat(int rank, int64_t step) {
  v1::HeartbeatRequest req;
  req.set_rank(rank);
  req.set_step(step);
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->Heartbeat(&ctx, req, &resp)); !s.ok()) return s;
  return HeartbeatResult{FromProto(resp.state()), resp.abort_reason(),
                         absl::Milliseconds(resp.lease_ms()), resp.stop_requested()};
}

absl::Status CoordinatorClient::StoreSet(std::string_view key, std::string_view value) {
  v1::StoreSetRequest req;
  req.set_key(std::string(key));
  req.set_value(std::string(value));
  v1::StoreSetResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  return FromGrpcStatus(stub_->StoreSet(&ctx, req, &resp));
}

absl::StatusOr<std::string> CoordinatorClient::StoreGet(std::string_view key,
                                                        absl::Duration wait) {
  v1::StoreGetRequest req;
  req.set_key(std::string(key));
  req.set_wait_ms(std::max<int64_t>(0, absl::ToInt64Milliseconds(wait)));
  v1::StoreGetResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, std::max(wait, absl::ZeroDuration()) + kWaitSlack);
  if (absl::Status s = FromGrpcStatus(stub_->StoreGet(&ctx, req, &resp)); !s.ok()) return s;
  return std::move(*resp.mutable_value());
}

absl::StatusOr<int64_t> CoordinatorClient::StoreAdd(std::string_view key, int64_t delta) {
  v1::StoreAddRequest req;
  req.set_key(std::string(key));
  req.set_delta(delta);
  v1::StoreAddResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->StoreAdd(&ctx, req, &resp)); !s.ok()) return s;
  return resp.value();
}

absl::Status CoordinatorClient::Barrier(std::string_view name, int rank,
                                        absl::Duration timeout) {
  v1::BarrierRequest req;
  req.set_name(std::string(name));
  req.set_rank(rank);
  req.set_timeout_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
  v1::BarrierResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, timeout + kWaitSlack);
  return FromGrpcStatus(stub_->Barrier(&ctx, req, &resp));
}

absl::Status CoordinatorClient::SubmitManifest(int rank, const ManifestDigest& manifest,
                                               absl::Duration timeout) {
  v1::SubmitManifestRequest req;
  req.set_rank(rank);
  req.set_digest(manifest.digest);
  req.set_tensor_count(manifest.tensor_count);
  req.set_timeout_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
  v1::SubmitManifestResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, timeout + kWaitSlack);
  return FromGrpcStatus(stub_->SubmitManifest(&ctx, req, &resp));
}

absl::StatusOr<CheckpointInfo> CoordinatorClient::BeginCheckpoint(int rank, int64_t step) {
  v1::BeginCheckpointRequest req;
  req.set_rank(rank);
  req.set_step(step);
  v1::BeginCheckpointResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->BeginCheckpoint(&ctx, req, &resp)); !s.ok()) {
    return s;
  }
  return CheckpointInfo{resp.checkpoint_id(), step, resp.directory(), ""};
}

absl::Status CoordinatorClient::ReportShard(const ShardReport& report) {
  v1::ReportShardRequest req;
  req.set_checkpoint_id(report.checkpoint_id);
  req.set_rank(report.rank);
  req.set_file(report.file);
  req.set_bytes(report.bytes);
  req.set_sha256(report.sha256);
  v1::ReportShardResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  return FromGrpcStatus(stub_->ReportShard(&ctx, req, &resp));
}

absl::StatusOr<CheckpointInfo> CoordinatorClient::CommitCheckpoint(
    std::string_view checkpoint_id, int rank) {
  v1::CommitCheckpointRequest req;
  req.set_checkpoint_id(std::string(checkpoint_id));
  req.set_rank(rank);
  v1::CommitCheckpointResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->CommitCheckpoint(&ctx, req, &resp)); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::optional<CheckpointInfo>> latest = LatestCheckpoint();
  if (latest.ok() && latest->has_value() && (*latest)->id == checkpoint_id) return **latest;
  return CheckpointInfo{std::string(checkpoint_id), 0, "", resp.manifest_path()};
}

absl::StatusOr<std::optional<CheckpointInfo>> CoordinatorClient::LatestCheckpoint() {
  v1::LatestCheckpointRequest req;
  v1::LatestCheckpointResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->LatestCheckpoint(&ctx, req, &resp)); !s.ok()) {
    return s;
  }
  if (!resp.found()) return std::optional<CheckpointInfo>();
  return std::optional<CheckpointInfo>(FromProto(resp.checkpoint()));
}

absl::StatusOr<JobStatus> CoordinatorClient::GetJobStatus() {
  v1::JobStatusRequest req;
  v1::JobStatusResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->JobStatus(&ctx, req, &resp)); !s.ok()) return s;
  return FromProto(resp);
}

absl::StatusOr<JobState> CoordinatorClient::Finish(int rank) {
  v1::FinishRequest req;
  req.set_rank(rank);
  v1::FinishResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  if (absl::Status s = FromGrpcStatus(stub_->Finish(&ctx, req, &resp)); !s.ok()) return s;
  return FromProto(resp.state());
}

absl::Status CoordinatorClient::Fail(int rank, std::string_view reason) {
  v1::FailRequest req;
  req.set_rank(rank);
  req.set_reason(std::string(reason));
  v1::FailResponse resp;
  grpc::ClientContext ctx;
  Prepare(ctx, options_.rpc_timeout);
  return FromGrpcStatus(stub_->Fail(&ctx, req, &resp));
}

HeartbeatThread::HeartbeatThread(CoordinatorClient* client, int rank, absl::Duration interval,
                                 absl::Duration lease, AbortCallback on_abort,
                                 StopCallback on_stop)
    : client_(client),
      rank_(rank),
      interval_(interval),
      lease_(lease),
      on_abort_(std::move(on_abort)),
      on_stop_(std::move(on_stop)),
      thread_([this] { Run(); }) {}

HeartbeatThread::~HeartbeatThread() { Stop(); }

void HeartbeatThread::SetStep(int64_t step) {
  absl::MutexLock lock(&mu_);
  step_ = step;
}

JobState HeartbeatThread::state() {
  absl::MutexLock lock(&mu_);
  return state_;
}

void HeartbeatThread::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void HeartbeatThread::Run() {
  absl::Time last_ok = absl::Now();
  absl::Status abort;
  while (true) {
    int64_t step;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      step = step_;
    }
    absl::StatusOr<HeartbeatResult> hb = client_->Heartbeat(rank_, step);
    if (hb.ok()) {
      last_ok = absl::Now();
      if (hb->stop_requested && on_stop_) {
        on_stop_();
        on_stop_ = nullptr;  // once
      }
      absl::MutexLock lock(&mu_);
      state_ = hb->state;
      if (hb->state == JobState::kFinished) return;
      if (hb->state == JobState::kFailed) {
        abort = absl::AbortedError(absl::StrCat("the job failed: ", hb->abort_reason));
      }
    } else if (absl::Now() - last_ok > lease_) {
      abort = absl::UnavailableError(
          absl::StrCat("no heartbeat reached the coordinator for ",
                       absl::FormatDuration(absl::Now() - last_ok), ": ",
                       hb.status().ToString()));
    }
    if (!abort.ok()) {
      if (on_abort_) on_abort_(abort);
      return;
    }
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_), interval_);
  }
}

}  // namespace came::service

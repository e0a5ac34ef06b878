#include "runtime/service/coordinator_service.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "runtime/service/auth.h"
#include "runtime/service/grpc_status.h"
#include "runtime/service/limits.h"
#include "runtime/service/proto_convert.h"

namespace came::service {
namespace {

absl::Status Authenticate(const Coordinator& core, std::string_view token) {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "missing token: send gRPC metadata 'authorization: Bearer <token>'");
  }
  return core.Authenticate(token);
}

// Returns when a wait of `wait_ms` ends: the earlier of now + wait and the call's deadline.
absl::StatusOr<absl::Time> WaitDeadline(const grpc::CallbackServerContext& ctx,
                                        int64_t wait_ms, const char* field) {
  if (wait_ms < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("%s %d is negative", field, wait_ms));
  }
  absl::Time deadline = ctx.deadline() == std::chrono::system_clock::time_point::max()
                            ? absl::InfiniteFuture()
                            : absl::FromChrono(ctx.deadline());
  if (wait_ms > 0) {
    deadline = std::min(deadline, absl::Now() + absl::Milliseconds(std::min<int64_t>(
                                                    wait_ms, kMaxWaitSeconds * 1000)));
  }
  return deadline;
}

}  // namespace

absl::AnyInvocable<void(absl::Status)> CoordinatorService::Finisher(
    grpc::CallbackServerContext* ctx, const char* method) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  return [reactor, method, metrics = metrics_](absl::Status status) {
    if (metrics != nullptr) metrics->CountRpc(method, status.code());
    reactor->Finish(ToGrpcStatus(status));
  };
}

template <typename Fn>
grpc::ServerUnaryReactor* CoordinatorService::Async(grpc::CallbackServerContext* ctx,
                                                    const char* method, Fn fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto finish = Finisher(ctx, method);
  if (absl::Status s = Authenticate(*core_, TokenFromMetadata(*ctx)); !s.ok()) {
    finish(s);
  } else {
    fn(std::move(finish));
  }
  return reactor;
}

template <typename Fn>
grpc::ServerUnaryReactor* CoordinatorService::Unary(grpc::CallbackServerContext* ctx,
                                                    const char* method, Fn fn) {
  return Async(ctx, method, [&](auto finish) { finish(fn()); });
}

grpc::ServerUnaryReactor* CoordinatorService::Join(grpc::CallbackServerContext* ctx,
                                                   const v1::JoinRequest* req,
                                                   v1::JoinResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto finish = Finisher(ctx, "Join");
  std::string token = TokenFromMetadata(*ctx);
  if (token.empty()) token = req->token();
  if (absl::Status s = Authenticate(*core_, token); !s.ok()) {
    finish(s);
    return reactor;
  }
  JoinRequest join;
  join.requested_rank = req->requested_rank();
  join.world_size = req->world_size();
  join.endpoints.assign(req->endpoints().begin(), req->endpoints().end());
  join.host = req->host();
  join.generation = req->generation();
  absl::StatusOr<JoinResult> result = core_->Join(join);
  if (result.ok()) {
    resp->set_rank(result->rank);
    resp->set_world_size(result->world_size);
    ToProto(result->config, resp->mutable_config());
    resp->set_job_id(result->job_id);
  }
  finish(result.status());
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                        const v1::HeartbeatRequest* req,
                                                        v1::HeartbeatResponse* resp) {
  return Unary(ctx, "Heartbeat", [&]() -> absl::Status {
    absl::StatusOr<HeartbeatResult> r = core_->Heartbeat(req->rank(), req->step());
    if (!r.ok()) return r.status();
    resp->set_state(ToProto(r->state));
    resp->set_abort_reason(r->abort_reason);
    resp->set_lease_ms(absl::ToInt64Milliseconds(r->lease));
    resp->set_stop_requested(r->stop_requested);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::StoreSet(grpc::CallbackServerContext* ctx,
                                                       const v1::StoreSetRequest* req,
                                                       v1::StoreSetResponse*) {
  return Unary(ctx, "StoreSet", [&] { return core_->StoreSet(req->key(), req->value()); });
}

grpc::ServerUnaryReactor* CoordinatorService::StoreGet(grpc::CallbackServerContext* ctx,
                                                       const v1::StoreGetRequest* req,
                                                       v1::StoreGetResponse* resp) {
  return Async(ctx, "StoreGet", [&](auto finish) {
    absl::StatusOr<absl::Time> deadline = WaitDeadline(*ctx, req->wait_ms(), "wait_ms");
    if (!deadline.ok()) return finish(deadline.status());
    if (req->wait_ms() == 0) deadline = absl::Now();
    core_->StoreGet(req->key(), *deadline,
                    [resp, finish = std::move(finish)](absl::StatusOr<std::string> v) mutable {
                      if (v.ok()) resp->set_value(std::move(*v));
                      finish(v.status());
                    });
  });
}

grpc::ServerUnaryReactor* CoordinatorService::StoreAdd(grpc::CallbackServerContext* ctx,
                                                       const v1::StoreAddRequest* req,
                                                       v1::StoreAddResponse* resp) {
  return Unary(ctx, "StoreAdd", [&]() -> absl::Status {
    absl::StatusOr<int64_t> v = core_->StoreAdd(req->key(), req->delta());
    if (v.ok()) resp->set_value(*v);
    return v.status();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Barrier(grpc::CallbackServerContext* ctx,
                                                      const v1::BarrierRequest* req,
                                                      v1::BarrierResponse*) {
  return Async(ctx, "Barrier", [&](auto finish) {
    absl::StatusOr<absl::Time> deadline = WaitDeadline(*ctx, req->timeout_ms(), "timeout_ms");
    if (!deadline.ok()) return finish(deadline.status());
    core_->Barrier(req->name(), req->rank(), *deadline, std::move(finish));
  });
}

grpc::ServerUnaryReactor* CoordinatorService::SubmitManifest(
    grpc::CallbackServerContext* ctx, const v1::SubmitManifestRequest* req,
    v1::SubmitManifestResponse*) {
  return Async(ctx, "SubmitManifest", [&](auto finish) {
    absl::StatusOr<absl::Time> deadline = WaitDeadline(*ctx, req->timeout_ms(), "timeout_ms");
    if (!deadline.ok()) return finish(deadline.status());
    core_->SubmitManifest(req->rank(), ManifestDigest{req->digest(), req->tensor_count()},
                          *deadline, std::move(finish));
  });
}

grpc::ServerUnaryReactor* CoordinatorService::BeginCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::BeginCheckpointRequest* req,
    v1::BeginCheckpointResponse* resp) {
  return Unary(ctx, "BeginCheckpoint", [&]() -> absl::Status {
    absl::StatusOr<CheckpointInfo> info = core_->BeginCheckpoint(req->rank(), req->step());
    if (!info.ok()) return info.status();
    resp->set_checkpoint_id(info->id);
    resp->set_directory(info->directory);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::ReportShard(grpc::CallbackServerContext* ctx,
                                                          const v1::ReportShardRequest* req,
                                                          v1::ReportShardResponse*) {
  return Unary(ctx, "ReportShard", [&] {
    return core_->ReportShard(
        ShardReport{req->checkpoint_id(), req->rank(), req->file(), req->bytes(), req->sha256()});
  });
}

grpc::ServerUnaryReactor* CoordinatorService::CommitCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::CommitCheckpointRequest* req,
    v1::CommitCheckpointResponse* resp) {
  return Unary(ctx, "CommitCheckpoint", [&]() -> absl::Status {
    absl::StatusOr<CheckpointInfo> info =
        core_->CommitCheckpoint(req->checkpoint_id(), req->rank());
    if (info.ok()) resp->set_manifest_path(info->manifest_path);
    return info.status();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::LatestCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::LatestCheckpointRequest*,
    v1::LatestCheckpointResponse* resp) {
  return Unary(ctx, "LatestCheckpoint", [&] {
    std::optional<CheckpointInfo> info = core_->LatestCheckpoint();
    resp->set_found(info.has_value());
    if (info) ToProto(*info, resp->mutable_checkpoint());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::JobStatus(grpc::CallbackServerContext* ctx,
                                                        const v1::JobStatusRequest*,
                                                        v1::JobStatusResponse* resp) {
  return Unary(ctx, "JobStatus", [&] {
    ToProto(core_->Status(), resp);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Finish(grpc::CallbackServerContext* ctx,
                                                     const v1::FinishRequest* req,
                                                     v1::FinishResponse* resp) {
  return Unary(ctx, "Finish", [&]() -> absl::Status {
    absl::StatusOr<JobState> state = core_->Finish(req->rank());
    if (state.ok()) resp->set_state(ToProto(*state));
    return state.status();
  });
}

grpc::ServerUnaryReactor* CoordinatorService::Fail(grpc::CallbackServerContext* ctx,
                                                   const v1::FailRequest* req,
                                                   v1::FailResponse*) {
  return Unary(ctx, "Fail", [&] { return core_->Fail(req->rank(), req->reason()); });
}

}  // namespace came::service

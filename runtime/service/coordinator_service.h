// CoordinatorService: the gRPC adapter of the coordinator (came.v1.Coordinator). Each
// handler checks the token, turns the request into a core call and the result into the
// response: proto in, plain C++ call, proto out. It uses gRPC's callback API, so a call
// that waits (StoreGet, Barrier, SubmitManifest) holds no thread: the handler registers
// the wait with the core and returns, and the core finishes the reactor from the thread
// that completes the wait (Note [Waits without threads] in coordinator.h). A wait ends at
// the earlier of the request's wait and the call's deadline.
//
// Auth: metadata "authorization: Bearer <token>" on every call (Join may carry the token
// in its request instead); a missing or wrong token gets UNAUTHENTICATED.
//
// The core and the metrics are not owned and must outlive the server; every wait must be
// completed (Coordinator::Shutdown) before the server shuts down.
#pragma once

#include "came/v1/coordinator.grpc.pb.h"
#include "runtime/service/coordinator.h"
#include "runtime/service/coordinator_metrics.h"

namespace came::service {

class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  // metrics may be null (no metrics).
  CoordinatorService(Coordinator* core, CoordinatorMetrics* metrics)
      : core_(core), metrics_(metrics) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* ctx, const v1::JoinRequest* req,
                                 v1::JoinResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* StoreSet(grpc::CallbackServerContext* ctx,
                                     const v1::StoreSetRequest* req,
                                     v1::StoreSetResponse* resp) override;
  grpc::ServerUnaryReactor* StoreGet(grpc::CallbackServerContext* ctx,
                                     const v1::StoreGetRequest* req,
                                     v1::StoreGetResponse* resp) override;
  grpc::ServerUnaryReactor* StoreAdd(grpc::CallbackServerContext* ctx,
                                     const v1::StoreAddRequest* req,
                                     v1::StoreAddResponse* resp) override;
  grpc::ServerUnaryReactor* Barrier(grpc::CallbackServerContext* ctx,
                                    const v1::BarrierRequest* req,
                                    v1::BarrierResponse* resp) override;
  grpc::ServerUnaryReactor* SubmitManifest(grpc::CallbackServerContext* ctx,
                                           const v1::SubmitManifestRequest* req,
                                           v1::SubmitManifestResponse* resp) override;
  grpc::ServerUnaryReactor* BeginCheckpoint(grpc::CallbackServerContext* ctx,
                                            const v1::BeginCheckpointRequest* req,
                                            v1::BeginCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* ReportShard(grpc::CallbackServerContext* ctx,
                                        const v1::ReportShardRequest* req,
                                        v1::ReportShardResponse* resp) override;
  grpc::ServerUnaryReactor* CommitCheckpoint(grpc::CallbackServerContext* ctx,
                                             const v1::CommitCheckpointRequest* req,
                                             v1::CommitCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* LatestCheckpoint(grpc::CallbackServerContext* ctx,
                                             const v1::LatestCheckpointRequest* req,
                                             v1::LatestCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* JobStatus(grpc::CallbackServerContext* ctx,
                                      const v1::JobStatusRequest* req,
                                      v1::JobStatusResponse* resp) override;
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx,
                                   const v1::FinishRequest* req,
                                   v1::FinishResponse* resp) override;
  grpc::ServerUnaryReactor* Fail(grpc::CallbackServerContext* ctx, const v1::FailRequest* req,
                                 v1::FailResponse* resp) override;

 private:
  // Returns a callback that finishes the call with a status (and counts it); call it once.
  absl::AnyInvocable<void(absl::Status)> Finisher(grpc::CallbackServerContext* ctx,
                                                  const char* method);
  // Checks the token, then finishes the call with fn's status.
  template <typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, const char* method, Fn fn);
  // Checks the token, then hands fn a Finisher that fn (or a wait it starts) calls later.
  template <typename Fn>
  grpc::ServerUnaryReactor* Async(grpc::CallbackServerContext* ctx, const char* method, Fn fn);

  Coordinator* const core_;
  CoordinatorMetrics* const metrics_;
};

}  // namespace came::service

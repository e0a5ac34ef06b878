// RankService: the gRPC adapter of RankCore (came.v1.Rank). Proto in, plain C++ call, proto
// out; it checks the bearer token and converts statuses, nothing else. It uses gRPC's
// callback API: a handler returns at once and its reactor is finished from RankCore's worker
// thread, so no gRPC thread waits for a collective.
#pragma once

#include <string>

#include "came/v1/rank.grpc.pb.h"
#include "runtime/rankd/rank_core.h"

namespace came::rankd {

class RankService final : public v1::Rank::CallbackService {
 public:
  // Neither is owned; both must outlive the service.
  RankService(RankCore* core, std::string token) : core_(core), token_(std::move(token)) {}

  grpc::ServerUnaryReactor* Attach(grpc::CallbackServerContext* ctx, const v1::AttachRequest* req,
                                   v1::AttachResponse* resp) override;
  grpc::ServerUnaryReactor* SyncParameters(grpc::CallbackServerContext* ctx,
                                           const v1::SyncParametersRequest* req,
                                           v1::SyncParametersResponse* resp) override;
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* ctx, const v1::StepRequest* req,
                                 v1::StepResponse* resp) override;
  grpc::ServerUnaryReactor* SaveCheckpoint(grpc::CallbackServerContext* ctx,
                                           const v1::SaveCheckpointRequest* req,
                                           v1::SaveCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* LoadCheckpoint(grpc::CallbackServerContext* ctx,
                                           const v1::LoadCheckpointRequest* req,
                                           v1::LoadCheckpointResponse* resp) override;
  grpc::ServerUnaryReactor* Detach(grpc::CallbackServerContext* ctx, const v1::DetachRequest* req,
                                   v1::DetachResponse* resp) override;
  grpc::ServerUnaryReactor* ExportState(grpc::CallbackServerContext* ctx,
                                        const v1::ExportStateRequest* req,
                                        v1::StateBuffer* resp) override;
  grpc::ServerUnaryReactor* ReserveStateBuffer(grpc::CallbackServerContext* ctx,
                                               const v1::ReserveStateBufferRequest* req,
                                               v1::StateBuffer* resp) override;
  grpc::ServerUnaryReactor* ImportState(grpc::CallbackServerContext* ctx,
                                        const v1::ImportStateRequest* req,
                                        v1::ImportStateResponse* resp) override;

 private:
  RankCore* core_;
  std::string token_;
};

}  // namespace came::rankd

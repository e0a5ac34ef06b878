#include "runtime/rankd/rank_service.h"

#include <filesystem>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "runtime/rankd/rank_proto.h"
#include "runtime/service/auth.h"
#include "runtime/service/grpc_status.h"
#include "runtime/service/limits.h"

namespace came::rankd {
namespace {

void StateBytesToProto(const StateBytes& b, v1::OptimizerStateBytes* out) {
  out->set_master(b.master);
  out->set_momentum(b.momentum);
  out->set_second_moment(b.second_moment);
  out->set_factored(b.factored);
  out->set_total(b.total());
}

// Runs `fn` unless the call is unauthenticated; finishes the reactor with the error then.
template <typename Fn>
grpc::ServerUnaryReactor* Handle(grpc::CallbackServerContext* ctx, const std::string& token,
                                 Fn&& fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (absl::Status s = service::CheckBearerToken(*ctx, token); !s.ok()) {
    reactor->Finish(service::ToGrpcStatus(s));
    return reactor;
  }
  fn(reactor);
  return reactor;
}

void StateTransferToProto(const StateTransfer& t, v1::StateBuffer* out) {
  v1::SharedBuffer* b = out->mutable_buffer();
  b->set_name(t.buffer_name);
  b->set_bytes(static_cast<int64_t>(t.buffer_bytes));
  b->set_dtype(v1::DTYPE_FLOAT32);
  b->set_device(-1);
  out->set_numel(t.layout.size);
  out->set_step(t.step);
  out->set_exp_avg_offset(t.layout.exp_avg);
  out->set_exp_avg_sq_offset(t.layout.exp_avg_sq);
  for (int64_t f : t.layout.factored) out->add_factored_offsets(f);
}

}  // namespace

grpc::ServerUnaryReactor* RankService::Attach(grpc::CallbackServerContext* ctx,
                                              const v1::AttachRequest* req,
                                              v1::AttachResponse* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    auto manifest = ManifestFromProto(*req, CameHyper{});
    if (!manifest.ok()) return reactor->Finish(service::ToGrpcStatus(manifest.status()));
    core_->Attach(*std::move(manifest), [reactor, resp](absl::StatusOr<Layout> layout) {
      if (!layout.ok()) return reactor->Finish(service::ToGrpcStatus(layout.status()));
      const ShardPlan& plan = layout->plan;
      resp->set_attachment_id(layout->attachment_id);
      resp->set_rank(layout->rank);
      resp->set_world_size(layout->world_size);
      resp->set_plan_version(1);
      resp->set_alignment(plan.alignment);
      resp->set_chunk_size(plan.chunk_size);
      resp->set_padded_size(plan.padded_size);
      resp->set_used_size(plan.used_size);
      for (const auto& t : plan.tensors) {
        v1::TensorLayout* l = resp->add_tensors();
        l->set_name(t.spec.name);
        l->set_offset(t.offset);
        l->set_numel(t.geom.numel);
        l->set_first_rank(t.first_rank);
        l->set_last_rank(t.last_rank);
      }
      for (auto [buffer, name, handle] :
           {std::tuple{resp->mutable_params(), &layout->params_name, &layout->params_ipc_handle},
            std::tuple{resp->mutable_grads(), &layout->grads_name, &layout->grads_ipc_handle}}) {
        buffer->set_name(*name);
        buffer->set_cuda_ipc_handle(*handle);
        buffer->set_bytes(static_cast<int64_t>(layout->buffer_bytes));
        buffer->set_dtype(DTypeToProto(plan.dtype));
        buffer->set_device(layout->device);
      }
      resp->set_manifest_digest(layout->digest);
      reactor->Finish(grpc::Status::OK);
    });
  });
}

grpc::ServerUnaryReactor* RankService::SyncParameters(grpc::CallbackServerContext* ctx,
                                                      const v1::SyncParametersRequest* req,
                                                      v1::SyncParametersResponse* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->SyncParameters(req->attachment_id(),
                          [reactor, resp](absl::StatusOr<StateBytes> bytes) {
                            if (bytes.ok()) StateBytesToProto(*bytes, resp->mutable_state_bytes());
                            reactor->Finish(service::ToGrpcStatus(bytes.status()));
                          });
  });
}

grpc::ServerUnaryReactor* RankService::Step(grpc::CallbackServerContext* ctx,
                                            const v1::StepRequest* req, v1::StepResponse* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    StepCall call;
    call.attachment_id = req->attachment_id();
    call.step = req->step();
    bool any_wd = false, any_hyper = false;
    for (const v1::GroupStepScalars& g : req->groups()) {
      call.lr.push_back(g.lr());
      any_wd |= g.has_weight_decay();
      any_hyper |= g.has_hyperparameters();
    }
    if (any_hyper)
      for (const v1::GroupStepScalars& g : req->groups())
        call.hyper.push_back(HyperOverrideFromProto(g.hyperparameters()));
    if (any_wd) {
      for (const v1::GroupStepScalars& g : req->groups()) {
        if (!g.has_weight_decay())
          return reactor->Finish(service::ToGrpcStatus(absl::InvalidArgumentError(
              "set has_weight_decay on every group or on none")));
        call.weight_decay.push_back(g.weight_decay());
      }
    }
    call.max_grad_norm = req->max_grad_norm();
    if (req->grad_scale() != 0 && req->grad_scale() != 1)
      return reactor->Finish(service::ToGrpcStatus(absl::UnimplementedError(
          "grad_scale (loss scaling) is not supported yet: unscale the gradients in the trainer")));
    const int64_t step = call.step;
    core_->Step(std::move(call), [reactor, resp, step](absl::StatusOr<StepOutcome> out) {
      if (!out.ok()) return reactor->Finish(service::ToGrpcStatus(out.status()));
      if (out->stopped) {
        resp->set_stopped(true);
        resp->set_step(out->stopped_after);
        return reactor->Finish(grpc::Status::OK);
      }
      const EngineStepStats& s = out->stats;
      resp->set_step(step);
      resp->set_grad_norm(s.grad_norm);
      resp->set_skipped(s.skipped);
      resp->set_grad_scale(s.grad_scale);
      resp->mutable_clip()->set_min_scale(s.min_clip_scale);
      v1::PhaseTimings* t = resp->mutable_timings();
      t->set_reduce_scatter_seconds(s.seconds.reduce_scatter);
      t->set_statistics_all_reduce_seconds(s.seconds.stats_all_reduce);
      t->set_kernels_seconds(s.seconds.kernels);
      t->set_all_gather_seconds(s.seconds.all_gather);
      t->set_total_seconds(s.seconds.total);
      StateBytesToProto(out->state_bytes, resp->mutable_state_bytes());
      resp->set_bytes_sent(s.bytes_reduce_scatter + s.bytes_stats + s.bytes_all_gather);
      resp->set_checkpoint_error(out->checkpoint_error);
      reactor->Finish(grpc::Status::OK);
    });
  });
}

grpc::ServerUnaryReactor* RankService::SaveCheckpoint(grpc::CallbackServerContext* ctx,
                                                      const v1::SaveCheckpointRequest* req,
                                                      v1::SaveCheckpointResponse* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->SaveCheckpoint(req->attachment_id(), req->step(),
                          [reactor, resp](absl::StatusOr<SavedCheckpoint> saved) {
                            if (saved.ok()) {
                              resp->set_checkpoint_id(saved->id);
                              resp->set_manifest_path(saved->manifest_path);
                            }
                            reactor->Finish(service::ToGrpcStatus(saved.status()));
                          });
  });
}

grpc::ServerUnaryReactor* RankService::LoadCheckpoint(grpc::CallbackServerContext* ctx,
                                                      const v1::LoadCheckpointRequest* req,
                                                      v1::LoadCheckpointResponse* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    if (static_cast<int64_t>(req->manifest_path().size()) > service::kMaxPathBytes)
      return reactor->Finish(service::ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("manifest_path is longer than ", service::kMaxPathBytes, " bytes"))));
    core_->LoadCheckpoint(req->attachment_id(), req->manifest_path(),
                          [reactor, resp](absl::StatusOr<LoadedCheckpoint> loaded) {
                            if (loaded.ok()) {
                              resp->set_checkpoint_id(std::filesystem::path(loaded->manifest_path)
                                                          .parent_path()
                                                          .filename()
                                                          .string());
                              resp->set_step(loaded->step);
                              resp->set_saved_world_size(loaded->saved_world_size);
                            }
                            reactor->Finish(service::ToGrpcStatus(loaded.status()));
                          });
  });
}

grpc::ServerUnaryReactor* RankService::Detach(grpc::CallbackServerContext* ctx,
                                              const v1::DetachRequest* req, v1::DetachResponse*) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->Detach(req->attachment_id(), [reactor](absl::Status s) {
      reactor->Finish(service::ToGrpcStatus(s));
    });
  });
}

grpc::ServerUnaryReactor* RankService::ExportState(grpc::CallbackServerContext* ctx,
                                                   const v1::ExportStateRequest* req,
                                                   v1::StateBuffer* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->ExportState(req->attachment_id(), [reactor, resp](absl::StatusOr<StateTransfer> t) {
      if (t.ok()) StateTransferToProto(*t, resp);
      reactor->Finish(service::ToGrpcStatus(t.status()));
    });
  });
}

grpc::ServerUnaryReactor* RankService::ReserveStateBuffer(grpc::CallbackServerContext* ctx,
                                                          const v1::ReserveStateBufferRequest* req,
                                                          v1::StateBuffer* resp) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->ReserveStateBuffer(req->attachment_id(),
                              [reactor, resp](absl::StatusOr<StateTransfer> t) {
                                if (t.ok()) StateTransferToProto(*t, resp);
                                reactor->Finish(service::ToGrpcStatus(t.status()));
                              });
  });
}

grpc::ServerUnaryReactor* RankService::ImportState(grpc::CallbackServerContext* ctx,
                                                   const v1::ImportStateRequest* req,
                                                   v1::ImportStateResponse*) {
  return Handle(ctx, token_, [&](grpc::ServerUnaryReactor* reactor) {
    core_->ImportState(req->attachment_id(), req->step(), [reactor](absl::Status s) {
      reactor->Finish(service::ToGrpcStatus(s));
    });
  });
}

}  // namespace came::rankd

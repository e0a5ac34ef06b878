#include "runtime/rankd/rank_client.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "runtime/rankd/rank_proto.h"
#include "runtime/service/auth.h"
#include "runtime/service/grpc_status.h"
#include "runtime/service/limits.h"

namespace came::rankd {
namespace {

}  // namespace

RankClient::RankClient(RankClientOptions options) : options_(std::move(options)) {}
RankClient::~RankClient() {
  if (!attachment_id_.empty()) (void)Detach();
}

absl::StatusOr<std::unique_ptr<RankClient>> RankClient::Connect(RankClientOptions options) {
  if (options.address.empty()) return absl::InvalidArgumentError("no rankd address");
  if (options.token.empty()) return absl::InvalidArgumentError("no token");
  auto creds = options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(service::kMaxMessageBytes));
  args.SetMaxSendMessageSize(static_cast<int>(service::kMaxMessageBytes));
  std::unique_ptr<RankClient> c(new RankClient(std::move(options)));
  c->stub_ = v1::Rank::NewStub(grpc::CreateCustomChannel(c->options_.address, creds, args));
  return c;
}

absl::StatusOr<std::unique_ptr<RankClient>> RankClient::FromEnvironment() {
  const char* address = std::getenv("CAME_RANKD_ADDRESS");
  const char* token = std::getenv("CAME_TOKEN");
  if (address == nullptr || token == nullptr)
    return absl::FailedPreconditionError(
        "CAME_RANKD_ADDRESS and CAME_TOKEN are not set: run the trainer under came-launch");
  RankClientOptions o;
  o.address = address;
  o.token = token;
  return Connect(std::move(o));
}

std::unique_ptr<grpc::ClientContext> RankClient::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  service::AddBearerToken(*ctx, options_.token);
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  return ctx;
}

absl::Status RankClient::Attach(const Manifest& manifest) {
  if (!attachment_id_.empty()) return absl::FailedPreconditionError("already attached");
  v1::AttachRequest req = ManifestToProto(manifest);
  v1::AttachResponse resp;
  auto ctx = Context();
  if (grpc::Status s = stub_->Attach(ctx.get(), req, &resp); !s.ok())
    return service::FromGrpcStatus(s);
  if (resp.params().device() >= 0 || !resp.params().cuda_ipc_handle().empty())
    return absl::UnimplementedError(absl::StrCat(
        "rankd offered buffers in CUDA device ", resp.params().device(),
        "'s memory; the C++ rank client maps host shared memory only (start came-rankd "
        "without --device)"));
  auto params = SharedBuffer::Open(resp.params().name(), resp.params().bytes());
  if (!params.ok()) return params.status();
  auto grads = SharedBuffer::Open(resp.grads().name(), resp.grads().bytes());
  if (!grads.ok()) return grads.status();
  params_ = *std::move(params);
  grads_ = *std::move(grads);
  attachment_id_ = resp.attachment_id();
  rank_ = resp.rank();
  world_size_ = resp.world_size();
  dtype_ = manifest.tensors.empty() ? DType::kFloat32 : manifest.tensors[0].dtype;
  where_.clear();
  for (const v1::TensorLayout& l : resp.tensors()) where_[l.name()] = {l.offset(), l.numel()};
  return absl::OkStatus();
}

absl::Status RankClient::SyncParameters() {
  v1::SyncParametersRequest req;
  req.set_attachment_id(attachment_id_);
  v1::SyncParametersResponse resp;
  auto ctx = Context();
  return service::FromGrpcStatus(stub_->SyncParameters(ctx.get(), req, &resp));
}

absl::StatusOr<StepReply> RankClient::Step(int64_t step, const std::vector<double>& lr,
                                           double max_grad_norm) {
  v1::StepRequest req;
  req.set_attachment_id(attachment_id_);
  req.set_step(step);
  for (double v : lr) req.add_groups()->set_lr(v);
  req.set_max_grad_norm(max_grad_norm);
  v1::StepResponse resp;
  auto ctx = Context();
  if (grpc::Status s = stub_->Step(ctx.get(), req, &resp); !s.ok())
    return service::FromGrpcStatus(s);
  StepReply r;
  r.skipped = resp.skipped();
  r.grad_norm = resp.grad_norm();
  r.min_clip_scale = resp.clip().min_scale();
  r.seconds = resp.timings().total_seconds();
  r.kernel_seconds = resp.timings().kernels_seconds();
  r.state_bytes.master = resp.state_bytes().master();
  r.state_bytes.momentum = resp.state_bytes().momentum();
  r.state_bytes.second_moment = resp.state_bytes().second_moment();
  r.state_bytes.factored = resp.state_bytes().factored();
  return r;
}

absl::Status RankClient::Detach() {
  if (attachment_id_.empty()) return absl::FailedPreconditionError("not attached");
  v1::DetachRequest req;
  req.set_attachment_id(attachment_id_);
  v1::DetachResponse resp;
  auto ctx = Context();
  grpc::Status s = stub_->Detach(ctx.get(), req, &resp);
  attachment_id_.clear();
  params_.reset();
  grads_.reset();
  return service::FromGrpcStatus(s);
}

std::span<uint8_t> RankClient::param_bytes(const std::string& name) {
  auto it = where_.find(name);
  if (it == where_.end() || params_ == nullptr) return {};
  const size_t e = DTypeSize(dtype_);
  return {static_cast<uint8_t*>(params_->data()) + it->second.first * e, it->second.second * e};
}

std::span<uint8_t> RankClient::grad_bytes(const std::string& name) {
  auto it = where_.find(name);
  if (it == where_.end() || grads_ == nullptr) return {};
  const size_t e = DTypeSize(dtype_);
  return {static_cast<uint8_t*>(grads_->data()) + it->second.first * e, it->second.second * e};
}

std::span<float> RankClient::param(const std::string& name) {
  if (dtype_ != DType::kFloat32) return {};
  auto b = param_bytes(name);
  return {reinterpret_cast<float*>(b.data()), b.size() / sizeof(float)};
}

std::span<float> RankClient::grad(const std::string& name) {
  if (dtype_ != DType::kFloat32) return {};
  auto b = grad_bytes(name);
  return {reinterpret_cast<float*>(b.data()), b.size() / sizeof(float)};
}

void RankClient::ZeroGrad() {
  if (grads_ != nullptr) std::memset(grads_->data(), 0, grads_->size());
}

}  // namespace came::rankd

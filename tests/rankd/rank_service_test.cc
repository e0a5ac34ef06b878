// RankService over real gRPC: a server on 127.0.0.1 port 0 (max message size as came-rankd
// sets it) with a W = 1 RankCore, called through raw came.v1.Rank stubs (to send what
// RankClient would refuse to) and through RankClient. Bad tokens and bad inputs get the
// right status code and a message naming the problem while a good client keeps stepping.
#include "runtime/rankd/rank_proto.h"
#include "runtime/rankd/rank_service.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "came/v1/rank.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/local_cluster.h"
#include "runtime/rankd/rank_client.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/auth.h"
#include "runtime/service/limits.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

namespace came::rankd {
namespace {

using ::came::rankd_test::ShmExists;
using ::came::rankd_test::StepLr;
using testing::Grad;
using ::testing::HasSubstr;
using testing::InitialParams;
using testing::TestGroups;
using testing::TestModel;

const std::string kToken = "rankd-test-token";
constexpr int64_t kAlignment = 16;  // came-rankd's default

v1::AttachRequest RequestOf(const std::vector<TensorSpec>& tensors,
                            const std::vector<CameHyper>& groups) {
  v1::AttachRequest req;
  for (const TensorSpec& t : tensors) {
    v1::TensorSpec* s = req.add_tensors();
    s->set_name(t.name);
    for (int64_t d : t.shape) s->add_shape(d);
    // came.v1.DType numbers the dtypes from 1, in DType's order.
    s->set_dtype(static_cast<v1::DType>(static_cast<int>(t.dtype) + 1));
    s->set_group(t.group);
  }
  for (const CameHyper& h : groups) {
    HyperToProto(h, req.add_groups()->mutable_hyperparameters());
  }
  req.set_initial_params_in_buffer(true);
  return req;
}

v1::AttachRequest GoodRequest() { return RequestOf(TestModel(), TestGroups()); }

v1::StepRequest StepRequestOf(const std::string& id, int64_t step) {
  v1::StepRequest req;
  req.set_attachment_id(id);
  req.set_step(step);
  for (double lr : StepLr(step)) req.add_groups()->set_lr(lr);
  return req;
}

// The engine of a W = 1 LocalCluster over the same tensors (state sizes, reference values).
std::unique_ptr<LocalCluster> Twin() {
  EngineOptions eo;
  eo.groups = TestGroups();
  eo.num_threads = 1;
  auto c = LocalCluster::Create(TestModel(), 1, kAlignment, InitialParams(TestModel()), eo);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

void ExpectStateBytes(const v1::OptimizerStateBytes& got, const StateBytes& want) {
  EXPECT_EQ(got.master(), want.master);
  EXPECT_EQ(got.momentum(), want.momentum);
  EXPECT_EQ(got.second_moment(), want.second_moment);
  EXPECT_EQ(got.factored(), want.factored);
  EXPECT_EQ(got.total(), want.total());
}

int64_t TotalNumel() {
  int64_t n = 0;
  for (const TensorSpec& t : TestModel()) {
    int64_t k = 1;
    for (int64_t d : t.shape) k *= d;
    n += k;
  }
  return n;
}

enum class Auth { kGood, kMissing, kWrong, kNotBearer, kEmptyBearer };

void ExpectRpc(const grpc::Status& s, grpc::StatusCode code, const std::string& substr) {
  EXPECT_EQ(s.error_code(), code) << s.error_code() << ": " << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr(substr)) << s.error_code();
}

class RankServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    shm_prefix_ = absl::StrCat("/came-rst-", getpid(), "-", counter++, "-r0");
    auto store = comm::InMemoryStore::Create();
    auto comm = comm::GlooCommunicator::Create(*store, 0, 1);
    ASSERT_TRUE(comm.ok()) << comm.status();
    RankCoreOptions o;
    o.rank = 0;
    o.world_size = 1;
    o.num_threads = 1;
    o.alignment = kAlignment;
    o.shm_prefix = shm_prefix_;
    o.collective_timeout = absl::Seconds(30);
    auto core =
        RankCore::Create(o, *std::move(comm), [this](const std::string&, int64_t, absl::Duration) {
          agreements_.fetch_add(1);
          return absl::OkStatus();  // W = 1: rank 0 always agrees with itself
        });
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = *std::move(core);
    service_ = std::make_unique<RankService>(core_.get(), kToken);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    // As rankd_main.cc sets them.
    builder.SetMaxReceiveMessageSize(static_cast<int>(service::kMaxMessageBytes));
    builder.SetMaxSendMessageSize(static_cast<int>(service::kMaxMessageBytes));
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(service::kMaxMessageBytes));
    args.SetMaxSendMessageSize(-1);  // let oversize requests reach the server
    stub_ = v1::Rank::NewStub(
        grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args));
  }

  void TearDown() override {
    StopGoodClient();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_.reset();
    service_.reset();
    core_.reset();
  }

  std::unique_ptr<grpc::ClientContext> Context(Auth auth = Auth::kGood) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    switch (auth) {
      case Auth::kGood:
        service::AddBearerToken(*ctx, kToken);
        break;
      case Auth::kMissing:
        break;
      case Auth::kWrong:
        service::AddBearerToken(*ctx, kToken + "x");
        break;
      case Auth::kNotBearer:
        ctx->AddMetadata("authorization", "Basic " + kToken);
        break;
      case Auth::kEmptyBearer:
        ctx->AddMetadata("authorization", "Bearer ");
        break;
    }
    return ctx;
  }

  grpc::Status Attach(const v1::AttachRequest& req, v1::AttachResponse* resp = nullptr,
                      Auth auth = Auth::kGood) {
    v1::AttachResponse r;
    return stub_->Attach(Context(auth).get(), req, resp ? resp : &r);
  }
  grpc::Status Sync(const std::string& id, v1::SyncParametersResponse* resp = nullptr,
                    Auth auth = Auth::kGood) {
    v1::SyncParametersRequest req;
    req.set_attachment_id(id);
    v1::SyncParametersResponse r;
    return stub_->SyncParameters(Context(auth).get(), req, resp ? resp : &r);
  }
  grpc::Status Step(const v1::StepRequest& req, v1::StepResponse* resp = nullptr,
                    Auth auth = Auth::kGood) {
    v1::StepResponse r;
    return stub_->Step(Context(auth).get(), req, resp ? resp : &r);
  }
  grpc::Status Detach(const std::string& id, Auth auth = Auth::kGood) {
    v1::DetachRequest req;
    req.set_attachment_id(id);
    v1::DetachResponse r;
    return stub_->Detach(Context(auth).get(), req, &r);
  }
  grpc::Status Save(const std::string& id, Auth auth = Auth::kGood) {
    v1::SaveCheckpointRequest req;
    req.set_attachment_id(id);
    req.set_step(1);
    v1::SaveCheckpointResponse r;
    return stub_->SaveCheckpoint(Context(auth).get(), req, &r);
  }
  grpc::Status Load(const std::string& id, Auth auth = Auth::kGood) {
    v1::LoadCheckpointRequest req;
    req.set_attachment_id(id);
    v1::LoadCheckpointResponse r;
    return stub_->LoadCheckpoint(Context(auth).get(), req, &r);
  }

  // The good client: attaches the test model, writes its initial parameters, synchronizes
  // (checking the reported state sizes), takes step 1, then steps on another thread until
  // StopGoodClient (at least kMinGoodSteps more).
  static constexpr int kMinGoodSteps = 20;
  void StartGoodClient() {
    v1::AttachResponse resp;
    grpc::Status s = Attach(GoodRequest(), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    good_id_ = resp.attachment_id();
    EXPECT_EQ(resp.world_size(), 1);
    EXPECT_EQ(resp.rank(), 0);
    EXPECT_EQ(resp.alignment(), kAlignment);
    EXPECT_EQ(resp.tensors_size(), static_cast<int>(TestModel().size()));
    EXPECT_EQ(resp.params().dtype(), v1::DTYPE_FLOAT32);
    EXPECT_EQ(resp.params().device(), -1);
    EXPECT_EQ(resp.params().bytes(), resp.padded_size() * 4);
    EXPECT_EQ(resp.manifest_digest(), ManifestDigestOf(Manifest{TestModel(), TestGroups()}));
    auto params = SharedBuffer::Open(resp.params().name(), resp.params().bytes());
    ASSERT_TRUE(params.ok()) << params.status();
    auto grads = SharedBuffer::Open(resp.grads().name(), resp.grads().bytes());
    ASSERT_TRUE(grads.ok()) << grads.status();
    good_params_ = *std::move(params);
    good_grads_ = *std::move(grads);
    good_layout_.assign(resp.tensors().begin(), resp.tensors().end());
    const auto initial = InitialParams(TestModel());
    float* p = static_cast<float*>(good_params_->data());
    for (size_t t = 0; t < good_layout_.size(); ++t)
      for (int64_t i = 0; i < good_layout_[t].numel(); ++i)
        p[good_layout_[t].offset() + i] = static_cast<float>(initial[t][i]);

    v1::SyncParametersResponse sync;
    s = Sync(good_id_, &sync);
    ASSERT_TRUE(s.ok()) << s.error_message();
    auto twin = Twin();
    ASSERT_NE(twin, nullptr);
    ExpectStateBytes(sync.state_bytes(), twin->engine(0).state_bytes());
    EXPECT_EQ(sync.state_bytes().momentum(), 4 * TotalNumel());

    ASSERT_TRUE(GoodStep(1).ok());
    good_thread_ = std::thread([this] {
      for (int64_t step = 2;; ++step) {
        if (stop_good_.load() && good_steps_ >= kMinGoodSteps) break;
        grpc::Status st = GoodStep(step);
        if (!st.ok()) {
          absl::MutexLock lock(&good_mu_);
          good_failures_.push_back(
              absl::StrCat("step ", step, ": ", st.error_code(), " ", st.error_message()));
          break;
        }
        ++good_steps_;
      }
    });
  }

  grpc::Status GoodStep(int64_t step) {
    float* g = static_cast<float*>(good_grads_->data());
    for (size_t t = 0; t < good_layout_.size(); ++t)
      for (int64_t i = 0; i < good_layout_[t].numel(); ++i)
        g[good_layout_[t].offset() + i] =
            static_cast<float>(Grad(0, static_cast<int>(step), static_cast<int>(t), i));
    v1::StepResponse resp;
    grpc::Status s = Step(StepRequestOf(good_id_, step), &resp);
    if (s.ok() && (resp.step() != step || resp.skipped() || !(resp.grad_norm() > 0)))
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat("bad response ", resp.DebugString()));
    return s;
  }

  // Stops the good client; expects it to have completed every step it took.
  void StopGoodClient() {
    if (!good_thread_.joinable()) return;
    stop_good_.store(true);
    good_thread_.join();
    absl::MutexLock lock(&good_mu_);
    EXPECT_TRUE(good_failures_.empty()) << good_failures_.front();
    EXPECT_GE(good_steps_.load(), kMinGoodSteps);
  }

  std::string shm_prefix_;
  std::atomic<int> agreements_{0};
  std::unique_ptr<RankCore> core_;
  std::unique_ptr<RankService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::unique_ptr<v1::Rank::Stub> stub_;

  std::string good_id_;
  std::unique_ptr<SharedBuffer> good_params_, good_grads_;
  std::vector<v1::TensorLayout> good_layout_;
  std::thread good_thread_;
  std::atomic<bool> stop_good_{false};
  std::atomic<int> good_steps_{0};
  absl::Mutex good_mu_;
  std::vector<std::string> good_failures_ ABSL_GUARDED_BY(good_mu_);
};

TEST_F(RankServiceTest, WrongOrMissingTokenIsUnauthenticatedOnEveryRpc) {
  StartGoodClient();
  const int agreed = agreements_.load();
  for (Auth auth : {Auth::kMissing, Auth::kWrong, Auth::kNotBearer, Auth::kEmptyBearer}) {
    SCOPED_TRACE(static_cast<int>(auth));
    const std::string what = auth == Auth::kWrong ? "wrong token" : "missing token";
    ExpectRpc(Attach(GoodRequest(), nullptr, auth), grpc::StatusCode::UNAUTHENTICATED, what);
    ExpectRpc(Sync(good_id_, nullptr, auth), grpc::StatusCode::UNAUTHENTICATED, what);
    // Would run (and break the good client's step order) if the token were not checked.
    ExpectRpc(Step(StepRequestOf(good_id_, int64_t{1} << 50), nullptr, auth),
              grpc::StatusCode::UNAUTHENTICATED, what);
    ExpectRpc(Save(good_id_, auth), grpc::StatusCode::UNAUTHENTICATED, what);
    ExpectRpc(Load(good_id_, auth), grpc::StatusCode::UNAUTHENTICATED, what);
    // Would detach the good client if the token were not checked.
    ExpectRpc(Detach(good_id_, auth), grpc::StatusCode::UNAUTHENTICATED, what);
  }
  {
    // The missing-token message says what to send.
    ExpectRpc(Step(StepRequestOf(good_id_, 1), nullptr, Auth::kMissing),
              grpc::StatusCode::UNAUTHENTICATED, "authorization: Bearer <token>");
  }
  EXPECT_EQ(agreements_.load(), agreed);
  StopGoodClient();
  EXPECT_TRUE(Detach(good_id_).ok());
}

TEST_F(RankServiceTest, BadInputsGetTheRightCodeAndMessageWhileAGoodClientKeepsStepping) {
  StartGoodClient();
  const int steps_before = good_steps_.load();
  using grpc::StatusCode;
  struct BadAttach {
    std::string what;
    std::function<void(v1::AttachRequest&)> edit;
    StatusCode code;
    std::string message;
  };
  const std::vector<BadAttach> attaches = {
      {"zero dim", [](auto& r) { r.mutable_tensors(5)->set_shape(1, 0); },
       StatusCode::INVALID_ARGUMENT, "tensor 5 'wide': dims must be >= 1, got 0"},
      {"negative dim", [](auto& r) { r.mutable_tensors(0)->set_shape(0, -150); },
       StatusCode::INVALID_ARGUMENT, "tensor 0 'embed': dims must be >= 1, got -150"},
      {"element count overflows int64",
       [](auto& r) {
         r.mutable_tensors(1)->clear_shape();
         r.mutable_tensors(1)->add_shape(int64_t{1} << 40);
         r.mutable_tensors(1)->add_shape(int64_t{1} << 40);
       },
       StatusCode::INVALID_ARGUMENT, "tensor 1 'embed_bias': element count overflows"},
      {"element count over 2^40",
       [](auto& r) {
         r.mutable_tensors(2)->clear_shape();
         r.mutable_tensors(2)->add_shape(int64_t{1} << 30);
         r.mutable_tensors(2)->add_shape(int64_t{1} << 11);
       },
       StatusCode::INVALID_ARGUMENT, "tensor 2 'conv': element count overflows the limit of 2^40"},
      {"dtype 0", [](auto& r) { r.mutable_tensors(3)->set_dtype(v1::DTYPE_UNSPECIFIED); },
       StatusCode::INVALID_ARGUMENT, "tensor 3 'tiny': unknown dtype 0"},
      {"dtype 99", [](auto& r) { r.mutable_tensors(4)->set_dtype(static_cast<v1::DType>(99)); },
       StatusCode::INVALID_ARGUMENT, "tensor 4 'one_by_one': unknown dtype 99"},
      {"mixed dtypes", [](auto& r) { r.mutable_tensors(4)->set_dtype(v1::DTYPE_FLOAT16); },
       StatusCode::INVALID_ARGUMENT, "tensor 4 'one_by_one': dtype float16 differs from float32"},
      {"duplicate name", [](auto& r) { r.mutable_tensors(6)->set_name("conv"); },
       StatusCode::INVALID_ARGUMENT, "tensor 6 'conv': duplicate name"},
      {"empty name", [](auto& r) { r.mutable_tensors(7)->set_name(""); },
       StatusCode::INVALID_ARGUMENT, "tensor 7 has an empty name"},
      {"name too long",
       [](auto& r) {
         r.mutable_tensors(7)->set_name(std::string(service::kMaxNameLength + 1, 'x'));
       },
       StatusCode::INVALID_ARGUMENT, "name longer than 512 bytes"},
      {"10 dims",
       [](auto& r) {
         for (int i = 0; i < 8; ++i) r.mutable_tensors(8)->add_shape(1);
       },
       StatusCode::INVALID_ARGUMENT, "tensor 8 'column': 10 dims; the limit is 8"},
      {"group out of range", [](auto& r) { r.mutable_tensors(8)->set_group(7); },
       StatusCode::INVALID_ARGUMENT, "tensor 8 'column': group 7 does not exist"},
      {"no groups", [](auto& r) { r.clear_groups(); }, StatusCode::INVALID_ARGUMENT,
       "at least one parameter group"},
      {"no tensors", [](auto& r) { r.clear_tensors(); }, StatusCode::INVALID_ARGUMENT,
       "no tensors"},
      {"beta1 1.0", [](auto& r) { r.mutable_groups(1)->mutable_hyperparameters()->set_beta1(1.0); },
       StatusCode::INVALID_ARGUMENT, "group 1: betas must be in [0, 1)"},
      {"negative lr", [](auto& r) { r.mutable_groups(0)->mutable_hyperparameters()->set_lr(-1); },
       StatusCode::INVALID_ARGUMENT, "group 0: lr must be >= 0"},
      {"NaN eps1",
       [](auto& r) { r.mutable_groups(0)->mutable_hyperparameters()->set_eps1(std::nan("")); },
       StatusCode::INVALID_ARGUMENT, "group 0: hyperparameters must be finite"},
      {"too many tensors",
       [](auto& r) {
         r.clear_tensors();
         for (int i = 0; i <= service::kMaxTensors; ++i) {
           v1::TensorSpec* t = r.add_tensors();
           t->set_name(absl::StrCat("t", i));
           t->add_shape(1);
           t->set_dtype(v1::DTYPE_FLOAT32);
         }
       },
       StatusCode::INVALID_ARGUMENT, "the limit is 100000"},
      {"a good manifest while attached", [](auto&) {}, StatusCode::FAILED_PRECONDITION,
       "already attached"},
  };
  for (const BadAttach& bad : attaches) {
    SCOPED_TRACE(bad.what);
    v1::AttachRequest req = GoodRequest();
    bad.edit(req);
    ExpectRpc(Attach(req), bad.code, bad.message);
  }
  {
    // Over kMaxMessageBytes: refused by gRPC itself.
    SCOPED_TRACE("70 MiB of names");
    v1::AttachRequest req;
    const std::string pad(1024 - 16, 'n');
    for (int i = 0; i < 70 * 1024; ++i) {
      v1::TensorSpec* t = req.add_tensors();
      t->set_name(absl::StrCat(i, pad));
      t->add_shape(1);
      t->set_dtype(v1::DTYPE_FLOAT32);
    }
    req.add_groups();
    ASSERT_GT(req.ByteSizeLong(), static_cast<size_t>(service::kMaxMessageBytes));
    grpc::Status s = Attach(req);
    EXPECT_EQ(s.error_code(), StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_FALSE(s.error_message().empty());
  }

  struct BadStep {
    std::string what;
    std::function<void(v1::StepRequest&)> edit;
    StatusCode code;
    std::string message;
  };
  const std::string good = good_id_;
  const int64_t far = int64_t{1} << 40;  // ahead of the good client: would run if accepted
  const std::vector<BadStep> steps = {
      {"wrong attachment id", [](auto& r) { r.set_attachment_id("not-an-id"); },
       StatusCode::FAILED_PRECONDITION, "unknown attachment id 'not-an-id'"},
      {"step 0", [](auto& r) { r.set_step(0); }, StatusCode::INVALID_ARGUMENT,
       "step must be >= 1, got 0"},
      {"negative step", [](auto& r) { r.set_step(-3); }, StatusCode::INVALID_ARGUMENT,
       "step must be >= 1, got -3"},
      {"step out of order", [](auto& r) { r.set_step(1); }, StatusCode::FAILED_PRECONDITION,
       "step 1 is out of order"},
      {"grad_scale 2", [](auto& r) { r.set_grad_scale(2.0); }, StatusCode::UNIMPLEMENTED,
       "grad_scale"},
      {"grad_scale 0.5", [](auto& r) { r.set_grad_scale(0.5); }, StatusCode::UNIMPLEMENTED,
       "grad_scale"},
      {"has_weight_decay on one group of two",
       [](auto& r) {
         r.mutable_groups(0)->set_has_weight_decay(true);
         r.mutable_groups(0)->set_weight_decay(0.1);
       },
       StatusCode::INVALID_ARGUMENT, "has_weight_decay on every group or on none"},
      {"negative weight decay",
       [](auto& r) {
         for (auto& g : *r.mutable_groups()) {
           g.set_has_weight_decay(true);
           g.set_weight_decay(-0.1);
         }
       },
       StatusCode::INVALID_ARGUMENT,
       "parameter group 0: weight_decay must be >= 0, got weight_decay=-0.1"},
      {"negative lr", [](auto& r) { r.mutable_groups(1)->set_lr(-0.5); },
       StatusCode::INVALID_ARGUMENT, "parameter group 1: lr must be >= 0, got lr=-0.5"},
      {"NaN lr", [](auto& r) { r.mutable_groups(0)->set_lr(std::nan("")); },
       StatusCode::INVALID_ARGUMENT, "parameter group 0: hyperparameters must be finite, got lr=nan"},
      {"eps = 0 in a step's hyperparameters",
       [](auto& r) { r.mutable_groups(1)->mutable_hyperparameters()->set_eps1(0.0); },
       StatusCode::INVALID_ARGUMENT, "parameter group 1: eps must be > 0, got eps1=0"},
      {"beta1 = 1 in a step's hyperparameters",
       [](auto& r) { r.mutable_groups(0)->mutable_hyperparameters()->set_beta1(1.0); },
       StatusCode::INVALID_ARGUMENT, "parameter group 0: betas must be in [0, 1), got beta1=1"},
      {"negative max_grad_norm", [](auto& r) { r.set_max_grad_norm(-1); },
       StatusCode::INVALID_ARGUMENT, "max_grad_norm must be finite and >= 0"},
      {"infinite max_grad_norm",
       [](auto& r) { r.set_max_grad_norm(std::numeric_limits<double>::infinity()); },
       StatusCode::INVALID_ARGUMENT, "max_grad_norm must be finite and >= 0"},
      {"one lr for two groups", [](auto& r) { r.mutable_groups()->RemoveLast(); },
       StatusCode::INVALID_ARGUMENT, "expected one lr per parameter group (2), got 1"},
      {"three lrs for two groups", [](auto& r) { r.add_groups()->set_lr(0.1); },
       StatusCode::INVALID_ARGUMENT, "expected one lr per parameter group (2), got 3"},
  };
  for (const BadStep& bad : steps) {
    SCOPED_TRACE(bad.what);
    v1::StepRequest req = StepRequestOf(good, far);
    bad.edit(req);
    ExpectRpc(Step(req), bad.code, bad.message);
  }

  ExpectRpc(Sync("not-an-id"), StatusCode::FAILED_PRECONDITION, "unknown attachment id");
  ExpectRpc(Sync(good), StatusCode::FAILED_PRECONDITION, "already synchronized");
  ExpectRpc(Detach("not-an-id"), StatusCode::FAILED_PRECONDITION, "unknown attachment id");
  ExpectRpc(Detach(""), StatusCode::FAILED_PRECONDITION, "unknown attachment id");
  // This daemon has no coordinator with a --checkpoint-dir (tests/e2e covers checkpoints).
  ExpectRpc(Save(good), StatusCode::FAILED_PRECONDITION, "checkpoints are off");
  ExpectRpc(Load(good), StatusCode::FAILED_PRECONDITION, "checkpoints are off");

  // Only the good client's one Attach reached the agreement, and it kept stepping meanwhile.
  EXPECT_EQ(agreements_.load(), 1);
  EXPECT_GT(good_steps_.load(), steps_before) << "the good client made no progress";
  StopGoodClient();
  EXPECT_TRUE(Detach(good).ok());
}

// Before: came-rankd read "step" with nlohmann's json::value(), which throws on a string, and
// the uncaught exception aborted the daemon (SIGABRT) and the job with it.
TEST_F(RankServiceTest, AWronglyTypedManifestIsDataLossNamingItWhileAGoodClientKeepsStepping) {
  StartGoodClient();
  char dir_template[] = "/tmp/came-rst-manifest-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/manifest.json";
  {
    std::ofstream f(path);
    f << R"({"format": "came-checkpoint-manifest", "format_version": 1, "step": "5", )"
      << R"("world_size": 1, "plan_alignment": 16, "shards": []})";
  }
  v1::LoadCheckpointRequest req;
  req.set_attachment_id(good_id_);
  req.set_manifest_path(path);
  v1::LoadCheckpointResponse resp;
  ExpectRpc(stub_->LoadCheckpoint(Context().get(), req, &resp), grpc::StatusCode::DATA_LOSS,
            path + ": field 'step' must be an integer");
  StopGoodClient();
  std::remove(path.c_str());
  rmdir(dir_template);
}

TEST_F(RankServiceTest, CallsBeforeAttachAreFailedPrecondition) {
  ExpectRpc(Step(StepRequestOf("", 1)), grpc::StatusCode::FAILED_PRECONDITION,
            "no trainer is attached: call Attach first");
  ExpectRpc(Sync(""), grpc::StatusCode::FAILED_PRECONDITION, "call Attach first");
  ExpectRpc(Detach("some-id"), grpc::StatusCode::FAILED_PRECONDITION, "call Attach first");
  // Attached but not synchronized.
  v1::AttachResponse resp;
  ASSERT_TRUE(Attach(GoodRequest(), &resp).ok());
  ExpectRpc(Step(StepRequestOf(resp.attachment_id(), 1)), grpc::StatusCode::FAILED_PRECONDITION,
            "Step before SyncParameters");
  ASSERT_TRUE(Sync(resp.attachment_id()).ok());
  ASSERT_TRUE(Step(StepRequestOf(resp.attachment_id(), 1)).ok());
  ExpectRpc(Step(StepRequestOf(resp.attachment_id(), 1)), grpc::StatusCode::FAILED_PRECONDITION,
            "step 1 is out of order");
  ASSERT_TRUE(Step(StepRequestOf(resp.attachment_id(), 5)).ok());
  ASSERT_TRUE(Detach(resp.attachment_id()).ok());
  EXPECT_FALSE(ShmExists(resp.params().name()));
  EXPECT_FALSE(ShmExists(resp.grads().name()));
}

TEST_F(RankServiceTest, RankClientGoodPath) {
  RankClientOptions o;
  o.address = address_;
  o.token = kToken;
  o.timeout = absl::Seconds(20);
  auto client = RankClient::Connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  RankClient& c = **client;
  const auto specs = TestModel();
  ASSERT_TRUE(c.Attach(Manifest{specs, TestGroups()}).ok());
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.world_size(), 1);
  EXPECT_EQ(c.Attach(Manifest{specs, TestGroups()}).code(), absl::StatusCode::kFailedPrecondition);
  const auto initial = InitialParams(specs);
  for (size_t t = 0; t < specs.size(); ++t) {
    std::span<float> p = c.param(specs[t].name);
    ASSERT_EQ(p.size(), initial[t].size()) << specs[t].name;
    for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<float>(initial[t][i]);
  }
  EXPECT_TRUE(c.param("no-such-tensor").empty());
  ASSERT_TRUE(c.SyncParameters().ok());
  auto twin = Twin();
  ASSERT_NE(twin, nullptr);
  for (int step = 1; step <= 3; ++step) {
    c.ZeroGrad();
    for (size_t t = 0; t < specs.size(); ++t) {
      std::span<float> g = c.grad(specs[t].name);
      ASSERT_EQ(g.size(), initial[t].size());
      for (size_t i = 0; i < g.size(); ++i)
        g[i] = static_cast<float>(Grad(0, step, static_cast<int>(t), static_cast<int64_t>(i)));
    }
    auto reply = c.Step(step, StepLr(step));
    ASSERT_TRUE(reply.ok()) << reply.status();
    StepInputs in;
    in.step = step;
    in.lr = StepLr(step);
    auto want = twin->Step(
        [step](int, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i)
            g[i] = static_cast<float>(Grad(0, step, t, static_cast<int64_t>(i)));
        },
        in);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_FALSE(reply->skipped);
    EXPECT_NEAR(reply->grad_norm, want->grad_norm, 1e-6 * want->grad_norm);
    EXPECT_GT(reply->seconds, 0.0);
    const StateBytes engine = twin->engine(0).state_bytes();
    EXPECT_EQ(reply->state_bytes.momentum, engine.momentum);
    EXPECT_EQ(reply->state_bytes.momentum, 4 * TotalNumel()) << "W = 1, fp32: 4 bytes per element";
    EXPECT_EQ(reply->state_bytes.second_moment, engine.second_moment);
    EXPECT_EQ(reply->state_bytes.factored, engine.factored);
    EXPECT_EQ(reply->state_bytes.master, 0);
  }
  for (size_t t = 0; t < specs.size(); ++t) {
    std::span<float> p = c.param(specs[t].name);
    EXPECT_LE(ParamError(std::vector<double>(p.begin(), p.end()), twin->Param(static_cast<int>(t))),
              kFloat32ParamTolerance)
        << specs[t].name;
  }
  ASSERT_TRUE(c.Detach().ok());
  EXPECT_TRUE(c.param(specs[0].name).empty());
  EXPECT_FALSE(ShmExists(shm_prefix_ + "-1-params"));
  EXPECT_FALSE(ShmExists(shm_prefix_ + "-1-grads"));
  EXPECT_EQ(c.Detach().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RankServiceTest, RankClientWithAWrongTokenIsUnauthenticated) {
  RankClientOptions o;
  o.address = address_;
  o.token = "not-the-token";
  o.timeout = absl::Seconds(20);
  auto client = RankClient::Connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::Status s = (*client)->Attach(Manifest{TestModel(), TestGroups()});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("wrong token"));
  EXPECT_EQ(agreements_.load(), 0);
}

}  // namespace
}  // namespace came::rankd

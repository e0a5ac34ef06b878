// Tests of the coordinator over gRPC: a real server on 127.0.0.1 port 0, CoordinatorClient,
// CoordinatorStore and raw stubs (to send what the client would refuse to).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "came/v1/coordinator.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "runtime/service/coordinator.h"
#include "runtime/service/coordinator_client.h"
#include "runtime/service/coordinator_server.h"
#include "runtime/service/coordinator_store.h"
#include "runtime/service/limits.h"

namespace came::service {
namespace {

using ::testing::HasSubstr;

const std::string kToken = "grpc-test-token";

class CoordinatorGrpcTest : public ::testing::Test {
 protected:
  void Start(int world_size, absl::Duration lease = absl::Seconds(30),
             std::string metrics_listen = "") {
    CoordinatorOptions options;
    options.world_size = world_size;
    options.token = kToken;
    options.config.lease = lease;
    auto core = Coordinator::Create(options);
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = std::move(*core);
    CoordinatorServerOptions server_options;
    server_options.metrics_listen = std::move(metrics_listen);
    auto server = CoordinatorServer::Create(core_.get(), server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    client_ = MakeClient(kToken);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  std::shared_ptr<CoordinatorClient> MakeClient(const std::string& token) {
    CoordinatorClientOptions options;
    options.target = server_->address();
    options.token = token;
    options.rpc_timeout = absl::Seconds(10);
    auto client = CoordinatorClient::Create(options);
    EXPECT_TRUE(client.ok());
    return std::shared_ptr<CoordinatorClient>(std::move(*client));
  }
  std::unique_ptr<v1::Coordinator::Stub> RawStub(int max_send = -1) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(max_send);
    return v1::Coordinator::NewStub(grpc::CreateCustomChannel(
        server_->address(), grpc::InsecureChannelCredentials(), args));
  }
  static void Deadline(grpc::ClientContext& ctx, absl::Duration d = absl::Seconds(10)) {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + d));
  }
  void JoinAll() {
    for (int r = 0; r < core_->world_size(); ++r) {
      JoinRequest req;
      req.requested_rank = r;
      ASSERT_TRUE(client_->Join(req).ok());
    }
  }

  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<CoordinatorServer> server_;
  std::shared_ptr<CoordinatorClient> client_;
};

TEST_F(CoordinatorGrpcTest, MissingTokenIsUnauthenticatedForEveryRpc) {
  Start(2);
  auto stub = RawStub();
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::JoinResponse resp;
    grpc::Status s = stub->Join(&ctx, v1::JoinRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(s.error_message(), HasSubstr("authorization: Bearer <token>"));
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::StoreSetRequest req;
    req.set_key("k");
    v1::StoreSetResponse resp;
    EXPECT_EQ(stub->StoreSet(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::BarrierRequest req;
    req.set_name("b");
    v1::BarrierResponse resp;
    EXPECT_EQ(stub->Barrier(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::JobStatusResponse resp;
    EXPECT_EQ(stub->JobStatus(&ctx, v1::JobStatusRequest(), &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_TRUE(core_->Status().members.empty());  // nothing changed
}

TEST_F(CoordinatorGrpcTest, WrongTokenIsUnauthenticated) {
  Start(1);
  auto bad = MakeClient("not-the-token");
  absl::Status s = bad->Join(JoinRequest()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("wrong token"));
  EXPECT_EQ(bad->StoreGet("k", absl::Seconds(1)).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(bad->Heartbeat(0, 0).status().code(), absl::StatusCode::kUnauthenticated);
  // Join may carry the token in its request instead of metadata.
  auto stub = RawStub();
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::JoinRequest req;
  req.set_token(kToken);
  req.set_requested_rank(-1);
  v1::JoinResponse resp;
  ASSERT_TRUE(stub->Join(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.rank(), 0);
  EXPECT_EQ(resp.config().backend(), v1::BACKEND_GLOO);
}

TEST_F(CoordinatorGrpcTest, BadInputIsInvalidArgumentAndServerKeepsServing) {
  Start(2);
  JoinRequest join;
  join.requested_rank = -5;
  EXPECT_EQ(client_->Join(join).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->StoreSet("", "v").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->StoreGet("", absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->StoreSet(std::string(kMaxKeyBytes + 1, 'k'), "v").code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status big = client_->StoreSet("k", std::string(kMaxValueBytes + 1, 'v'));
  EXPECT_EQ(big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(big.message()), HasSubstr("store value is"));
  EXPECT_EQ(client_->Heartbeat(-1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Barrier("b", 7, absl::Seconds(1)).code(),
            absl::StatusCode::kInvalidArgument);
  {
    auto stub = RawStub();
    grpc::ClientContext ctx;
    Deadline(ctx);
    ctx.AddMetadata("authorization", "Bearer " + kToken);
    v1::StoreGetRequest req;
    req.set_key("k");
    req.set_wait_ms(-1);
    v1::StoreGetResponse resp;
    EXPECT_EQ(stub->StoreGet(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    // Over the coordinator's request limit (a store value and its key, far below the 64 MiB
    // of the rank service): the server refuses it before any handler runs.
    auto stub = RawStub(/*max_send=*/-1);
    grpc::ClientContext ctx;
    Deadline(ctx, absl::Seconds(30));
    ctx.AddMetadata("authorization", "Bearer " + kToken);
    v1::StoreSetRequest req;
    req.set_key("huge");
    req.set_value(std::string(kMaxCoordinatorRequestBytes + 1024, 'x'));
    v1::StoreSetResponse resp;
    EXPECT_EQ(stub->StoreSet(&ctx, req, &resp).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // Good clients are still served.
  join.requested_rank = 1;
  auto joined = client_->Join(join);
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->rank, 1);
  EXPECT_TRUE(client_->StoreSet("k", "v").ok());
  EXPECT_EQ(*client_->StoreGet("k", absl::ZeroDuration()), "v");
  // The largest value the store takes fits the limit both ways.
  const std::string biggest(kMaxValueBytes, 'b');
  EXPECT_TRUE(client_->StoreSet(std::string(kMaxKeyBytes, 'k'), biggest).ok());
  EXPECT_EQ(*client_->StoreGet(std::string(kMaxKeyBytes, 'k'), absl::ZeroDuration()), biggest);
}

TEST_F(CoordinatorGrpcTest, CoordinatorStoreSetGetWaitTimeoutAdd) {
  Start(1);
  CoordinatorStore store(client_);
  ASSERT_TRUE(store.Set("a", "1").ok());
  EXPECT_EQ(*store.Get("a", absl::Seconds(1)), "1");

  std::thread setter([&] {
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE(client_->StoreSet("later", "nccl-id").ok());
  });
  const absl::Time start = absl::Now();
  auto later = store.Get("later", absl::Seconds(10));
  setter.join();
  ASSERT_TRUE(later.ok()) << later.status();
  EXPECT_EQ(*later, "nccl-id");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));

  const absl::Time t0 = absl::Now();
  auto missing = store.Get("missing", absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - t0;
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'missing' is not set"));
  EXPECT_GE(took, absl::Milliseconds(290));
  EXPECT_LT(took, absl::Seconds(3));

  EXPECT_EQ(*store.Add("n", 5), 5);
  EXPECT_EQ(*store.Add("n", -2), 3);
  EXPECT_EQ(*store.Get("n", absl::ZeroDuration()), "3");
}

TEST_F(CoordinatorGrpcTest, WaitingCallsDoNotStarveOthers) {
  Start(1);
  constexpr int kWaiters = 100;
  std::vector<std::thread> waiters;
  std::atomic<int> ok{0};
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&] {
      if (client_->StoreGet("go", absl::Seconds(20)).ok()) ++ok;
    });
  }
  absl::SleepFor(absl::Milliseconds(300));  // let them all block on the server
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(client_->GetJobStatus().ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  ASSERT_TRUE(client_->StoreSet("go", "1").ok());
  for (auto& t : waiters) t.join();
  EXPECT_EQ(ok.load(), kWaiters);
}

TEST_F(CoordinatorGrpcTest, SixtyFourRanksJoinAndRendezvous) {
  constexpr int kRanks = 64;
  Start(kRanks);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kRanks);
  std::vector<int> ranks(kRanks, -1);
  for (int i = 0; i < kRanks; ++i) {
    threads.emplace_back([&, i] {
      auto client = MakeClient(kToken);  // a channel per rank, as separate processes have
      JoinRequest req;
      req.world_size = kRanks;
      req.host = absl::StrCat("sim", i);
      auto joined = client->Join(req);
      if (!joined.ok()) {
        results[i] = joined.status();
        return;
      }
      ranks[i] = joined->rank;
      CoordinatorStore store(client);
      results[i] = store.Set(absl::StrCat("addr/", joined->rank), req.host);
      if (results[i].ok()) results[i] = client->Barrier("rendezvous", joined->rank, absl::Seconds(20));
      if (!results[i].ok()) return;
      // Every rank can read every other rank's address after the barrier.
      auto peer = store.Get(absl::StrCat("addr/", (joined->rank + 1) % kRanks), absl::Seconds(1));
      results[i] = peer.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRanks; ++i) EXPECT_TRUE(results[i].ok()) << i << ": " << results[i];
  std::sort(ranks.begin(), ranks.end());
  for (int i = 0; i < kRanks; ++i) EXPECT_EQ(ranks[i], i);
  EXPECT_EQ(client_->GetJobStatus()->state, JobState::kRunning);
}

TEST_F(CoordinatorGrpcTest, BarrierTimeoutNamesMissingRanks) {
  Start(3);
  JoinAll();
  absl::Status s = client_->Barrier("b", 1, absl::Milliseconds(200));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing ranks 0, 2"));
}

TEST_F(CoordinatorGrpcTest, ManifestMismatchOverGrpc) {
  Start(2);
  JoinAll();
  absl::Status s0;
  std::thread t([&] { s0 = client_->SubmitManifest(0, {"aaaa", 3}, absl::Seconds(10)); });
  absl::Status s1 = client_->SubmitManifest(1, {"bbbb", 3}, absl::Seconds(10));
  t.join();
  EXPECT_EQ(s1.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s1.message()), HasSubstr("rank 1"));
  EXPECT_EQ(s0.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoordinatorGrpcTest, LeaseExpiryReachesHeartbeatThread) {
  Start(2, /*lease=*/absl::Milliseconds(400));
  JoinAll();
  absl::Notification aborted;
  absl::Status abort_status;
  HeartbeatThread heartbeat(client_.get(), 0, absl::Milliseconds(50), absl::Milliseconds(400),
                            [&](absl::Status s) {
                              abort_status = s;
                              aborted.Notify();
                            });
  // Rank 1 never heartbeats: its lease runs out and the job fails naming it.
  ASSERT_TRUE(aborted.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(abort_status.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(abort_status.message()), HasSubstr("rank 1"));
  EXPECT_THAT(std::string(abort_status.message()), HasSubstr("lost its lease"));
  auto hb = client_->Heartbeat(0, 1);
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->state, JobState::kFailed);
  EXPECT_EQ(heartbeat.state(), JobState::kFailed);
}

TEST_F(CoordinatorGrpcTest, FailAndFinishOverGrpc) {
  Start(2);
  JoinAll();
  EXPECT_EQ(*client_->Finish(0), JobState::kRunning);
  EXPECT_EQ(*client_->Finish(1), JobState::kFinished);
  auto status = client_->GetJobStatus();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->state, JobState::kFinished);
  ASSERT_EQ(status->members.size(), 2u);
  EXPECT_TRUE(status->members[1].finished);
}

TEST_F(CoordinatorGrpcTest, MetricsAreServed) {
  Start(1, absl::Seconds(30), "127.0.0.1:0");
  ASSERT_NE(server_->metrics_port(), 0);
  JoinAll();
  auto bad = MakeClient("wrong");
  (void)bad->Heartbeat(0, 0);
  absl::SleepFor(absl::Milliseconds(1200));  // one metrics refresh
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server_->metrics_port()));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  ASSERT_EQ(::write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string body;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) body.append(buf, n);
  ::close(fd);
  EXPECT_THAT(body, HasSubstr("came_ranks_alive 1"));
  EXPECT_THAT(body, HasSubstr("came_job_state{state=\"RUNNING\"} 1"));
  EXPECT_THAT(body, HasSubstr("came_heartbeat_age_seconds{rank=\"0\"}"));
  EXPECT_THAT(body, HasSubstr("came_checkpoint_commits_total 0"));
  EXPECT_THAT(body, HasSubstr("came_rpc_total{code=\"UNAUTHENTICATED\",method=\"Heartbeat\"} 1"));
  EXPECT_THAT(body, HasSubstr("came_rpc_total{code=\"OK\",method=\"Join\"} 1"));
}

TEST_F(CoordinatorGrpcTest, CheckpointProtocolOverGrpc) {
  const std::string dir = ::testing::TempDir() + "/came_grpc_ckpt_" + std::to_string(::getpid());
  CoordinatorOptions options;
  options.world_size = 2;
  options.token = kToken;
  options.config.checkpoint_dir = dir;
  core_ = *Coordinator::Create(options);
  server_ = *CoordinatorServer::Create(core_.get(), {});
  client_ = MakeClient(kToken);
  JoinAll();
  auto begin = client_->BeginCheckpoint(0, 7);
  ASSERT_TRUE(begin.ok()) << begin.status();
  EXPECT_EQ(begin->id, "step-000000000007");
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(client_->CommitCheckpoint(begin->id, 0).status().code(),
              absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(client_
                    ->ReportShard(ShardReport{begin->id, r, absl::StrCat("r", r, ".safetensors"),
                                              10, std::string(64, '0')})
                    .ok());
  }
  auto commit = client_->CommitCheckpoint(begin->id, 0);
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_THAT(commit->manifest_path, HasSubstr("manifest.json"));
  auto latest = client_->LatestCheckpoint();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->step, 7);
  EXPECT_EQ(client_->GetJobStatus()->latest_checkpoint->id, begin->id);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace came::service

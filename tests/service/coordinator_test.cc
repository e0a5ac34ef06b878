// Tests of the coordinator core (runtime/service/coordinator.h) on a fake clock: no gRPC.
#include "runtime/service/coordinator.h"

#include <filesystem>
#include <future>
#include <thread>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/service/checkpoint_files.h"
#include "runtime/service/limits.h"

namespace came::service {
namespace {

using ::testing::HasSubstr;

MATCHER_P2(StatusIs, code, substring, "") {
  const absl::Status& s = arg;
  *result_listener << "status is " << s;
  return s.code() == code && absl::StrContains(s.message(), substring);
}

// The result of a wait, captured from its callback.
template <typename T>
struct Result {
  std::optional<T> value;
  auto Callback() {
    return [this](T v) { value = std::move(v); };
  }
};

const std::string kToken = "secret-token";

class CoordinatorTest : public ::testing::Test {
 protected:
  void Make(int world_size, std::string checkpoint_dir = "", CheckpointStorage* storage = nullptr) {
    CoordinatorOptions options;
    options.storage = storage;
    options.world_size = world_size;
    options.token = kToken;
    options.config.lease = absl::Seconds(10);
    options.config.checkpoint_dir = std::move(checkpoint_dir);
    options.job_id = "job-1";
    auto c = Coordinator::Create(options, &clock_);
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = std::move(*c);
  }
  void JoinAll() {
    for (int r = 0; r < coord_->world_size(); ++r) {
      JoinRequest req;
      req.requested_rank = r;
      req.host = absl::StrCat("host", r);
      ASSERT_TRUE(coord_->Join(req).ok());
    }
  }
  absl::Time In(absl::Duration d) { return clock_.Now() + d; }

  FakeClock clock_;
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, CreateRejectsBadOptions) {
  CoordinatorOptions options;
  options.world_size = 0;
  options.token = kToken;
  EXPECT_EQ(Coordinator::Create(options, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.world_size = 2;
  options.token = "";
  EXPECT_EQ(Coordinator::Create(options, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, CreateRejectsDefaultsThatHyperErrorRefuses) {
  // The same rule and words as rankd's Attach and Step (kernels/hyper_check.h).
  CoordinatorOptions options;
  options.world_size = 2;
  options.token = kToken;
  options.config.defaults.eps1 = 0;
  EXPECT_THAT(Coordinator::Create(options, &clock_).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "the job's default hyperparameters: eps must be > 0, got eps1=0"));
  options.config.defaults.eps1 = 1e-30;
  options.config.defaults.beta2 = 1.0;
  EXPECT_THAT(Coordinator::Create(options, &clock_).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "betas must be in [0, 1), got beta2=1"));
}

TEST_F(CoordinatorTest, AuthenticateComparesToken) {
  Make(1);
  EXPECT_TRUE(coord_->Authenticate(kToken).ok());
  EXPECT_THAT(coord_->Authenticate("secret-tokeX"),
              StatusIs(absl::StatusCode::kUnauthenticated, "wrong token"));
  EXPECT_THAT(coord_->Authenticate("secret"),
              StatusIs(absl::StatusCode::kUnauthenticated, "wrong token"));
  EXPECT_THAT(coord_->Authenticate(""), StatusIs(absl::StatusCode::kUnauthenticated, "no token"));
}

TEST_F(CoordinatorTest, JoinAssignsRanksAndFormsJob) {
  Make(3);
  JoinRequest req;
  req.requested_rank = 2;
  auto r2 = coord_->Join(req);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->rank, 2);
  EXPECT_EQ(r2->world_size, 3);
  EXPECT_EQ(r2->job_id, "job-1");
  EXPECT_EQ(coord_->Status().state, JobState::kForming);

  req.requested_rank = -1;
  EXPECT_EQ(coord_->Join(req)->rank, 0);
  EXPECT_EQ(coord_->Join(req)->rank, 1);
  EXPECT_EQ(coord_->Status().state, JobState::kRunning);
  EXPECT_THAT(coord_->Join(req).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "no rank is free"));
}

TEST_F(CoordinatorTest, JoinRejectsDuplicateRankAndWorldSizeMismatch) {
  Make(2);
  JoinRequest req;
  req.requested_rank = 1;
  req.host = "a";
  ASSERT_TRUE(coord_->Join(req).ok());
  EXPECT_THAT(coord_->Join(req).status(),
              StatusIs(absl::StatusCode::kAlreadyExists, "rank 1 has already joined"));
  req.requested_rank = 0;
  req.world_size = 4;
  EXPECT_THAT(coord_->Join(req).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "world size mismatch"));
  req.world_size = 0;
  req.requested_rank = -2;
  EXPECT_EQ(coord_->Join(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.requested_rank = 2;
  EXPECT_EQ(coord_->Join(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.requested_rank = 0;
  req.endpoints.assign(kMaxEndpoints + 1, "x");
  EXPECT_EQ(coord_->Join(req).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(coord_->Status().members.size(), 1u);  // nothing changed
}

TEST_F(CoordinatorTest, LeaseExpiryFailsJobNamingRank) {
  Make(3);
  JoinAll();
  clock_.Advance(absl::Seconds(6));
  ASSERT_TRUE(coord_->Heartbeat(0, 5).ok());
  ASSERT_TRUE(coord_->Heartbeat(2, 5).ok());
  clock_.Advance(absl::Seconds(6));  // rank 1: 12 s without a heartbeat
  auto hb = coord_->Heartbeat(0, 6);
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->state, JobState::kFailed);
  EXPECT_THAT(hb->abort_reason, HasSubstr("rank 1 (host host1) lost its lease"));
  // Every later heartbeat says so, including rank 1's own.
  clock_.Advance(absl::Seconds(1));
  for (int r = 0; r < 3; ++r) {
    auto later = coord_->Heartbeat(r, 7);
    ASSERT_TRUE(later.ok());
    EXPECT_EQ(later->state, JobState::kFailed);
    EXPECT_EQ(later->abort_reason, hb->abort_reason);
  }
  JobStatus status = coord_->Status();
  EXPECT_EQ(status.state, JobState::kFailed);
  EXPECT_THAT(status.abort_reason, HasSubstr("rank 1"));
}

TEST_F(CoordinatorTest, PollExpiresLeaseAndAbortsWaits) {
  Make(2);
  JoinAll();
  Result<absl::Status> barrier;
  coord_->Barrier("b", 0, In(absl::Seconds(60)), barrier.Callback());
  Result<absl::StatusOr<std::string>> get;
  coord_->StoreGet("k", In(absl::Seconds(60)), get.Callback());
  clock_.Advance(absl::Seconds(11));
  coord_->Poll();
  ASSERT_TRUE(barrier.value.has_value());
  EXPECT_THAT(*barrier.value, StatusIs(absl::StatusCode::kAborted, "lost its lease"));
  ASSERT_TRUE(get.value.has_value());
  EXPECT_EQ(get.value->status().code(), absl::StatusCode::kAborted);
}

TEST_F(CoordinatorTest, HeartbeatFromUnknownRank) {
  Make(2);
  EXPECT_THAT(coord_->Heartbeat(1, 0).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "rank 1 has not joined"));
  EXPECT_EQ(coord_->Heartbeat(-1, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, StoreGetWaitsForSetAndTimesOut) {
  Make(1);
  Result<absl::StatusOr<std::string>> early, late, missing;
  coord_->StoreGet("addr", In(absl::Seconds(5)), early.Callback());
  EXPECT_FALSE(early.value.has_value());
  ASSERT_TRUE(coord_->StoreSet("addr", "10.0.0.1:1234").ok());
  ASSERT_TRUE(early.value.has_value());
  EXPECT_EQ(**early.value, "10.0.0.1:1234");
  coord_->StoreGet("addr", In(absl::ZeroDuration()), late.Callback());
  EXPECT_EQ(**late.value, "10.0.0.1:1234");

  coord_->StoreGet("nope", In(absl::Seconds(5)), missing.Callback());
  clock_.Advance(absl::Seconds(4));
  coord_->Poll();
  EXPECT_FALSE(missing.value.has_value());
  clock_.Advance(absl::Seconds(2));
  coord_->Poll();
  ASSERT_TRUE(missing.value.has_value());
  EXPECT_THAT(missing.value->status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, "'nope' is not set"));
}

TEST_F(CoordinatorTest, StoreAddCountsAndWakesWaiters) {
  Make(1);
  Result<absl::StatusOr<std::string>> get;
  coord_->StoreGet("n", In(absl::Seconds(5)), get.Callback());
  EXPECT_EQ(*coord_->StoreAdd("n", 3), 3);
  EXPECT_EQ(**get.value, "3");
  EXPECT_EQ(*coord_->StoreAdd("n", -5), -2);
  ASSERT_TRUE(coord_->StoreSet("s", "abc").ok());
  EXPECT_EQ(coord_->StoreAdd("s", 1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, StoreRejectsBadKeysAndValues) {
  Make(1);
  EXPECT_THAT(coord_->StoreSet("", "v"), StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_EQ(coord_->StoreSet(std::string(kMaxKeyBytes + 1, 'k'), "v").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(coord_->StoreSet("k", std::string(kMaxValueBytes + 1, 'v')).code(),
            absl::StatusCode::kInvalidArgument);
  Result<absl::StatusOr<std::string>> get;
  coord_->StoreGet("", In(absl::Seconds(1)), get.Callback());
  EXPECT_EQ(get.value->status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, BarrierCompletesWhenAllArriveAndIsReusable) {
  Make(3);
  JoinAll();
  for (int round = 0; round < 2; ++round) {
    Result<absl::Status> b[3];
    for (int r = 0; r < 3; ++r) {
      coord_->Barrier("sync", r, In(absl::Seconds(5)), b[r].Callback());
      EXPECT_EQ(b[0].value.has_value(), r == 2);
    }
    for (auto& x : b) EXPECT_TRUE(x.value->ok());
  }
}

TEST_F(CoordinatorTest, BarrierTimesOutNamingMissingRanks) {
  Make(4);
  JoinAll();
  Result<absl::Status> b0, b2, again;
  coord_->Barrier("sync", 0, In(absl::Seconds(5)), b0.Callback());
  coord_->Barrier("sync", 2, In(absl::Seconds(8)), b2.Callback());
  coord_->Barrier("sync", 0, In(absl::Seconds(5)), again.Callback());
  EXPECT_THAT(*again.value, StatusIs(absl::StatusCode::kAlreadyExists, "already waiting"));
  clock_.Advance(absl::Seconds(6));
  coord_->Poll();
  EXPECT_THAT(*b0.value, StatusIs(absl::StatusCode::kDeadlineExceeded,
                                  "barrier 'sync': 2 of 4 ranks arrived; missing ranks 1, 3"));
  EXPECT_FALSE(b2.value.has_value());
}

TEST_F(CoordinatorTest, BarrierRequiresJoinedRank) {
  Make(2);
  Result<absl::Status> b;
  coord_->Barrier("x", 1, In(absl::Seconds(1)), b.Callback());
  EXPECT_THAT(*b.value, StatusIs(absl::StatusCode::kFailedPrecondition, "has not joined"));
}

TEST_F(CoordinatorTest, ManifestAgreement) {
  Make(3);
  JoinAll();
  Result<absl::Status> m[3];
  for (int r = 0; r < 3; ++r) {
    coord_->SubmitManifest(r, {"abc", 10}, In(absl::Seconds(5)), m[r].Callback());
  }
  for (auto& x : m) EXPECT_TRUE(x.value->ok()) << *x.value;
  // A rank attaching again is compared with the agreed manifest at once.
  Result<absl::Status> same, other;
  coord_->SubmitManifest(1, {"abc", 10}, In(absl::Seconds(5)), same.Callback());
  EXPECT_TRUE(same.value->ok());
  coord_->SubmitManifest(1, {"xyz", 10}, In(absl::Seconds(5)), other.Callback());
  EXPECT_THAT(*other.value, StatusIs(absl::StatusCode::kFailedPrecondition, "rank 1"));
}

TEST_F(CoordinatorTest, ManifestMismatchNamesFirstDifferingRank) {
  Make(4);
  JoinAll();
  Result<absl::Status> m[4];
  const ManifestDigest digests[] = {{"abc", 10}, {"abc", 10}, {"abd", 10}, {"abc", 11}};
  for (int r = 3; r >= 0; --r) {
    coord_->SubmitManifest(r, digests[r], In(absl::Seconds(5)), m[r].Callback());
  }
  for (auto& x : m) {
    EXPECT_THAT(*x.value, StatusIs(absl::StatusCode::kFailedPrecondition,
                                   "the tensor manifest of rank 2 (digest abd, 10 tensors) "
                                   "differs from rank 0's (digest abc, 10 tensors)"));
  }
}

TEST_F(CoordinatorTest, ManifestTimesOutNamingMissingRanks) {
  Make(3);
  JoinAll();
  Result<absl::Status> m;
  coord_->SubmitManifest(1, {"abc", 1}, In(absl::Seconds(2)), m.Callback());
  clock_.Advance(absl::Seconds(3));
  coord_->Poll();
  EXPECT_THAT(*m.value, StatusIs(absl::StatusCode::kDeadlineExceeded, "missing ranks 0, 2"));
}

TEST_F(CoordinatorTest, FailAndFinish) {
  Make(2);
  JoinAll();
  EXPECT_EQ(*coord_->Finish(0), JobState::kRunning);
  EXPECT_EQ(*coord_->Finish(1), JobState::kFinished);
  EXPECT_EQ(coord_->Fail(0, "late").code(), absl::StatusCode::kFailedPrecondition);
  clock_.Advance(absl::Seconds(100));  // finished ranks hold no lease
  EXPECT_EQ(coord_->Heartbeat(0, 1)->state, JobState::kFinished);

  Make(2);
  JoinAll();
  ASSERT_TRUE(coord_->Fail(1, "CUDA error: out of memory").ok());
  ASSERT_TRUE(coord_->Fail(0, "second").ok());
  auto hb = coord_->Heartbeat(0, 1);
  EXPECT_EQ(hb->state, JobState::kFailed);
  EXPECT_EQ(hb->abort_reason, "rank 1: CUDA error: out of memory");
  JoinRequest req;
  EXPECT_EQ(coord_->Join(req).status().code(), absl::StatusCode::kAborted);
}

TEST_F(CoordinatorTest, ShutdownCompletesWaits) {
  Make(2);
  JoinAll();
  Result<absl::Status> b;
  coord_->Barrier("x", 0, In(absl::Seconds(60)), b.Callback());
  coord_->Shutdown();
  EXPECT_EQ(b.value->code(), absl::StatusCode::kUnavailable);
}

class CheckpointTest : public CoordinatorTest {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("came_ckpt_", ::testing::UnitTest::GetInstance()->random_seed(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static ShardReport Shard(const std::string& id, int rank) {
    return ShardReport{id, rank, absl::StrCat("rank-", rank, ".safetensors"), 100 + rank,
                       std::string(64, 'a' + rank)};
  }
  std::filesystem::path dir_;
};

TEST_F(CheckpointTest, CommitOnlyWhenAllShardsReported) {
  Make(3, dir_.string());
  JoinAll();
  auto begin = coord_->BeginCheckpoint(0, 100);
  ASSERT_TRUE(begin.ok()) << begin.status();
  EXPECT_EQ(begin->id, "step-000000000100");
  EXPECT_TRUE(std::filesystem::is_directory(begin->directory));
  EXPECT_EQ(coord_->BeginCheckpoint(2, 100)->id, begin->id);  // same step, same answer

  ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 0)).ok());
  ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 2)).ok());
  EXPECT_THAT(coord_->CommitCheckpoint(begin->id, 0).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "shards missing from ranks 1"));
  const auto manifest = std::filesystem::path(begin->directory) / kManifestFileName;
  EXPECT_FALSE(std::filesystem::exists(manifest));
  EXPECT_FALSE(coord_->LatestCheckpoint().has_value());

  ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 1)).ok());
  auto commit = coord_->CommitCheckpoint(begin->id, 0);
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_EQ(commit->manifest_path, manifest.string());
  EXPECT_EQ(coord_->CommitCheckpoint(begin->id, 1)->manifest_path, manifest.string());
  EXPECT_EQ(coord_->Status().checkpoint_commits, 1);

  std::ifstream in(manifest);
  nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["step"], 100);
  EXPECT_EQ(j["world_size"], 3);
  ASSERT_EQ(j["shards"].size(), 3u);
  EXPECT_EQ(j["shards"][1]["file"], "rank-1.safetensors");
  EXPECT_EQ(j["shards"][1]["bytes"], 101);
  // Only the manifest remains: no temporary files.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(begin->directory)) {
    ++files;
    EXPECT_EQ(e.path().filename(), kManifestFileName);
  }
  EXPECT_EQ(files, 1);

  auto latest = coord_->LatestCheckpoint();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 100);
  EXPECT_EQ(coord_->BeginCheckpoint(0, 100).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(CheckpointTest, RejectsBadShardReports) {
  Make(2, dir_.string());
  JoinAll();
  auto begin = coord_->BeginCheckpoint(0, 1);
  ASSERT_TRUE(begin.ok());
  ShardReport bad = Shard(begin->id, 0);
  bad.file = "../escape";
  EXPECT_EQ(coord_->ReportShard(bad).code(), absl::StatusCode::kInvalidArgument);
  bad = Shard(begin->id, 0);
  bad.sha256 = "XYZ";
  EXPECT_EQ(coord_->ReportShard(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(coord_->ReportShard(Shard("step-000000000999", 0)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(coord_->ReportShard(Shard(begin->id, 5)).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, RestartedCoordinatorFindsLatestCommit) {
  Make(1, dir_.string());
  JoinAll();
  for (int64_t step : {10, 20}) {
    auto begin = coord_->BeginCheckpoint(0, step);
    ASSERT_TRUE(begin.ok());
    ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 0)).ok());
    ASSERT_TRUE(coord_->CommitCheckpoint(begin->id, 0).ok());
  }
  ASSERT_TRUE(coord_->BeginCheckpoint(0, 30).ok());  // begun, never committed
  Make(1, dir_.string());
  auto latest = coord_->LatestCheckpoint();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 20);
  EXPECT_EQ(latest->id, "step-000000000020");
}

// A save that failed on some rank leaves its checkpoint begun and never committed; later
// saves must still begin (the limit of pending checkpoints counts only live ones).
TEST_F(CheckpointTest, AbandonedCheckpointsNeverBlockLaterOnes) {
  Make(2, dir_.string());
  JoinAll();
  for (int64_t step = 1; step <= 2 * kMaxPendingCheckpoints; ++step) {
    auto begin = coord_->BeginCheckpoint(0, step);
    ASSERT_TRUE(begin.ok()) << "step " << step << ": " << begin.status();
    ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 0)).ok());  // rank 1 never reports
  }
  auto begin = coord_->BeginCheckpoint(1, 2 * kMaxPendingCheckpoints + 1);
  ASSERT_TRUE(begin.ok()) << begin.status();
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, r)).ok());
  EXPECT_TRUE(coord_->CommitCheckpoint(begin->id, 0).ok());
}

// Holds every manifest write until released (a slow disk); the rest goes to the file system.
class SlowStorage : public CheckpointStorage {
 public:
  absl::Status CreateDirectories(const std::string& path) override {
    return RealCheckpointStorage()->CreateDirectories(path);
  }
  absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) override {
    writing.Notify();
    release.WaitForNotificationWithTimeout(absl::Seconds(60));
    return RealCheckpointStorage()->WriteFileAtomically(path, contents);
  }
  absl::Status Prune(const std::string& dir, int keep) override {
    return RealCheckpointStorage()->Prune(dir, keep);
  }
  absl::Notification writing, release;
};

TEST_F(CheckpointTest, ASlowManifestWriteNeverStallsHeartbeatsOrTheStore) {
  SlowStorage storage;
  Make(1, dir_.string(), &storage);
  JoinAll();
  auto begin = coord_->BeginCheckpoint(0, 5);
  ASSERT_TRUE(begin.ok()) << begin.status();
  ASSERT_TRUE(coord_->ReportShard(Shard(begin->id, 0)).ok());
  std::thread committer([&] { EXPECT_TRUE(coord_->CommitCheckpoint(begin->id, 0).ok()); });
  ASSERT_TRUE(storage.writing.WaitForNotificationWithTimeout(absl::Seconds(30)));
  // The commit is writing; the lock-holding calls of every other rank must not wait for it.
  auto quick = std::async(std::launch::async, [&] {
    const bool heartbeat = coord_->Heartbeat(0, 5).ok();
    const bool store = coord_->StoreSet("k", "v").ok();
    const bool status = coord_->Status().state == JobState::kRunning;
    return heartbeat && store && status;
  });
  const bool answered = quick.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  storage.release.Notify();
  committer.join();
  ASSERT_TRUE(answered) << "Heartbeat waited for the manifest write";
  EXPECT_TRUE(quick.get());
  ASSERT_TRUE(coord_->LatestCheckpoint().has_value());
  EXPECT_EQ(coord_->LatestCheckpoint()->step, 5);
}

TEST_F(CheckpointTest, CheckpointsOffWithoutFolder) {
  Make(1);
  JoinAll();
  EXPECT_THAT(coord_->BeginCheckpoint(0, 1).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "checkpoints are off"));
}

TEST(WriteFileAtomicallyTest, ReplacesContents) {
  const std::string path = ::testing::TempDir() + "/came_atomic_test.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "two").ok());
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "two");
  std::filesystem::remove(path);
  EXPECT_EQ(WriteFileAtomically("/nonexistent-dir/x", "a").code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace came::service

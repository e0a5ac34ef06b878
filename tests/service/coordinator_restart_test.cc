// The coordinator's part in restarts and preemption, on a fake clock: restart generations
// in Join (Note [Restart generations]), stop requests carried by heartbeats (Note [Stop
// requests]) and checkpoint retention (Note [Checkpoint retention]).
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/service/checkpoint_files.h"
#include "runtime/service/checkpoint_retention.h"
#include "runtime/service/clock.h"
#include "runtime/service/coordinator.h"
#include "tests/util/temp_dir.h"

namespace came::service {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

MATCHER_P2(StatusIs, code, substring, "") {
  const absl::Status& s = arg;
  *result_listener << "status is " << s;
  return s.code() == code && absl::StrContains(s.message(), substring);
}

class CoordinatorRestartTest : public ::testing::Test {
 protected:
  std::unique_ptr<Coordinator> Make(int64_t generation, std::string checkpoint_dir = "",
                                    int keep = 0) {
    CoordinatorOptions options;
    options.world_size = 2;
    options.token = "token";
    options.config.checkpoint_dir = std::move(checkpoint_dir);
    options.generation = generation;
    options.keep_checkpoints = keep;
    auto c = Coordinator::Create(options, &clock_);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }
  static absl::Status JoinAs(Coordinator& c, int rank, int64_t generation) {
    JoinRequest request;
    request.requested_rank = rank;
    request.generation = generation;
    return c.Join(request).status();
  }
  // Saves a checkpoint of `step` with both ranks' (empty) shards and commits it.
  static void Save(Coordinator& c, int64_t step) {
    auto begun = c.BeginCheckpoint(0, step);
    ASSERT_TRUE(begun.ok()) << begun.status();
    for (int rank = 0; rank < 2; ++rank) {
      const std::string file = absl::StrCat("rank-", rank, ".safetensors");
      std::ofstream(fs::path(begun->directory) / file) << "shard";
      ASSERT_TRUE(c.ReportShard(ShardReport{begun->id, rank, file, 5, std::string(64, 'a')}).ok());
    }
    ASSERT_TRUE(c.CommitCheckpoint(begun->id, 0).ok());
  }
  static std::vector<std::string> Folders(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  FakeClock clock_;
};

TEST_F(CoordinatorRestartTest, AdmitsOnlyRanksOfItsGeneration) {
  std::unique_ptr<Coordinator> c = Make(1);
  // A rank of the next attempt retries until the restarted coordinator answers.
  EXPECT_THAT(JoinAs(*c, 0, 2), StatusIs(absl::StatusCode::kUnavailable, "generation 1"));
  // A straggler of the failed attempt does not get in.
  EXPECT_THAT(JoinAs(*c, 0, 0),
              StatusIs(absl::StatusCode::kFailedPrecondition, "has restarted as generation 1"));
  EXPECT_TRUE(JoinAs(*c, 0, 1).ok());
  EXPECT_EQ(c->Status().generation, 1);
  EXPECT_EQ(c->Status().members.size(), 1u);  // the refused joins changed nothing
}

TEST_F(CoordinatorRestartTest, StopRequestReachesEveryHeartbeat) {
  testing::TempDir dir("came-coordinator-restart");
  std::unique_ptr<Coordinator> c = Make(0, (dir.path / "ckpt").string());
  ASSERT_TRUE(JoinAs(*c, 0, 0).ok());
  ASSERT_TRUE(JoinAs(*c, 1, 0).ok());
  EXPECT_FALSE(c->Heartbeat(0, 3)->stop_requested);
  ASSERT_TRUE(c->RequestStop().ok());
  EXPECT_TRUE(c->Heartbeat(0, 4)->stop_requested);
  EXPECT_TRUE(c->Heartbeat(1, 4)->stop_requested);
  EXPECT_TRUE(c->Status().stop_requested);
  EXPECT_EQ(c->Heartbeat(1, 4)->state, JobState::kRunning);  // stopping is not failing
}

TEST_F(CoordinatorRestartTest, StopRequestNeedsCheckpointsAndALiveJob) {
  std::unique_ptr<Coordinator> no_checkpoints = Make(0);
  EXPECT_THAT(no_checkpoints->RequestStop(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "no checkpoint folder"));
  testing::TempDir dir("came-coordinator-restart");
  std::unique_ptr<Coordinator> c = Make(0, (dir.path / "ckpt").string());
  ASSERT_TRUE(JoinAs(*c, 0, 0).ok());
  ASSERT_TRUE(c->Fail(0, "boom").ok());
  EXPECT_THAT(c->RequestStop(), StatusIs(absl::StatusCode::kFailedPrecondition, "FAILED"));
}

TEST_F(CoordinatorRestartTest, KeepsTheNewestCheckpointsAndDropsDebris) {
  testing::TempDir dir("came-coordinator-restart");
  const fs::path root = dir.path / "ckpt";
  std::unique_ptr<Coordinator> c = Make(0, root.string(), /*keep=*/2);
  ASSERT_TRUE(JoinAs(*c, 0, 0).ok());
  ASSERT_TRUE(JoinAs(*c, 1, 0).ok());
  Save(*c, 10);
  Save(*c, 20);
  // A save interrupted by a crash left a folder without a manifest.
  fs::create_directories(root / CheckpointId(25));
  std::ofstream(root / CheckpointId(25) / "rank-0.safetensors") << "partial";
  // A newer checkpoint in progress when the next one commits is left alone.
  ASSERT_TRUE(c->BeginCheckpoint(0, 40).ok());
  Save(*c, 30);
  EXPECT_THAT(Folders(root),
              ElementsAre(CheckpointId(20), CheckpointId(30), CheckpointId(40)));
  EXPECT_THAT(CommittedCheckpointSteps(root.string()), ElementsAre(20, 30));
  // A restarted coordinator resumes from the newest.
  EXPECT_EQ(FindLatestCheckpoint(root.string())->step, 30);
}

TEST_F(CoordinatorRestartTest, PruneKeepsAtLeastOne) {
  testing::TempDir dir("came-coordinator-restart");
  EXPECT_THAT(PruneCheckpoints(dir.path.string(), 0),
              StatusIs(absl::StatusCode::kInvalidArgument, "keep"));
  EXPECT_TRUE(PruneCheckpoints((dir.path / "missing").string(), 1).ok());
}

}  // namespace
}  // namespace came::service

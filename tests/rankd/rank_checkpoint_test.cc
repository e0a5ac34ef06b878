// Checkpoints through RankCore at W = 2 (ranks as threads, Gloo over an in-memory store, a real
// in-process Coordinator committing the manifests): a save that fails on one rank fails on
// every rank at once and the job keeps training and saving; ranks that would load different
// or unreadable manifests all refuse at once and keep their state (Note [Save agreement] and
// Note [Load agreement] in runtime/rankd/rank_core.cc).
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/rankd/coordinated_cores.h"

namespace came::rankd {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr absl::Duration kCollectiveTimeout = absl::Seconds(60);
// Far below kCollectiveTimeout: a rank left waiting in a collective would exceed it.
constexpr absl::Duration kPrompt = absl::Seconds(15);

class RankCheckpointTest : public rankd_test::CoordinatedCores {
 protected:
  void SetUp() override { Start({.tag = "rckt", .collective_timeout = kCollectiveTimeout}); }
};

TEST_F(RankCheckpointTest, ASaveThatFailsOnOneRankFailsOnEveryRankPromptlyAndLaterSavesWork) {
  StepAll(1);
  bad_rank_ = 1;  // rank 1's folder does not exist: its shard cannot be created
  const absl::Time start = absl::Now();
  auto failed = SaveAll(1);
  EXPECT_LT(absl::Now() - start, kPrompt);
  EXPECT_THAT(std::string(failed[1].status().message()), HasSubstr("rank 1 could not save step 1"));
  EXPECT_EQ(failed[0].status().code(), absl::StatusCode::kAborted) << failed[0].status();
  EXPECT_THAT(std::string(failed[0].status().message()), HasSubstr("1 other rank(s)"));
  EXPECT_FALSE(coord_->LatestCheckpoint().has_value());
  for (auto& c : cores_) EXPECT_TRUE(c->aborted().ok()) << c->aborted();

  bad_rank_ = -1;
  StepAll(2);  // the job keeps training
  auto saved = SaveAll(2);
  ExpectAllOk(saved);
  ASSERT_TRUE(coord_->LatestCheckpoint().has_value());
  EXPECT_EQ(coord_->LatestCheckpoint()->step, 2);
  EXPECT_TRUE(fs::exists(saved[0]->manifest_path));
  StepAll(3);
  ExpectAllOk(SaveAll(3));  // the abandoned step-1 checkpoint blocks nothing
  EXPECT_EQ(coord_->LatestCheckpoint()->step, 3);
}

TEST_F(RankCheckpointTest, RanksThatWouldLoadDifferentManifestsAllRefuseAndKeepTheirState) {
  StepAll(1);
  auto one = SaveAll(1);
  ExpectAllOk(one);
  StepAll(2);
  auto two = SaveAll(2);
  ExpectAllOk(two);
  StepAll(3);
  const auto before0 = Params(0), before1 = Params(1);
  const absl::Time start = absl::Now();
  auto loaded = LoadAll({one[0]->manifest_path, two[1]->manifest_path});
  EXPECT_LT(absl::Now() - start, kPrompt);
  EXPECT_EQ(loaded[1].status().code(), absl::StatusCode::kFailedPrecondition) << loaded[1].status();
  EXPECT_THAT(std::string(loaded[1].status().message()), HasSubstr("disagree"));
  EXPECT_EQ(loaded[0].status().code(), absl::StatusCode::kFailedPrecondition) << loaded[0].status();
  EXPECT_THAT(std::string(loaded[0].status().message()), HasSubstr("different manifest"));
  EXPECT_EQ(Params(0), before0);
  EXPECT_EQ(Params(1), before1);
  StepAll(4);  // nothing was loaded: step 4 follows step 3
  ExpectAllOk(LoadAll({two[0]->manifest_path, two[0]->manifest_path}));
}

TEST_F(RankCheckpointTest, AManifestOneRankCannotReadFailsTheLoadOnEveryRankPromptly) {
  StepAll(1);
  auto saved = SaveAll(1);
  ExpectAllOk(saved);
  StepAll(2);
  const fs::path copy = fs::path(saved[0]->manifest_path).parent_path() / "typed.json";
  {
    std::ifstream in(saved[0]->manifest_path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find("\"step\": 1");
    ASSERT_NE(at, std::string::npos);
    text.replace(at, 9, "\"step\": \"1\"");
    std::ofstream(copy) << text;
  }
  const absl::Time start = absl::Now();
  auto loaded = LoadAll({saved[0]->manifest_path, copy.string()});
  EXPECT_LT(absl::Now() - start, kPrompt);
  EXPECT_EQ(loaded[1].status().code(), absl::StatusCode::kDataLoss) << loaded[1].status();
  EXPECT_THAT(std::string(loaded[1].status().message()), HasSubstr("typed.json"));
  EXPECT_EQ(loaded[0].status().code(), absl::StatusCode::kFailedPrecondition) << loaded[0].status();
  for (auto& c : cores_) EXPECT_TRUE(c->aborted().ok()) << c->aborted();
  StepAll(3);
}

}  // namespace
}  // namespace came::rankd

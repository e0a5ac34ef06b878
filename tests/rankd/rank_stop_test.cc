// Automatic checkpoints and stop requests through RankCore at W = 2 (ranks as threads, Gloo
// over an in-memory store, a real in-process Coordinator committing the manifests): with
// checkpoint_every N every rank saves after every N-th step by itself; a stop requested on
// one rank only makes both save the same step and refuse every later step (Note [Stop
// requests] in runtime/service/coordinator.h).
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/rankd/coordinated_cores.h"

namespace came::rankd {
namespace {

using ::testing::ElementsAre;

class RankStopTest : public rankd_test::CoordinatedCores {
 protected:
  void Start(int64_t checkpoint_every) {
    CoordinatedCores::Start({.tag = "rstop", .checkpoint_every = checkpoint_every});
  }
};

TEST_F(RankStopTest, EveryNthStepIsSavedAndASecondSaveOfItReturnsTheFirst) {
  Start(/*checkpoint_every=*/3);
  for (int64_t step = 1; step <= 7; ++step) {
    for (const auto& out : StepEach(step)) ASSERT_TRUE(out.ok()) << out.status();
  }
  EXPECT_THAT(Committed(), ElementsAre(3, 6));
  ASSERT_TRUE(StepEach(8)[0].ok());
  ASSERT_TRUE(StepEach(9)[0].ok());
  EXPECT_THAT(Committed(), ElementsAre(3, 6, 9));
  // The trainer saving the step the runtime just saved gets that checkpoint back.
  auto saved = All<absl::StatusOr<SavedCheckpoint>>(
      [&](int r, auto done) { cores_[r]->SaveCheckpoint(ids_[r], 9, std::move(done)); });
  for (const auto& s : saved) {
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->id, "step-000000000009");
  }
}

// An automatic save that fails on one rank (its disk is full) is reported by every rank's
// Step, whose step was taken; training goes on and the next automatic save commits.
TEST_F(RankStopTest, AFailedAutomaticSaveIsReportedAndTrainingGoesOn) {
  Start(/*checkpoint_every=*/2);
  for (const auto& out : StepEach(1)) ASSERT_TRUE(out.ok()) << out.status();
  failing_report_rank_ = 1;
  for (const auto& out : StepEach(2)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_THAT(out->checkpoint_error, ::testing::HasSubstr("automatic checkpoint of step 2"));
  }
  EXPECT_TRUE(Committed().empty());
  failing_report_rank_ = -1;
  for (const auto& out : StepEach(3)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->checkpoint_error, "");
  }
  for (const auto& out : StepEach(4)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->checkpoint_error, "");
  }
  EXPECT_THAT(Committed(), ElementsAre(4));
}

TEST_F(RankStopTest, AStopRequestedOnOneRankStopsEveryRankAfterTheSameSavedStep) {
  Start(/*checkpoint_every=*/0);
  for (const auto& out : StepEach(1)) ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Committed().empty());
  cores_[1]->RequestStop();  // rank 1's heartbeat saw the request; rank 0's not yet
  for (const auto& out : StepEach(2)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_FALSE(out->stopped);  // step 2 ran on both, and was saved
    EXPECT_TRUE(out->stats.stop_voted);
  }
  EXPECT_THAT(Committed(), ElementsAre(2));
  for (int64_t step = 3; step <= 4; ++step) {
    for (const auto& out : StepEach(step)) {
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_TRUE(out->stopped);
      EXPECT_EQ(out->stopped_after, 2);
    }
  }
  EXPECT_THAT(Committed(), ElementsAre(2));
}

}  // namespace
}  // namespace came::rankd

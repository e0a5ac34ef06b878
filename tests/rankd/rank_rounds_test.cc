// Every collective call of RankCore opens with a round header that names its kind (Note
// [Step rounds] in runtime/sharded_came.h), ranks as threads (Gloo over an in-memory store, a
// real in-process Coordinator): calls that cannot pair (an export against a save, load or
// detach) and calls one rank refuses (a step out of order, a save of the wrong step) fail on
// every rank at once, far within the collective deadline, change nothing, and the job goes on.
#include <filesystem>
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
using ::came::rankd_test::StepLr;
using ::testing::HasSubstr;

constexpr absl::Duration kCollectiveTimeout = absl::Seconds(30);
// A small fraction of kCollectiveTimeout: a rank left waiting in a collective exceeds it.
constexpr absl::Duration kPrompt = absl::Seconds(5);

class RankRoundsTest : public rankd_test::CoordinatedCores {
 protected:
  void SetUp() override { Start({.tag = "rrnd", .collective_timeout = kCollectiveTimeout}); }

  // Runs calls[r](done) on rank r, every rank at once; returns each rank's status and how
  // long the slowest took.
  std::vector<absl::Status> Mixed(
      const std::vector<std::function<void(RankCore::Done<absl::Status>)>>& calls) {
    const absl::Time start = absl::Now();
    auto out = All<absl::Status>([&](int r, auto done) { calls[r](std::move(done)); });
    took_ = absl::Now() - start;
    return out;
  }
  std::function<void(RankCore::Done<absl::Status>)> Export(int r) {
    return [this, r](RankCore::Done<absl::Status> done) {
      cores_[r]->ExportState(ids_[r], [done = std::move(done)](auto t) mutable { done(t.status()); });
    };
  }
  std::function<void(RankCore::Done<absl::Status>)> Save(int r, int64_t step) {
    return [this, r, step](RankCore::Done<absl::Status> done) {
      cores_[r]->SaveCheckpoint(ids_[r], step,
                                [done = std::move(done)](auto s) mutable { done(s.status()); });
    };
  }
  std::function<void(RankCore::Done<absl::Status>)> Load(int r, std::string path) {
    return [this, r, path](RankCore::Done<absl::Status> done) {
      cores_[r]->LoadCheckpoint(ids_[r], path,
                                [done = std::move(done)](auto s) mutable { done(s.status()); });
    };
  }
  std::function<void(RankCore::Done<absl::Status>)> Step(int r, StepCall call) {
    call.attachment_id = ids_[r];
    return [this, r, call](RankCore::Done<absl::Status> done) {
      cores_[r]->Step(call, [done = std::move(done)](auto s) mutable { done(s.status()); });
    };
  }
  std::function<void(RankCore::Done<absl::Status>)> Detach(int r) {
    return [this, r](RankCore::Done<absl::Status> done) {
      cores_[r]->Detach(ids_[r], std::move(done));
    };
  }
  static StepCall Call(int64_t step) {
    StepCall c;
    c.step = step;
    c.lr = StepLr(step);
    return c;
  }
  // Expects code and message on every rank, within kPrompt, and no abort.
  void ExpectEverywhere(const std::vector<absl::Status>& s, absl::StatusCode code,
                        const std::string& substr) {
    EXPECT_LT(took_, kPrompt);
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_EQ(s[r].code(), code) << "rank " << r << ": " << s[r];
      EXPECT_THAT(std::string(s[r].message()), HasSubstr(substr)) << "rank " << r;
      EXPECT_TRUE(cores_[r]->aborted().ok()) << cores_[r]->aborted();
    }
  }

  absl::Duration took_;
};

TEST_F(RankRoundsTest, AnExportAgainstASaveFailsBothAtOnceAndChangesNothing) {
  StepAll(1);
  StepAll(2);
  const auto before = Params(0);
  ExpectEverywhere(Mixed({Export(0), Save(1, 2)}), absl::StatusCode::kFailedPrecondition,
                   "do not pair up: export on rank 0 (step 2), save on rank 1 (step 2)");
  EXPECT_FALSE(coord_->LatestCheckpoint().has_value());
  EXPECT_EQ(Params(0), before);
  ExpectAllOk(SaveAll(2));  // every rank saving works, then steps go on
  StepAll(3);
  EXPECT_NE(Params(0), before);
}

TEST_F(RankRoundsTest, AnAutomaticSaveIsASaveRoundAndALoadPairsOnlyWithLoads) {
  StepAll(1);
  ExpectAllOk(SaveAll(1));
  const std::string manifest = coord_->LatestCheckpoint()->manifest_path;
  StepAll(2);
  const auto before = Params(1);
  ExpectEverywhere(Mixed({Load(0, manifest), Export(1)}), absl::StatusCode::kFailedPrecondition,
                   "do not pair up: export on rank 1 (step 2), load on rank 0 (step 2)");
  EXPECT_EQ(Params(1), before);
  ExpectEverywhere(Mixed({Load(0, manifest), Step(1, Call(3))}),
                   absl::StatusCode::kFailedPrecondition,
                   "do not pair up: step on rank 1 (step 3), load on rank 0 (step 2)");
  EXPECT_EQ(Params(1), before);
  ExpectAllOk(LoadAll({manifest, manifest}));
  StepAll(2);
}

TEST_F(RankRoundsTest, ADetachFailsAnotherRanksPendingExportAtOnce) {
  StepAll(1);
  auto s = Mixed({Export(0), Detach(1)});
  EXPECT_LT(took_, kPrompt);
  EXPECT_TRUE(s[1].ok()) << s[1];  // the detach itself succeeds
  EXPECT_EQ(s[0].code(), absl::StatusCode::kFailedPrecondition) << s[0];
  EXPECT_THAT(std::string(s[0].message()),
              HasSubstr("export on rank 0 (step 1), detach on rank 1 (step 1)"));
  for (auto& c : cores_) EXPECT_TRUE(c->aborted().ok()) << c->aborted();
  // Rank 0's later calls fail at once too (its peer is gone), and its own Detach does not
  // wait for rank 1.
  s = Mixed({Step(0, Call(2)), [](auto done) { done(absl::OkStatus()); }});
  EXPECT_EQ(s[0].code(), absl::StatusCode::kFailedPrecondition) << s[0];
  EXPECT_THAT(std::string(s[0].message()), HasSubstr("detach this rank too"));
  s = Mixed({Detach(0), [](auto done) { done(absl::OkStatus()); }});
  EXPECT_LT(took_, kPrompt);
  EXPECT_TRUE(s[0].ok()) << s[0];
  EXPECT_TRUE(cores_[0]->aborted().ok()) << cores_[0]->aborted();
}

TEST_F(RankRoundsTest, EveryRankDetachingTogetherSucceeds) {
  StepAll(1);
  auto s = Mixed({Detach(0), Detach(1)});
  EXPECT_LT(took_, kPrompt);
  for (const absl::Status& x : s) EXPECT_TRUE(x.ok()) << x;
}

TEST_F(RankRoundsTest, AStepOneRankRefusesFailsOnEveryRankAtOnce) {
  StepAll(1);
  StepAll(2);
  const auto before = Params(0);
  struct Case {
    const char* what;
    std::function<void(StepCall&)> edit;
    absl::StatusCode code;
    const char* message;
  } cases[] = {
      {"out of order", [](StepCall& c) { c.step = 2; }, absl::StatusCode::kFailedPrecondition,
       "step 2 is out of order"},
      {"lr count", [](StepCall& c) { c.lr.pop_back(); }, absl::StatusCode::kInvalidArgument,
       "expected one lr per parameter group (2), got 1"},
      {"step number", [](StepCall& c) { c.step = 0; }, absl::StatusCode::kInvalidArgument,
       "step must be >= 1, got 0"},
      {"max_grad_norm", [](StepCall& c) { c.max_grad_norm = -1; },
       absl::StatusCode::kInvalidArgument, "max_grad_norm must be finite and >= 0"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    StepCall bad = Call(3);
    k.edit(bad);
    auto s = Mixed({Step(0, Call(3)), Step(1, bad)});
    EXPECT_LT(took_, kPrompt);
    EXPECT_EQ(s[1].code(), k.code) << s[1];
    EXPECT_THAT(std::string(s[1].message()), HasSubstr(k.message));
    EXPECT_EQ(s[0].code(), absl::StatusCode::kInvalidArgument) << s[0];
    EXPECT_THAT(std::string(s[0].message()),
                HasSubstr("step 3: rank 1 refused its step inputs"));
    EXPECT_EQ(Params(0), before);
  }
  for (auto& c : cores_) EXPECT_TRUE(c->aborted().ok()) << c->aborted();
  StepAll(3);
  EXPECT_NE(Params(0), before);
}

TEST_F(RankRoundsTest, ASaveOneRankRefusesFailsOnEveryRankAtOnce) {
  StepAll(1);
  StepAll(2);
  auto s = Mixed({Save(0, 1), Save(1, 2)});
  EXPECT_LT(took_, kPrompt);
  EXPECT_EQ(s[0].code(), absl::StatusCode::kFailedPrecondition) << s[0];
  EXPECT_THAT(std::string(s[0].message()),
              HasSubstr("asked to save step 1 but the state is that after step 2"));
  EXPECT_EQ(s[1].code(), absl::StatusCode::kFailedPrecondition) << s[1];
  EXPECT_THAT(std::string(s[1].message()), HasSubstr("rank 0 refused the save"));
  EXPECT_FALSE(coord_->LatestCheckpoint().has_value());
  for (auto& c : cores_) EXPECT_TRUE(c->aborted().ok()) << c->aborted();
  ExpectAllOk(SaveAll(2));
  StepAll(3);
}

}  // namespace
}  // namespace came::rankd

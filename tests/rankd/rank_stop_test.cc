// Automatic checkpoints and stop requests through RankCore at W = 2 (ranks as threads, Gloo
// over an in-memory store, a real in-process Coordinator committing the manifests): with
// checkpoint_every N every rank saves after every N-th step by itself; a stop requested on
// one rank only makes both save the same step and refuse every later step (Note [Stop
// requests] in runtime/service/coordinator.h).
#include <unistd.h>

#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/checkpoint_retention.h"
#include "runtime/service/coordinator.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/util/temp_dir.h"

namespace came::rankd {
namespace {

using ::came::rankd_test::StepLr;
using ::testing::ElementsAre;

constexpr int kWorld = 2;

class RankStopTest : public ::testing::Test {
 protected:
  void Start(int64_t checkpoint_every) {
    service::CoordinatorOptions co;
    co.world_size = kWorld;
    co.token = "t";
    co.config.checkpoint_dir = (dir_.path / "ckpt").string();
    co.config.checkpoint_every = checkpoint_every;
    auto coord = service::Coordinator::Create(co);
    ASSERT_TRUE(coord.ok()) << coord.status();
    coord_ = *std::move(coord);
    for (int r = 0; r < kWorld; ++r) {
      service::JoinRequest j;
      j.requested_rank = r;
      ASSERT_TRUE(coord_->Join(j).ok());
    }
    auto store = comm::InMemoryStore::Create();
    std::vector<absl::StatusOr<std::unique_ptr<comm::Communicator>>> comms(kWorld);
    std::vector<std::thread> threads;
    for (int r = 0; r < kWorld; ++r)
      threads.emplace_back([&, r] { comms[r] = comm::GlooCommunicator::Create(*store, r, kWorld); });
    for (auto& t : threads) t.join();
    static std::atomic<int> counter{0};
    const std::string prefix = absl::StrCat("/came-rstop-", getpid(), "-", counter++);
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_TRUE(comms[r].ok()) << comms[r].status();
      RankCoreOptions o;
      o.rank = r;
      o.world_size = kWorld;
      o.shm_prefix = absl::StrCat(prefix, "-r", r);
      o.checkpoint_every = checkpoint_every;
      o.collective_timeout = absl::Seconds(60);
      auto core = RankCore::Create(
          o, *std::move(comms[r]),
          [](const std::string&, int64_t, absl::Duration) { return absl::OkStatus(); }, nullptr,
          Hooks(r));
      ASSERT_TRUE(core.ok()) << core.status();
      cores_.push_back(*std::move(core));
    }
    Manifest m{testing::TestModel(), testing::TestGroups()};
    auto layouts = All<absl::StatusOr<Layout>>([&](int r, auto done) { cores_[r]->Attach(m, std::move(done)); });
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_TRUE(layouts[r].ok()) << layouts[r].status();
      ids_.push_back(layouts[r]->attachment_id);
      auto g = SharedBuffer::Open(layouts[r]->grads_name, layouts[r]->buffer_bytes);
      ASSERT_TRUE(g.ok());
      grads_.push_back(*std::move(g));
      plan_ = layouts[r]->plan;
    }
    for (auto& s : All<absl::StatusOr<StateBytes>>(
             [&](int r, auto done) { cores_[r]->SyncParameters(ids_[r], std::move(done)); }))
      ASSERT_TRUE(s.ok()) << s.status();
  }
  void TearDown() override { cores_.clear(); }

  CheckpointHooks Hooks(int rank) {
    CheckpointHooks h;
    h.begin = [this, rank](int64_t step) -> absl::StatusOr<std::pair<std::string, std::string>> {
      auto info = coord_->BeginCheckpoint(rank, step);
      if (!info.ok()) return info.status();
      return std::pair{info->id, info->directory};
    };
    h.report = [this, rank](const std::string& id, const std::string& file, int64_t bytes,
                            const std::string& sha) {
      if (rank == failing_rank_.load())
        return absl::ResourceExhaustedError("no space left on device (injected)");
      return coord_->ReportShard(service::ShardReport{id, rank, file, bytes, sha});
    };
    h.commit = [this, rank](const std::string& id) -> absl::StatusOr<std::string> {
      auto info = coord_->CommitCheckpoint(id, rank);
      if (!info.ok()) return info.status();
      return info->manifest_path;
    };
    h.latest = [this]() -> absl::StatusOr<std::string> {
      auto info = coord_->LatestCheckpoint();
      if (!info.has_value()) return absl::NotFoundError("no checkpoint");
      return info->manifest_path;
    };
    return h;
  }

  // Runs call(r, done) on every rank concurrently; returns every rank's result.
  template <typename T, typename Fn>
  std::vector<T> All(Fn call) {
    std::vector<std::future<T>> fs;
    for (int r = 0; r < kWorld; ++r) {
      auto p = std::make_shared<std::promise<T>>();
      fs.push_back(p->get_future());
      call(r, [p](T v) { p->set_value(std::move(v)); });
    }
    std::vector<T> out;
    for (auto& f : fs) {
      EXPECT_EQ(f.wait_for(std::chrono::seconds(120)), std::future_status::ready);
      out.push_back(f.get());
    }
    return out;
  }

  std::vector<absl::StatusOr<StepOutcome>> StepAll(int64_t step) {
    for (int r = 0; r < kWorld; ++r) {
      float* g = static_cast<float*>(grads_[r]->data());
      for (size_t t = 0; t < plan_.tensors.size(); ++t)
        for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
          g[plan_.tensors[t].offset + i] =
              static_cast<float>(testing::Grad(r, static_cast<int>(step), static_cast<int>(t), i));
    }
    return All<absl::StatusOr<StepOutcome>>([&](int r, auto done) {
      StepCall c;
      c.attachment_id = ids_[r];
      c.step = step;
      c.lr = StepLr(step);
      cores_[r]->Step(std::move(c), std::move(done));
    });
  }

  std::vector<int64_t> Committed() {
    return service::CommittedCheckpointSteps((dir_.path / "ckpt").string());
  }

  std::atomic<int> failing_rank_{-1};  // this rank's shard reports fail (a full disk)
  came::testing::TempDir dir_{"came-rank-stop"};
  std::unique_ptr<service::Coordinator> coord_;
  std::vector<std::unique_ptr<RankCore>> cores_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<SharedBuffer>> grads_;
  ShardPlan plan_;
};

TEST_F(RankStopTest, EveryNthStepIsSavedAndASecondSaveOfItReturnsTheFirst) {
  Start(/*checkpoint_every=*/3);
  for (int64_t step = 1; step <= 7; ++step) {
    for (const auto& out : StepAll(step)) ASSERT_TRUE(out.ok()) << out.status();
  }
  EXPECT_THAT(Committed(), ElementsAre(3, 6));
  ASSERT_TRUE(StepAll(8)[0].ok());
  ASSERT_TRUE(StepAll(9)[0].ok());
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
  for (const auto& out : StepAll(1)) ASSERT_TRUE(out.ok()) << out.status();
  failing_rank_ = 1;
  for (const auto& out : StepAll(2)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_THAT(out->checkpoint_error, ::testing::HasSubstr("automatic checkpoint of step 2"));
  }
  EXPECT_TRUE(Committed().empty());
  failing_rank_ = -1;
  for (const auto& out : StepAll(3)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->checkpoint_error, "");
  }
  for (const auto& out : StepAll(4)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->checkpoint_error, "");
  }
  EXPECT_THAT(Committed(), ElementsAre(4));
}

TEST_F(RankStopTest, AStopRequestedOnOneRankStopsEveryRankAfterTheSameSavedStep) {
  Start(/*checkpoint_every=*/0);
  for (const auto& out : StepAll(1)) ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(Committed().empty());
  cores_[1]->RequestStop();  // rank 1's heartbeat saw the request; rank 0's not yet
  for (const auto& out : StepAll(2)) {
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_FALSE(out->stopped);  // step 2 ran on both, and was saved
    EXPECT_TRUE(out->stats.stop_voted);
  }
  EXPECT_THAT(Committed(), ElementsAre(2));
  for (int64_t step = 3; step <= 4; ++step) {
    for (const auto& out : StepAll(step)) {
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_TRUE(out->stopped);
      EXPECT_EQ(out->stopped_after, 2);
    }
  }
  EXPECT_THAT(Committed(), ElementsAre(2));
}

}  // namespace
}  // namespace came::rankd

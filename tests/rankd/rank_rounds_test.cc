// Every collective call of RankCore opens with a round header that names its kind (Note
// [Step rounds] in runtime/sharded_came.h), ranks as threads (Gloo over an in-memory store, a
// real in-process Coordinator): calls that cannot pair (an export against a save, load or
// detach) and calls one rank refuses (a step out of order, a save of the wrong step) fail on
// every rank at once, far within the collective deadline, change nothing, and the job goes on.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/coordinator.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/util/temp_dir.h"

namespace came::rankd {
namespace {

namespace fs = std::filesystem;
using ::came::rankd_test::StepLr;
using ::testing::HasSubstr;

constexpr int kWorld = 2;
constexpr absl::Duration kCollectiveTimeout = absl::Seconds(30);
// A small fraction of kCollectiveTimeout: a rank left waiting in a collective exceeds it.
constexpr absl::Duration kPrompt = absl::Seconds(5);

template <typename T>
std::pair<RankCore::Done<T>, std::future<T>> Callback() {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  return {[p](T v) { p->set_value(std::move(v)); }, std::move(f)};
}

class RankRoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    service::CoordinatorOptions co;
    co.world_size = kWorld;
    co.token = "t";
    co.config.checkpoint_dir = (dir_.path / "ckpt").string();
    co.config.plan_alignment = 16;
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
    const std::string prefix = absl::StrCat("/came-rrnd-", getpid(), "-", counter++);
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_TRUE(comms[r].ok()) << comms[r].status();
      RankCoreOptions o;
      o.rank = r;
      o.world_size = kWorld;
      o.alignment = co.config.plan_alignment;  // as came-rankd follows the job's configuration
      o.shm_prefix = absl::StrCat(prefix, "-r", r);
      o.collective_timeout = kCollectiveTimeout;
      auto core = RankCore::Create(
          o, *std::move(comms[r]), [](const std::string&, int64_t, absl::Duration) { return absl::OkStatus(); },
          nullptr, Hooks(r));
      ASSERT_TRUE(core.ok()) << core.status();
      cores_.push_back(*std::move(core));
    }
    Manifest m{testing::TestModel(), testing::TestGroups()};
    std::vector<std::future<absl::StatusOr<Layout>>> attached;
    for (auto& c : cores_) {
      auto [done, f] = Callback<absl::StatusOr<Layout>>();
      c->Attach(m, std::move(done));
      attached.push_back(std::move(f));
    }
    const auto initial = testing::InitialParams(testing::TestModel());
    for (int r = 0; r < kWorld; ++r) {
      auto layout = attached[r].get();
      ASSERT_TRUE(layout.ok()) << layout.status();
      ids_.push_back(layout->attachment_id);
      auto p = SharedBuffer::Open(layout->params_name, layout->buffer_bytes);
      auto g = SharedBuffer::Open(layout->grads_name, layout->buffer_bytes);
      ASSERT_TRUE(p.ok()) << p.status();
      ASSERT_TRUE(g.ok()) << g.status();
      params_.push_back(*std::move(p));
      grads_.push_back(*std::move(g));
      plan_ = layout->plan;
      float* v = static_cast<float*>(params_.back()->data());
      for (size_t t = 0; t < plan_.tensors.size(); ++t)
        for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
          v[plan_.tensors[t].offset + i] = static_cast<float>(initial[t][i]);
    }
    ExpectAllOk(All<absl::StatusOr<StateBytes>>([&](int r, auto done) { cores_[r]->SyncParameters(ids_[r], std::move(done)); }));
  }

  void TearDown() override { cores_.clear(); }

  // The coordinator's checkpoint calls, with a bad folder for rank `bad_rank_` while set.
  CheckpointHooks Hooks(int rank) {
    CheckpointHooks h;
    h.begin = [this, rank](int64_t step) -> absl::StatusOr<std::pair<std::string, std::string>> {
      auto info = coord_->BeginCheckpoint(rank, step);
      if (!info.ok()) return info.status();
      if (rank == bad_rank_.load()) return std::pair{info->id, (dir_.path / "no" / "such").string()};
      return std::pair{info->id, info->directory};
    };
    h.report = [this, rank](const std::string& id, const std::string& file, int64_t bytes,
                            const std::string& sha) {
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
      auto [done, f] = Callback<T>();
      call(r, std::move(done));
      fs.push_back(std::move(f));
    }
    std::vector<T> out;
    for (auto& f : fs) {
      EXPECT_EQ(f.wait_for(std::chrono::seconds(120)), std::future_status::ready);
      out.push_back(f.get());
    }
    return out;
  }

  template <typename T>
  void ExpectAllOk(const std::vector<T>& results) {
    for (size_t r = 0; r < results.size(); ++r) EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
  }

  void StepAll(int64_t step) {
    for (int r = 0; r < kWorld; ++r) {
      float* g = static_cast<float*>(grads_[r]->data());
      for (size_t t = 0; t < plan_.tensors.size(); ++t)
        for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
          g[plan_.tensors[t].offset + i] = static_cast<float>(testing::Grad(r, static_cast<int>(step), static_cast<int>(t), i));
    }
    ExpectAllOk(All<absl::StatusOr<StepOutcome>>([&](int r, auto done) {
      StepCall c;
      c.attachment_id = ids_[r];
      c.step = step;
      c.lr = StepLr(step);
      cores_[r]->Step(std::move(c), std::move(done));
    }));
  }

  std::vector<absl::StatusOr<SavedCheckpoint>> SaveAll(int64_t step) {
    return All<absl::StatusOr<SavedCheckpoint>>(
        [&](int r, auto done) { cores_[r]->SaveCheckpoint(ids_[r], step, std::move(done)); });
  }

  std::vector<absl::StatusOr<LoadedCheckpoint>> LoadAll(const std::vector<std::string>& paths) {
    return All<absl::StatusOr<LoadedCheckpoint>>(
        [&](int r, auto done) { cores_[r]->LoadCheckpoint(ids_[r], paths[r], std::move(done)); });
  }

  std::vector<float> Params(int r) const {
    const float* p = static_cast<const float*>(params_[r]->data());
    return std::vector<float>(p, p + plan_.padded_size);
  }

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
  testing::TempDir dir_{"came-rank-rounds"};
  std::unique_ptr<service::Coordinator> coord_;
  std::atomic<int> bad_rank_{-1};
  std::vector<std::unique_ptr<RankCore>> cores_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<SharedBuffer>> params_, grads_;
  ShardPlan plan_;
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

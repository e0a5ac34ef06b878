// Checkpoints through RankCore at W = 2 (ranks as threads, Gloo over an in-memory store, a real
// in-process Coordinator committing the manifests): a save that fails on one rank fails on
// every rank at once and the job keeps training and saving; ranks that would load different
// or unreadable manifests all refuse at once and keep their state (Note [Save agreement] and
// Note [Load agreement] in runtime/rankd/rank_core.cc).
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
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
constexpr absl::Duration kCollectiveTimeout = absl::Seconds(60);
// Far below kCollectiveTimeout: a rank left waiting in a collective would exceed it.
constexpr absl::Duration kPrompt = absl::Seconds(15);

template <typename T>
std::pair<RankCore::Done<T>, std::future<T>> Callback() {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  return {[p](T v) { p->set_value(std::move(v)); }, std::move(f)};
}

class RankCheckpointTest : public ::testing::Test {
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
    const std::string prefix = absl::StrCat("/came-rckt-", getpid(), "-", counter++);
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

  testing::TempDir dir_{"came-rank-ckpt"};
  std::unique_ptr<service::Coordinator> coord_;
  std::atomic<int> bad_rank_{-1};
  std::vector<std::unique_ptr<RankCore>> cores_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<SharedBuffer>> params_, grads_;
  ShardPlan plan_;
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

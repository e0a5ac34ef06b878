// A test fixture of W = 2 RankCores as threads (Gloo over an in-memory store) joined to a real
// in-process Coordinator that commits their checkpoints: attached to the test model, with
// rank 0's initial parameters synced, ready to step, save and load. Shared by the checkpoint,
// round and stop tests of RankCore.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/checkpoint_retention.h"
#include "runtime/service/coordinator.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/util/temp_dir.h"

namespace came::rankd_test {

// Returns a RankCore callback and the future it fulfils.
template <typename T>
std::pair<rankd::RankCore::Done<T>, std::future<T>> Callback() {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  return {[p](T v) { p->set_value(std::move(v)); }, std::move(f)};
}

struct CoresOptions {
  std::string tag;                 // names the shared memory and the temporary folder
  absl::Duration collective_timeout = absl::Seconds(60);
  int64_t checkpoint_every = 0;    // the job's automatic checkpoints (0: none)
};

class CoordinatedCores : public ::testing::Test {
 protected:
  static constexpr int kWorld = 2;

  // Creates the coordinator and the cores, attaches them and syncs the parameters.
  void Start(const CoresOptions& options) {
    dir_ = std::make_unique<came::testing::TempDir>(absl::StrCat("came-", options.tag));
    service::CoordinatorOptions co;
    co.world_size = kWorld;
    co.token = "t";
    co.config.checkpoint_dir = (dir_->path / "ckpt").string();
    co.config.checkpoint_every = options.checkpoint_every;
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
    const std::string prefix = absl::StrCat("/came-", options.tag, "-", getpid(), "-", counter++);
    for (int r = 0; r < kWorld; ++r) {
      ASSERT_TRUE(comms[r].ok()) << comms[r].status();
      rankd::RankCoreOptions o;
      o.rank = r;
      o.world_size = kWorld;
      o.alignment = co.config.plan_alignment;  // as came-rankd follows the job's configuration
      o.shm_prefix = absl::StrCat(prefix, "-r", r);
      o.checkpoint_every = options.checkpoint_every;
      o.collective_timeout = options.collective_timeout;
      auto core = rankd::RankCore::Create(
          o, *std::move(comms[r]),
          [](const std::string&, int64_t, absl::Duration) { return absl::OkStatus(); }, nullptr,
          Hooks(r));
      ASSERT_TRUE(core.ok()) << core.status();
      cores_.push_back(*std::move(core));
    }
    rankd::Manifest m{came::testing::TestModel(), came::testing::TestGroups()};
    std::vector<std::future<absl::StatusOr<rankd::Layout>>> attached;
    for (auto& c : cores_) {
      auto [done, f] = Callback<absl::StatusOr<rankd::Layout>>();
      c->Attach(m, std::move(done));
      attached.push_back(std::move(f));
    }
    const auto initial = came::testing::InitialParams(came::testing::TestModel());
    for (int r = 0; r < kWorld; ++r) {
      auto layout = attached[r].get();
      ASSERT_TRUE(layout.ok()) << layout.status();
      ids_.push_back(layout->attachment_id);
      auto p = rankd::SharedBuffer::Open(layout->params_name, layout->buffer_bytes);
      auto g = rankd::SharedBuffer::Open(layout->grads_name, layout->buffer_bytes);
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
    ExpectAllOk(All<absl::StatusOr<StateBytes>>(
        [&](int r, auto done) { cores_[r]->SyncParameters(ids_[r], std::move(done)); }));
  }

  void TearDown() override { cores_.clear(); }

  // The coordinator's checkpoint calls; rank bad_rank_ gets a folder that does not exist and
  // rank failing_report_rank_'s shard reports fail (a full disk), while set.
  rankd::CheckpointHooks Hooks(int rank) {
    rankd::CheckpointHooks h;
    h.begin = [this, rank](int64_t step) -> absl::StatusOr<std::pair<std::string, std::string>> {
      auto info = coord_->BeginCheckpoint(rank, step);
      if (!info.ok()) return info.status();
      if (rank == bad_rank_.load()) return std::pair{info->id, (dir_->path / "no" / "such").string()};
      return std::pair{info->id, info->directory};
    };
    h.report = [this, rank](const std::string& id, const std::string& file, int64_t bytes,
                            const std::string& sha) {
      if (rank == failing_report_rank_.load())
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
    for (size_t r = 0; r < results.size(); ++r)
      EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
  }

  // Writes every rank's gradient of `step` and steps every rank; returns their outcomes.
  std::vector<absl::StatusOr<rankd::StepOutcome>> StepEach(int64_t step) {
    for (int r = 0; r < kWorld; ++r) {
      float* g = static_cast<float*>(grads_[r]->data());
      for (size_t t = 0; t < plan_.tensors.size(); ++t)
        for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
          g[plan_.tensors[t].offset + i] = static_cast<float>(
              came::testing::Grad(r, static_cast<int>(step), static_cast<int>(t), i));
    }
    return All<absl::StatusOr<rankd::StepOutcome>>([&](int r, auto done) {
      rankd::StepCall c;
      c.attachment_id = ids_[r];
      c.step = step;
      c.lr = StepLr(step);
      cores_[r]->Step(std::move(c), std::move(done));
    });
  }
  void StepAll(int64_t step) { ExpectAllOk(StepEach(step)); }

  std::vector<absl::StatusOr<rankd::SavedCheckpoint>> SaveAll(int64_t step) {
    return All<absl::StatusOr<rankd::SavedCheckpoint>>(
        [&](int r, auto done) { cores_[r]->SaveCheckpoint(ids_[r], step, std::move(done)); });
  }

  std::vector<absl::StatusOr<rankd::LoadedCheckpoint>> LoadAll(
      const std::vector<std::string>& paths) {
    return All<absl::StatusOr<rankd::LoadedCheckpoint>>(
        [&](int r, auto done) { cores_[r]->LoadCheckpoint(ids_[r], paths[r], std::move(done)); });
  }

  std::vector<float> Params(int r) const {
    const float* p = static_cast<const float*>(params_[r]->data());
    return std::vector<float>(p, p + plan_.padded_size);
  }

  // The steps of the committed checkpoints in the job's folder, oldest first.
  std::vector<int64_t> Committed() const {
    return service::CommittedCheckpointSteps((dir_->path / "ckpt").string());
  }

  std::unique_ptr<came::testing::TempDir> dir_;
  std::unique_ptr<service::Coordinator> coord_;
  std::atomic<int> bad_rank_{-1};
  std::atomic<int> failing_report_rank_{-1};
  std::vector<std::unique_ptr<rankd::RankCore>> cores_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<rankd::SharedBuffer>> params_, grads_;
  ShardPlan plan_;
};

}  // namespace came::rankd_test

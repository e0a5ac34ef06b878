// Fuzzing checkpoint loads: a valid checkpoint's manifest and shard header are mutated a
// thousand times (fields retyped, erased or set out of range, bytes flipped, the header length
// changed, the file cut), and each mutant is loaded by a RankCore (came-rankd's core, W = 1)
// while a trainer thread keeps stepping it. Every load must be refused (DataLoss, or NotFound
// for a renamed shard; never a crash), every step must succeed, and at the end the parameters
// must equal those of an engine that took the same steps and never loaded: nothing partial
// was ever applied.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/local_cluster.h"
#include "runtime/rankd/rank_core.h"
#include "runtime/rankd/shared_buffer.h"
#include "runtime/service/coordinator.h"
#include "tests/rankd/rankd_test_util.h"
#include "tests/runtime/checkpoint_edit.h"
#include "tests/util/temp_dir.h"

namespace came::rankd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kCases = 1000;
constexpr int64_t kAlignment = 16;

template <typename T>
T Call(const std::function<void(RankCore::Done<T>)>& call) {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  call([p](T v) { p->set_value(std::move(v)); });
  EXPECT_EQ(f.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  return f.get();
}

// Returns `v` replaced by a value of another type or out of range, chosen by `rng`.
json Mutant(const json& v, std::mt19937& rng) {
  switch (rng() % 9) {
    case 0: return v.is_string() ? json(12345) : json(v.dump());
    case 1: return -1;
    case 2: return 1.5;
    case 3: return nullptr;
    case 4: return true;
    case 5: return json::array({v});
    case 6: return json::object({{"x", v}});
    case 7: return UINT64_MAX;
    default: return v.is_number_integer() ? json(v.get<int64_t>() + 1 + rng() % 1000) : json("../x");
  }
}

// Mutates one leaf (or erases it) of a JSON object tree.
void MutateJson(json& j, std::mt19937& rng) {
  json* at = &j;
  while ((at->is_object() || at->is_array()) && !at->empty() && rng() % 4 != 0) {
    auto it = at->begin();
    std::advance(it, rng() % at->size());
    if (!(it->is_object() || it->is_array()) || rng() % 2 == 0) {
      if (rng() % 5 == 0 && at->is_object()) {
        at->erase(it.key());
      } else {
        *it = Mutant(*it, rng);
      }
      return;
    }
    at = &*it;
  }
  *at = Mutant(*at, rng);
}

// Flips one byte of `text` in [begin, end).
void FlipByte(std::string& text, size_t begin, size_t end, std::mt19937& rng) {
  const size_t at = begin + rng() % (end - begin);
  text[at] = static_cast<char>(text[at] ^ (1 + rng() % 255));
}

class CheckpointFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    service::CoordinatorOptions co;
    co.world_size = 1;
    co.token = "t";
    co.config.checkpoint_dir = (dir_.path / "ckpt").string();
    co.config.plan_alignment = kAlignment;
    auto coord = service::Coordinator::Create(co);
    ASSERT_TRUE(coord.ok()) << coord.status();
    coord_ = *std::move(coord);
    ASSERT_TRUE(coord_->Join(service::JoinRequest{}).ok());
    auto store = comm::InMemoryStore::Create();
    auto comm = comm::GlooCommunicator::Create(*store, 0, 1);
    ASSERT_TRUE(comm.ok()) << comm.status();
    RankCoreOptions o;
    o.alignment = kAlignment;
    o.shm_prefix = absl::StrCat("/came-fuzz-", getpid());
    CheckpointHooks h;
    h.begin = [this](int64_t step) -> absl::StatusOr<std::pair<std::string, std::string>> {
      auto info = coord_->BeginCheckpoint(0, step);
      if (!info.ok()) return info.status();
      return std::pair{info->id, info->directory};
    };
    h.report = [this](const std::string& id, const std::string& file, int64_t bytes, const std::string& sha) {
      return coord_->ReportShard(service::ShardReport{id, 0, file, bytes, sha});
    };
    h.commit = [this](const std::string& id) -> absl::StatusOr<std::string> {
      auto info = coord_->CommitCheckpoint(id, 0);
      if (!info.ok()) return info.status();
      return info->manifest_path;
    };
    auto core = RankCore::Create(
        o, *std::move(comm), [](const std::string&, int64_t, absl::Duration) { return absl::OkStatus(); },
        nullptr, std::move(h));
    ASSERT_TRUE(core.ok()) << core.status();
    core_ = *std::move(core);
    auto layout = Call<absl::StatusOr<Layout>>(
        [&](auto done) { core_->Attach(Manifest{testing::TestModel(), testing::TestGroups()}, std::move(done)); });
    ASSERT_TRUE(layout.ok()) << layout.status();
    id_ = layout->attachment_id;
    plan_ = layout->plan;
    auto p = SharedBuffer::Open(layout->params_name, layout->buffer_bytes);
    auto g = SharedBuffer::Open(layout->grads_name, layout->buffer_bytes);
    ASSERT_TRUE(p.ok() && g.ok());
    params_ = *std::move(p);
    grads_ = *std::move(g);
    const auto initial = testing::InitialParams(testing::TestModel());
    for (size_t t = 0; t < plan_.tensors.size(); ++t)
      for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
        Param()[plan_.tensors[t].offset + i] = static_cast<float>(initial[t][i]);
    ASSERT_TRUE(Call<absl::StatusOr<StateBytes>>([&](auto done) { core_->SyncParameters(id_, std::move(done)); }).ok());
  }

  float* Param() const { return static_cast<float*>(params_->data()); }

  absl::Status Step(int64_t step) {
    float* g = static_cast<float*>(grads_->data());
    for (size_t t = 0; t < plan_.tensors.size(); ++t)
      for (int64_t i = 0; i < plan_.tensors[t].geom.numel; ++i)
        g[plan_.tensors[t].offset + i] =
            static_cast<float>(testing::Grad(0, static_cast<int>(step), static_cast<int>(t), i));
    StepCall c;
    c.attachment_id = id_;
    c.step = step;
    c.lr = rankd_test::StepLr(step);
    return Call<absl::StatusOr<StepOutcome>>([&](auto done) { core_->Step(std::move(c), std::move(done)); }).status();
  }

  testing::TempDir dir_{"came-fuzz"};
  std::unique_ptr<service::Coordinator> coord_;
  std::unique_ptr<RankCore> core_;
  std::string id_;
  ShardPlan plan_;
  std::unique_ptr<SharedBuffer> params_, grads_;
};

TEST_F(CheckpointFuzzTest, MutatedManifestsAndShardHeadersAreRefusedWhileATrainerKeepsStepping) {
  constexpr int kSaved = 3;
  for (int step = 1; step <= kSaved; ++step) ASSERT_TRUE(Step(step).ok());
  auto saved = Call<absl::StatusOr<SavedCheckpoint>>(
      [&](auto done) { core_->SaveCheckpoint(id_, kSaved, std::move(done)); });
  ASSERT_TRUE(saved.ok()) << saved.status();
  const fs::path source = fs::path(saved->manifest_path).parent_path();
  const std::string manifest_text = testing::Slurp(saved->manifest_path);
  const std::string shard_bytes = testing::Slurp(source / "rank-0.safetensors");
  const json manifest_json = json::parse(manifest_text);
  auto [header_json, data] = testing::SplitShard(shard_bytes);
  const std::string header_text = header_json.dump();
  const fs::path work = dir_.path / "case";
  fs::create_directories(work);
  const std::string manifest = (work / "manifest.json").string(), shard = (work / "rank-0.safetensors").string();

  // The trainer: steps until told to stop (also when an assertion below returns early).
  std::atomic<bool> stop{false};
  std::atomic<int64_t> last_step{kSaved};
  absl::Status trainer_status;
  std::thread trainer([&] {
    while (!stop.load()) {
      trainer_status = Step(last_step + 1);
      if (!trainer_status.ok()) return;
      ++last_step;
    }
  });
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread& thread;
    ~Joiner() {
      stop = true;
      if (thread.joinable()) thread.join();
    }
  } joiner{stop, trainer};

  // A manifest mutation matters when it changes what loading reads (a renamed job id or a
  // changed default lr does not): those that parse to the same content are drawn again.
  const CheckpointManifest original = *ReadCheckpointManifest(saved->manifest_path);
  auto same_as_original = [&](const std::string& text) {
    auto parsed = ParseCheckpointManifest(text, saved->manifest_path);
    return parsed.ok() && parsed->step == original.step && parsed->world_size == original.world_size &&
           parsed->plan_alignment == original.plan_alignment &&
           parsed->shard_paths == original.shard_paths && parsed->shard_bytes == original.shard_bytes &&
           parsed->shard_sha256 == original.shard_sha256;
  };

  std::mt19937 rng(20261201);
  int refused = 0;
  for (int c = 0; c < kCases; ++c) {
    std::string m = manifest_text, header = header_text, tail = data;
    bool shard_changed = false;
    switch (c % 4) {
      case 0: {  // the manifest's JSON
        do {
          json j = manifest_json;
          MutateJson(j, rng);
          m = j.dump();
        } while (same_as_original(m));
        break;
      }
      case 1: {  // a byte of the manifest (one that changes what it says)
        do {
          m = manifest_text;
          FlipByte(m, 0, m.size(), rng);
        } while (same_as_original(m));
        break;
      }
      case 2: {  // the shard header's JSON
        json h = header_json;
        for (int tries = 0; tries < 10 && h == header_json; ++tries) MutateJson(h, rng);
        header = h.dump();
        shard_changed = true;
        break;
      }
      default: {  // a byte of the header, its length, or the file's end
        shard_changed = true;
        if (rng() % 3 == 0) break;  // handled below
        json h;
        do {
          header = header_text;
          FlipByte(header, 0, header.size(), rng);
          h = json::parse(header, nullptr, false);
        } while (!h.is_discarded() && h == header_json);
      }
    }
    std::string shard_file = testing::JoinShard(header, tail);
    if (c % 4 == 3 && header == header_text) {
      if (rng() % 2 == 0) {
        const uint64_t n = rng() % (2 * shard_file.size());
        std::memcpy(shard_file.data(), &n, 8);
      } else {
        shard_file.resize(rng() % shard_file.size());
      }
    }
    testing::Spit(manifest, shard_changed ? manifest_text : m);
    testing::Spit(shard, shard_file);
    if (shard_changed) testing::RefreshManifest(manifest);  // reach the header parser
    auto loaded = Call<absl::StatusOr<LoadedCheckpoint>>(
        [&](auto done) { core_->LoadCheckpoint(id_, manifest, std::move(done)); });
    const absl::StatusCode code = loaded.status().code();
    ASSERT_TRUE(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kNotFound)
        << "case " << c << ": " << loaded.status() << "\nmanifest: " << testing::Slurp(manifest)
        << "\nheader: " << header;
    ++refused;
  }
  stop = true;
  trainer.join();
  ASSERT_TRUE(trainer_status.ok()) << trainer_status;
  EXPECT_EQ(refused, kCases);
  EXPECT_GT(last_step.load(), kSaved + 10) << "the trainer hardly stepped";

  // Nothing partial: the parameters are those of the same steps without any load.
  EngineOptions eo;
  eo.groups = testing::TestGroups();
  auto twin = LocalCluster::Create(testing::TestModel(), 1, kAlignment,
                                   testing::InitialParams(testing::TestModel()), eo);
  ASSERT_TRUE(twin.ok()) << twin.status();
  for (int64_t step = 1; step <= last_step; ++step)
    ASSERT_TRUE((*twin)->Step([&](int, int t, std::span<float> g) {
                   for (size_t i = 0; i < g.size(); ++i)
                     g[i] = static_cast<float>(testing::Grad(0, static_cast<int>(step), t, i));
                 }, StepInputs{.step = step, .lr = rankd_test::StepLr(step)}).ok());
  for (size_t t = 0; t < plan_.tensors.size(); ++t) {
    const auto& tensor = plan_.tensors[t];
    std::vector<double> mine(Param() + tensor.offset, Param() + tensor.offset + tensor.geom.numel);
    EXPECT_EQ(mine, (*twin)->Param(static_cast<int>(t))) << tensor.spec.name;
  }
}

}  // namespace
}  // namespace came::rankd

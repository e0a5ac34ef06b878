// Defensive reading of checkpoints (Note [Checkpoint file safety] in runtime/checkpoint_io.h):
// manifests with fields of the wrong type, missing or out of range, names that leave the
// folder, shards that are not regular files or not the manifest's size, and shard headers
// with bad offsets, ranges or sizes are DataLoss naming the file, never a crash, and nothing
// is loaded. Written files are private and replace a symlink instead of following it.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_io.h"
#include "tests/runtime/checkpoint_edit.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tests/util/temp_dir.h"

namespace came {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

std::unique_ptr<LocalCluster> Cluster(int world) {
  const auto specs = testing::TestModel();
  EngineOptions o;
  o.groups = testing::TestGroups();
  auto c = LocalCluster::Create(specs, world, 1, testing::InitialParams(specs), o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

void Train(LocalCluster& c, int steps) {
  for (int step = 1; step <= steps; ++step)
    ASSERT_TRUE(c.Step([&](int, int t, std::span<float> g) {
                   for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(testing::Grad(0, step, t, i));
                 }, StepInputs{.step = step, .lr = testing::StepLr(step)}).ok());
}

class CheckpointFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = Cluster(2);
    ASSERT_NE(saved_, nullptr);
    Train(*saved_, 2);
    manifest_ = testing::SaveCheckpointOf(*saved_, dir_.path, 2);
    original_ = testing::Slurp(manifest_);
    target_ = Cluster(1);
    ASSERT_NE(target_, nullptr);
  }

  // Reads the manifest, verifies and reads the shards as came-rankd does.
  absl::Status Load() {
    auto m = ReadCheckpointManifest(manifest_);
    if (!m.ok()) return m.status();
    if (absl::Status s = VerifyShards(*m); !s.ok()) return s;
    return ReadShards(target_->engine(0), *m).status();
  }

  void ExpectDataLoss(const absl::Status& s, const std::string& file, const std::string& what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << what << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(file)) << what;
  }

  std::string Shard(int r) const { return (dir_.path / ("rank-" + std::to_string(r) + ".safetensors")).string(); }

  testing::TempDir dir_{"came-ckpt-format"};
  std::unique_ptr<LocalCluster> saved_, target_;
  std::string manifest_, original_;
};

TEST_F(CheckpointFormatTest, TheUndamagedCheckpointLoads) { EXPECT_TRUE(Load().ok()) << Load(); }

TEST_F(CheckpointFormatTest, ManifestFieldsOfTheWrongTypeOrRangeAreDataLossNamingTheFile) {
  const std::vector<std::pair<std::string, std::function<void(json&)>>> edits = {
      {"step as a string", [](json& j) { j["step"] = "5"; }},
      {"negative step", [](json& j) { j["step"] = -1; }},
      {"fractional step", [](json& j) { j["step"] = 1.5; }},
      {"step 2^64-1", [](json& j) { j["step"] = UINT64_MAX; }},
      {"null step", [](json& j) { j["step"] = nullptr; }},
      {"no step", [](json& j) { j.erase("step"); }},
      {"world size as a string", [](json& j) { j["world_size"] = "2"; }},
      {"world size 0", [](json& j) { j["world_size"] = 0; }},
      {"world size beyond the shards", [](json& j) { j["world_size"] = 3; }},
      {"shards an object", [](json& j) { j["shards"] = json::object(); }},
      {"no shards", [](json& j) { j.erase("shards"); }},
      {"a shard a string", [](json& j) { j["shards"][0] = "rank-0.safetensors"; }},
      {"rank as a string", [](json& j) { j["shards"][0]["rank"] = "0"; }},
      {"rank out of range", [](json& j) { j["shards"][0]["rank"] = 7; }},
      {"rank repeated", [](json& j) { j["shards"][1]["rank"] = 0; }},
      {"file a number", [](json& j) { j["shards"][0]["file"] = 7; }},
      {"bytes as a string", [](json& j) { j["shards"][0]["bytes"] = "12"; }},
      {"negative bytes", [](json& j) { j["shards"][0]["bytes"] = -1; }},
      {"sha256 a number", [](json& j) { j["shards"][0]["sha256"] = 123; }},
      {"sha256 not hex", [](json& j) { j["shards"][0]["sha256"] = std::string(64, 'z'); }},
      {"format version as a string", [](json& j) { j["format_version"] = "1"; }},
      {"another format version", [](json& j) { j["format_version"] = 2; }},
      {"not a manifest", [](json& j) { j = json::array({1, 2}); }},
      {"plan alignment as a string", [](json& j) { j["plan_alignment"] = "16"; }},
      {"no plan alignment", [](json& j) { j.erase("plan_alignment"); }},
      {"another plan alignment than the shards'", [](json& j) { j["plan_alignment"] = 4; }},
      {"job id a number", [](json& j) { j["job_id"] = 3; }},
      {"hyperparameters a string", [](json& j) { j["hyperparameter_defaults"] = "lr=1"; }},
      {"an unknown field", [](json& j) { j["stpe"] = 2; }},
      {"a shard with an unknown field", [](json& j) { j["shards"][0]["path"] = "/etc/passwd"; }},
  };
  for (const auto& [what, edit] : edits) {
    testing::Spit(manifest_, original_);
    testing::EditManifest(manifest_, edit);
    // The alignment mismatch is found in the shards, which name themselves.
    ExpectDataLoss(Load(), what.starts_with("another plan") ? Shard(0) : manifest_, what);
  }
  testing::Spit(manifest_, "{\"format\": \"came-checkpoint-manifest\", \"step\": ");
  ExpectDataLoss(Load(), manifest_, "truncated JSON");
  fs::remove(manifest_);
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointFormatTest, ManifestFileNamesStayInsideTheFolder) {
  for (const std::string name : {"/etc/passwd", "../rank-0.safetensors", "sub/rank-0.safetensors",
                                 "..", ".", ""}) {
    testing::Spit(manifest_, original_);
    testing::EditManifest(manifest_, [&](json& j) { j["shards"][0]["file"] = name; });
    ExpectDataLoss(Load(), manifest_, name);
  }
  testing::Spit(manifest_, original_);
  testing::EditManifest(manifest_, [&](json& j) { j["shards"][1]["file"] = j["shards"][0]["file"]; });
  ExpectDataLoss(Load(), manifest_, "two ranks, one file");
}

TEST_F(CheckpointFormatTest, ShardsMustBeRegularFilesOfTheManifestsSize) {
  const std::string shard = Shard(1), moved = shard + ".real";
  fs::rename(shard, moved);
  fs::create_symlink(moved, shard);
  ExpectDataLoss(Load(), shard, "symlink");
  fs::remove(shard);
  ASSERT_EQ(mkfifo(shard.c_str(), 0600), 0);
  ExpectDataLoss(Load(), shard, "FIFO");  // and no hang on open
  fs::remove(shard);
  fs::create_directory(shard);
  ExpectDataLoss(Load(), shard, "folder");
  fs::remove(shard);
  fs::rename(moved, shard);
  ASSERT_TRUE(Load().ok());
  {  // appended bytes: larger than the manifest says
    std::ofstream(shard, std::ios::app | std::ios::binary) << "extra";
  }
  ExpectDataLoss(Load(), shard, "longer");
  fs::resize_file(shard, fs::file_size(shard) / 2);
  ExpectDataLoss(Load(), shard, "truncated");
  fs::remove(shard);
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointFormatTest, ShardHeadersAreCheckedBeforeUse) {
  const std::string shard = Shard(1);
  const std::string bytes = testing::Slurp(shard);
  const std::vector<std::pair<std::string, std::function<void(json&)>>> edits = {
      {"another dtype", [](json& h) { h["ln/exp_avg"]["dtype"] = "F16"; }},
      {"offsets past the end", [](json& h) { h["ln/exp_avg"]["data_offsets"] = {1u << 30, (1u << 30) + 52}; }},
      {"offsets that overflow", [](json& h) { h["ln/exp_avg"]["data_offsets"] = {UINT64_MAX - 3, 48}; }},
      {"shape 2^62", [](json& h) { h["ln/exp_avg"]["shape"] = {uint64_t{1} << 62}; }},
      {"offsets reversed", [](json& h) { h["ln/exp_avg"]["data_offsets"] = {52, 0}; }},
      {"offsets a string", [](json& h) { h["ln/exp_avg"]["data_offsets"] = "0,52"; }},
      {"overlapping entries", [](json& h) { h["ln/exp_avg"]["data_offsets"] = h["ln/master"]["data_offsets"]; }},
      {"shape not the range", [](json& h) { h["ln/exp_avg"]["shape"] = {12}; }},
      {"an entry missing", [](json& h) { h.erase("ln/exp_avg"); }},
      {"an unknown entry", [](json& h) { h["ln/bogus"] = h["ln/exp_avg"]; }},
      {"a range reversed", [](json& h) { h["__metadata__"]["ln/range"] = "9,2"; }},
      {"a range past numel", [](json& h) { h["__metadata__"]["ln/range"] = "0,99"; }},
      {"a range not numbers", [](json& h) { h["__metadata__"]["ln/range"] = "a,b"; }},
      {"a range missing", [](json& h) { h["__metadata__"].erase("ln/range"); }},
      {"numel not the shape", [](json& h) { h["__metadata__"]["ln/numel"] = "14"; }},
      {"a shape missing", [](json& h) { h["__metadata__"].erase("ln/shape"); }},
      {"metadata value a number", [](json& h) { h["__metadata__"]["step"] = 2; }},
      {"metadata an array", [](json& h) { h["__metadata__"] = json::array(); }},
      {"no metadata", [](json& h) { h.erase("__metadata__"); }},
      {"another step", [](json& h) { h["__metadata__"]["step"] = "3"; }},
      {"another world size", [](json& h) { h["__metadata__"]["world_size"] = "4"; }},
      {"another format", [](json& h) { h["__metadata__"]["format"] = "x"; }},
      {"header an array", [](json& h) { h = json::array(); }},
  };
  for (const auto& [what, edit] : edits) {
    testing::Spit(shard, bytes);
    testing::EditShardHeader(shard, edit);
    testing::RefreshManifest(manifest_);
    ExpectDataLoss(Load(), shard, what);
  }
  // A header length beyond the file, and one that is not JSON.
  std::string raw = bytes;
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(raw.data(), &huge, 8);
  testing::Spit(shard, raw);
  testing::RefreshManifest(manifest_);
  ExpectDataLoss(Load(), shard, "header length");
  raw = bytes;
  raw[9] = '#';
  testing::Spit(shard, raw);
  testing::RefreshManifest(manifest_);
  ExpectDataLoss(Load(), shard, "not JSON");
}

TEST_F(CheckpointFormatTest, ElementsMustBeCoveredExactlyOnce) {
  // Both ranks' entries name the same shard content: every range overlaps.
  fs::copy_file(Shard(0), Shard(1), fs::copy_options::overwrite_existing);
  testing::RefreshManifest(manifest_);
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("overlap")) << s;

  // A tensor's piece removed from one shard: a gap.
  testing::Spit(manifest_, original_);
  auto fresh = testing::SaveCheckpointOf(*saved_, dir_.path, 2);
  ASSERT_EQ(fresh, manifest_);
  testing::EditShardHeader(Shard(0), [](json& h) {
    const std::string victim = "embed";
    for (const char* k : {"master", "exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row",
                          "exp_avg_res_col"})
      h.erase(victim + "/" + k);
    for (const char* k : {"range", "numel", "shape", "index"}) h["__metadata__"].erase(victim + "/" + k);
  });
  testing::RefreshManifest(manifest_);
  s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("no shard holds elements")) << s;
}

TEST(CheckpointFilesTest, WrittenFilesArePrivateAndASymlinkIsReplacedNotFollowed) {
  testing::TempDir dir("came-ckpt-files");
  const fs::path folder = dir.path / "a" / "b";
  ASSERT_TRUE(CreatePrivateDirectories(folder.string()).ok());
  struct stat st;
  ASSERT_EQ(stat(folder.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto c = Cluster(1);
  ASSERT_NE(c, nullptr);
  const fs::path victim = dir.path / "victim";
  testing::Spit(victim, "precious");
  const fs::path shard = folder / "rank-0.safetensors";
  fs::create_symlink(victim, shard);
  auto f = WriteShard(c->engine(0), 0, shard.string());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(testing::Slurp(victim), "precious");
  ASSERT_EQ(lstat(shard.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(folder)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"rank-0.safetensors"});  // no temporary left
}

}  // namespace
}  // namespace came

// came-launch's GPU plan (Note [Launch devices] in runtime/launch/gpus.h): counting visible
// GPUs from a fake /proc folder and CUDA_VISIBLE_DEVICES, and the backend, rank count and
// devices chosen from the flags. Runs everywhere (no GPU involved).
#include "runtime/launch/gpus.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace came::launch {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class VisibleGpuCountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("came-gpus-", getpid());
    std::filesystem::create_directories(dir_);
    for (const char* bus : {"0000:01:00.0", "0000:41:00.0", "0000:81:00.0"})
      std::filesystem::create_directory(dir_ / bus);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(VisibleGpuCountTest, CountsTheDriversEntries) {
  EXPECT_EQ(VisibleGpuCount(dir_.string(), nullptr), 3);
  EXPECT_EQ(VisibleGpuCount((dir_ / "absent").string(), nullptr), 0);
  EXPECT_EQ(VisibleGpuCount((dir_ / "absent").string(), "0,1"), 0);
}

TEST_F(VisibleGpuCountTest, NarrowsByCudaVisibleDevicesAsCudaDoes) {
  EXPECT_EQ(VisibleGpuCount(dir_.string(), "2"), 1);
  EXPECT_EQ(VisibleGpuCount(dir_.string(), "2,0"), 2);
  EXPECT_EQ(VisibleGpuCount(dir_.string(), ""), 0);
  EXPECT_EQ(VisibleGpuCount(dir_.string(), "-1"), 0);
  EXPECT_EQ(VisibleGpuCount(dir_.string(), "1,7,0"), 1);  // stops at the invalid 7
  EXPECT_EQ(VisibleGpuCount(dir_.string(), "GPU-8c1f,MIG-aa"), 2);
}

LaunchOptions With(std::string backend, int nproc, std::vector<int> gpus = {}) {
  LaunchOptions o;
  o.backend = std::move(backend);
  o.nproc = nproc;
  o.gpus = std::move(gpus);
  return o;
}

TEST(ResolveDevicesTest, DefaultsToGlooOnAGpuMachineUntilTheEngineStepsDeviceBuffers) {
  auto gloo = ResolveDevices(With("", 2), 4);
  ASSERT_TRUE(gloo.ok()) << gloo.status();
  EXPECT_EQ(gloo->backend, "gloo");
  EXPECT_EQ(gloo->nproc, 2);
  EXPECT_TRUE(gloo->devices.empty());
}

TEST(ResolveDevicesTest, NcclTakesOneRankPerVisibleGpu) {
  auto plan = ResolveDevices(With("nccl", 0), 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->backend, "nccl");
  EXPECT_EQ(plan->nproc, 4);
  EXPECT_THAT(plan->devices, ElementsAre(0, 1, 2, 3));
}

TEST(ResolveDevicesTest, DefaultsToGlooWithoutAGpu) {
  auto plan = ResolveDevices(With("", 3), 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->backend, "gloo");
  EXPECT_EQ(plan->nproc, 3);
  EXPECT_THAT(plan->devices, IsEmpty());
}

TEST(ResolveDevicesTest, NprocTakesTheFirstGpusAndGpusTakesThoseListed) {
  auto first = ResolveDevices(With("nccl", 2), 4);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->devices, ElementsAre(0, 1));
  auto listed = ResolveDevices(With("", 0, {3, 1}), 4);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->backend, "nccl");
  EXPECT_EQ(listed->nproc, 2);
  EXPECT_THAT(listed->devices, ElementsAre(3, 1));
}

TEST(ResolveDevicesTest, GlooOnAGpuMachineUsesNoDevice) {
  auto plan = ResolveDevices(With("gloo", 2), 8);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->backend, "gloo");
  EXPECT_THAT(plan->devices, IsEmpty());
}

TEST(ResolveDevicesTest, RefusesWhatCannotRun) {
  const struct {
    LaunchOptions options;
    int visible;
    const char* message;
  } cases[] = {
      {With("nccl", 1), 0, "--backend nccl (and --gpus) needs a GPU, but none is visible"},
      {With("", 0, {0}), 0, "needs a GPU, but none is visible"},
      {With("nccl", 0, {2}), 2, "--gpus names GPU 2, but only 2 are visible"},
      {With("nccl", 0, {1, 1}), 2, "--gpus names GPU 1 twice"},
      {With("nccl", 3, {0, 1}), 2, "--nproc 3 differs from the 2 GPUs of --gpus"},
      {With("nccl", 3), 2, "--nproc 3 under --backend nccl needs 3 GPUs, but 2 are visible"},
      {With("gloo", 2, {0}), 2, "--gpus needs --backend nccl"},
      {With("gloo", 0), 2, "--nproc (or --nproc-per-node) is required"},
  };
  for (const auto& c : cases) {
    auto plan = ResolveDevices(c.options, c.visible);
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(plan.status().message(), HasSubstr(c.message));
  }
}

TEST(ParseLaunchArgsGpusTest, ParsesTheListAndNeedsNoNprocUnderNccl) {
  auto o = ParseLaunchArgs({"--gpus", "0,2", "--", "python3", "t.py"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->gpus, ElementsAre(0, 2));
  EXPECT_EQ(o->nproc, 0);
  auto n = ParseLaunchArgs({"--backend=nccl", "--", "python3"});
  ASSERT_TRUE(n.ok()) << n.status();
  for (const char* bad : {"0,,1", "a", "-1", ""}) {
    auto b = ParseLaunchArgs({"--gpus", bad, "--", "x"});
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(b.status().message(), HasSubstr("--gpus")) << bad;
  }
}

}  // namespace
}  // namespace came::launch

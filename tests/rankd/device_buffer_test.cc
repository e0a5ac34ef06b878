// Device buffers of came-rankd (Note [Trainer buffers] in runtime/rankd/trainer_buffer.h):
// what a machine without a GPU or a build without CUDA answers (runs everywhere), and, on
// a GPU, allocation, IPC handles, the free-memory refusal and RankCore's Attach on a device.
// The GPU tests skip, saying so, where no device is present.
#include "runtime/rankd/trainer_buffer.h"

#include <unistd.h>

#include <future>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/rankd/rank_core.h"
#include "tests/rankd/rankd_test_util.h"

#if CAME_RANKD_TEST_WITH_CUDA
#include <cuda_runtime_api.h>

#include "runtime/rankd/device_buffer.h"
#endif

namespace came::rankd {
namespace {

using ::testing::HasSubstr;

bool HaveDevice() {
#if CAME_RANKD_TEST_WITH_CUDA
  return CudaDeviceCount() > 0;
#else
  return false;
#endif
}

TEST(CheckDeviceTest, NamesWhatIsMissing) {
  const absl::Status s = CheckDevice(0);
  if (!CudaBuilt()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("this build has no CUDA support"));
  } else if (!HaveDevice()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("no CUDA device is present"));
  } else {
    EXPECT_TRUE(s.ok()) << s;
  }
}

TEST(CheckDeviceTest, RefusesAnOrdinalOutOfRange) {
  if (!CudaBuilt()) GTEST_SKIP() << "this build has no CUDA support";
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const absl::Status s = CheckDevice(4096);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("CUDA device 4096 does not exist"));
}

TEST(CreateTrainerBufferTest, HostBufferIsNamedSharedMemory) {
  const std::string name = absl::StrCat("/came-devbuf-test-", getpid());
  auto b = CreateTrainerBuffer(-1, name, 4096);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->device(), -1);
  EXPECT_EQ((*b)->name(), name);
  EXPECT_TRUE((*b)->ipc_handle().empty());
  EXPECT_TRUE(rankd_test::ShmExists(name));
  b->reset();
  EXPECT_FALSE(rankd_test::ShmExists(name));
}

TEST(CreateTrainerBufferTest, DeviceBufferWithoutDeviceIsRefused) {
  if (HaveDevice()) GTEST_SKIP() << "a CUDA device is present: the refusal cannot be seen";
  auto b = CreateTrainerBuffer(0, "/unused", 4096);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
}

std::unique_ptr<comm::Communicator> OneRankGloo() {
  auto store = comm::InMemoryStore::Create();
  auto comm = comm::GlooCommunicator::Create(*store, 0, 1, comm::GlooOptions{});
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? *std::move(comm) : nullptr;
}

RankCoreOptions DeviceOptions() {
  RankCoreOptions o;
  o.shm_prefix = absl::StrCat("/came-devbuf-core-", getpid());
  o.device = 0;
  return o;
}

TEST(RankCoreDeviceTest, CreateOnADeviceThatIsNotThereFails) {
  if (HaveDevice()) GTEST_SKIP() << "a CUDA device is present: the refusal cannot be seen";
  auto core = RankCore::Create(DeviceOptions(), OneRankGloo(), nullptr);
  EXPECT_EQ(core.status().code(), absl::StatusCode::kFailedPrecondition);
}

#if CAME_RANKD_TEST_WITH_CUDA

TEST(DeviceBufferTest, AllocatesZeroedMemoryWithAnIpcHandle) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  auto b = DeviceBuffer::Create(0, 1 << 20);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->device(), 0);
  EXPECT_EQ((*b)->size(), size_t{1} << 20);
  EXPECT_EQ((*b)->ipc_handle().size(), sizeof(cudaIpcMemHandle_t));
  EXPECT_TRUE((*b)->name().empty());
  std::string host(1 << 20, '\x7f');
  ASSERT_EQ(cudaMemcpy(host.data(), (*b)->data(), host.size(), cudaMemcpyDeviceToHost),
            cudaSuccess);
  EXPECT_EQ(host.find_first_not_of('\0'), std::string::npos);
}

TEST(DeviceBufferTest, RefusesWhatDoesNotFitNamingTheFreeBytes) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  auto b = DeviceBuffer::Create(0, total + 1);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr(absl::StrCat(total + 1, " bytes")));
  EXPECT_THAT(b.status().message(), HasSubstr("bytes free"));
}

TEST(RankCoreDeviceTest, AttachReturnsDeviceBuffersAndDetachFreesThem) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  auto core = RankCore::Create(DeviceOptions(), OneRankGloo(), nullptr);
  ASSERT_TRUE(core.ok()) << core.status();
  Manifest m;
  m.tensors = {TensorSpec{"w", {64, 32}, DType::kFloat32, 0}};
  m.groups = {CameHyper{}};
  m.groups[0].lr = 1e-3;
  std::promise<absl::StatusOr<Layout>> attached;
  (*core)->Attach(m, [&](absl::StatusOr<Layout> l) { attached.set_value(std::move(l)); });
  absl::StatusOr<Layout> layout = attached.get_future().get();
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->device, 0);
  EXPECT_TRUE(layout->params_name.empty());
  EXPECT_EQ(layout->params_ipc_handle.size(), sizeof(cudaIpcMemHandle_t));
  EXPECT_EQ(layout->grads_ipc_handle.size(), sizeof(cudaIpcMemHandle_t));
  EXPECT_NE(layout->params_ipc_handle, layout->grads_ipc_handle);
  size_t free_before = 0, free_after = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  std::promise<absl::Status> detached;
  (*core)->Detach(layout->attachment_id, [&](absl::Status s) { detached.set_value(s); });
  ASSERT_TRUE(detached.get_future().get().ok());
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_GE(free_after, free_before + 2 * layout->buffer_bytes);
}

#endif  // CAME_RANKD_TEST_WITH_CUDA

}  // namespace
}  // namespace came::rankd

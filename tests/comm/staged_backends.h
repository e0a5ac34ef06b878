// The staged communicator (runtime/comm/staged_communicator.h) as backends of the typed
// communicator suite (communicator_test.cc): over Gloo with host buffers (HostMover: the
// staging logic, on every machine) and over Gloo with device buffers, every rank on CUDA
// device 0 (CudaMover: W ranks sharing one GPU; skips visibly without a device).
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/staged_communicator.h"
#include "runtime/comm/store.h"

#if CAME_TEST_WITH_NCCL
#include <cuda_runtime.h>

#include "runtime/comm/cuda_mover.h"
#endif

namespace came::comm::testing {

// Every call of the suite fits in this much staging memory.
constexpr size_t kStagingBytes = size_t{1} << 20;

inline absl::StatusOr<std::unique_ptr<Communicator>> StagedOverGloo(
    Store& store, int rank, int world, absl::StatusOr<std::unique_ptr<MemoryMover>> mover) {
  if (!mover.ok()) return mover.status();
  GlooOptions options;
  options.connect_timeout = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<Communicator>> host =
      GlooCommunicator::Create(store, rank, world, options);
  if (!host.ok()) return host.status();
  return StagedCommunicator::Create(std::move(*host), std::move(*mover), kStagingBytes);
}

class StagedHostBuffer {
 public:
  StagedHostBuffer(int /*rank*/, size_t bytes) : data_(std::max<size_t>(bytes, 1)) {}
  void* data() { return data_.data(); }
  void Upload(const std::vector<char>& src) { std::memcpy(data_.data(), src.data(), src.size()); }
  std::vector<char> Download(size_t bytes) {
    return std::vector<char>(data_.begin(), data_.begin() + static_cast<ptrdiff_t>(bytes));
  }

 private:
  std::vector<char> data_;
};

struct StagedHostBackend {
  using Buffer = StagedHostBuffer;
  static constexpr bool kPeersSeeAbort = true;  // Gloo underneath
  static std::string SkipReason(int /*world*/) { return ""; }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int world) {
    return StagedOverGloo(store, rank, world, MakeHostMover());
  }
};

#if CAME_TEST_WITH_NCCL
// Device memory for rank r of the typed suite: on device r (kOneDevice false: NCCL, one GPU a
// rank) or on device 0 whatever the rank (kOneDevice true: W ranks sharing one GPU).
template <bool kOneDevice>
class DeviceBufferOf {
 public:
  DeviceBufferOf(int rank, size_t bytes) {
    cudaSetDevice(kOneDevice ? 0 : rank);
    EXPECT_EQ(cudaMalloc(&data_, std::max<size_t>(bytes, 1)), cudaSuccess);
  }
  ~DeviceBufferOf() { cudaFree(data_); }
  void* data() { return data_; }
  void Upload(const std::vector<char>& src) {
    EXPECT_EQ(cudaMemcpy(data_, src.data(), src.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<char> Download(size_t bytes) {
    std::vector<char> out(bytes);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  void* data_ = nullptr;
};

struct StagedCudaBackend {
  using Buffer = DeviceBufferOf</*kOneDevice=*/true>;
  static constexpr bool kPeersSeeAbort = true;
  static std::string SkipReason(int /*world*/) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) return "no CUDA device";
    return "";
  }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int world) {
    // The legacy default stream: the suite's buffers are written by synchronous cudaMemcpy.
    return StagedOverGloo(store, rank, world, MakeCudaMover(/*device=*/0, nullptr));
  }
};
#else
struct StagedCudaBackend {
  using Buffer = StagedHostBuffer;
  static constexpr bool kPeersSeeAbort = true;
  static std::string SkipReason(int /*world*/) {
    return "no CUDA device (built without CUDA: CAME_WITH_CUDA=OFF)";
  }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store&, int, int) {
    return absl::FailedPreconditionError("built without CUDA");
  }
};
#endif

}  // namespace came::comm::testing

// One typed suite for every Communicator backend: Gloo (ranks as threads over an
// InMemoryStore, W = 1..4), NCCL (one device per rank; skips visibly without a GPU) and the
// staged communicator over Gloo (staged_backends.h).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "runtime/comm/backend.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "tests/comm/comm_test_util.h"
#include "tests/comm/staged_backends.h"

#if CAME_TEST_WITH_NCCL
#include <cuda_runtime.h>

#include "runtime/comm/nccl_communicator.h"
#endif

namespace came::comm {
namespace {

using ::came::comm::testing::IsOk;
using ::came::comm::testing::RunRanks;
using ::came::comm::testing::StatusIs;

constexpr absl::Duration kTimeout = absl::Seconds(20);

// Host memory, for Gloo.
class HostBuffer {
 public:
  HostBuffer(int /*rank*/, size_t bytes) : data_(std::max<size_t>(bytes, 1)) {}
  void* data() { return data_.data(); }
  void Upload(const std::vector<char>& src) { std::memcpy(data_.data(), src.data(), src.size()); }
  std::vector<char> Download(size_t bytes) {
    return std::vector<char>(data_.begin(), data_.begin() + static_cast<ptrdiff_t>(bytes));
  }

 private:
  std::vector<char> data_;
};

struct GlooBackend {
  using Buffer = HostBuffer;
  static constexpr bool kPeersSeeAbort = true;  // Abort closes the TCP connections
  static std::string SkipReason(int /*world*/) { return ""; }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int world) {
    GlooOptions options;
    options.connect_timeout = absl::Seconds(20);
    return GlooCommunicator::Create(store, rank, world, options);
  }
};

#if CAME_TEST_WITH_NCCL
struct NcclBackend {
  using Buffer = testing::DeviceBufferOf</*kOneDevice=*/false>;
  static constexpr bool kPeersSeeAbort = false;  // peers fail by their own deadline
  static std::string SkipReason(int world) {
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess || devices == 0) return "no CUDA device";
    if (devices < world) return absl::StrCat("W=", world, " needs ", world, " CUDA devices");
    return "";
  }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int world) {
    return NcclCommunicator::Create(store, rank, world, /*device=*/rank, absl::Seconds(60));
  }
};
#else
struct NcclBackend {
  using Buffer = HostBuffer;
  static constexpr bool kPeersSeeAbort = false;
  static std::string SkipReason(int /*world*/) {
    return "no CUDA device (built without CUDA: CAME_WITH_CUDA=OFF)";
  }
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Store& store, int rank, int world) {
    return CreateCommunicator(Backend::kNccl, store, rank, world);
  }
};
#endif

// Values are small integers so that every type, fp16 and bf16 included, holds them and
// their sums over 4 ranks exactly.
double Value(int rank, size_t i) {
  return static_cast<double>((i * 7 + static_cast<size_t>(rank) * 3) % 11);
}

std::vector<char> Encode(const std::vector<double>& values, ElemType type) {
  std::vector<char> out(values.size() * ElemSize(type));
  for (size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    char* p = out.data() + i * ElemSize(type);
    switch (type) {
      case ElemType::kFloat32: {
        const float x = static_cast<float>(v);
        std::memcpy(p, &x, 4);
        break;
      }
      case ElemType::kFloat64: std::memcpy(p, &v, 8); break;
      case ElemType::kFloat16: {
        const uint16_t x = FloatToHalf(static_cast<float>(v));
        std::memcpy(p, &x, 2);
        break;
      }
      case ElemType::kBFloat16: {
        const uint16_t x = FloatToBFloat16(static_cast<float>(v));
        std::memcpy(p, &x, 2);
        break;
      }
      case ElemType::kInt32: {
        const int32_t x = static_cast<int32_t>(v);
        std::memcpy(p, &x, 4);
        break;
      }
      case ElemType::kInt64: {
        const int64_t x = static_cast<int64_t>(v);
        std::memcpy(p, &x, 8);
        break;
      }
      case ElemType::kUInt8: {
        const uint8_t x = static_cast<uint8_t>(v);
        std::memcpy(p, &x, 1);
        break;
      }
    }
  }
  return out;
}

std::vector<double> Decode(const std::vector<char>& bytes, ElemType type) {
  const size_t n = bytes.size() / ElemSize(type);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = bytes.data() + i * ElemSize(type);
    switch (type) {
      case ElemType::kFloat32: {
        float x;
        std::memcpy(&x, p, 4);
        out[i] = x;
        break;
      }
      case ElemType::kFloat64: std::memcpy(&out[i], p, 8); break;
      case ElemType::kFloat16: {
        uint16_t x;
        std::memcpy(&x, p, 2);
        out[i] = HalfToFloat(x);
        break;
      }
      case ElemType::kBFloat16: {
        uint16_t x;
        std::memcpy(&x, p, 2);
        out[i] = BFloat16ToFloat(x);
        break;
      }
      case ElemType::kInt32: {
        int32_t x;
        std::memcpy(&x, p, 4);
        out[i] = x;
        break;
      }
      case ElemType::kInt64: {
        int64_t x;
        std::memcpy(&x, p, 8);
        out[i] = static_cast<double>(x);
        break;
      }
      case ElemType::kUInt8: {
        uint8_t x;
        std::memcpy(&x, p, 1);
        out[i] = x;
        break;
      }
    }
  }
  return out;
}

// Returns rank's input of n elements, starting at element `offset` of the pattern.
std::vector<double> Input(int rank, size_t n, size_t offset = 0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Value(rank, offset + i);
  return v;
}

// Returns the reduction over `world` ranks of element i of the pattern.
double Reduced(int world, size_t i, ReduceOp op) {
  double sum = 0;
  double max = Value(0, i);
  for (int r = 0; r < world; ++r) {
    sum += Value(r, i);
    max = std::max(max, Value(r, i));
  }
  if (op == ReduceOp::kMax) return max;
  if (op == ReduceOp::kAvg) return sum / world;
  return sum;
}

bool IsFloat(ElemType t) {
  return t == ElemType::kFloat32 || t == ElemType::kFloat64 || t == ElemType::kFloat16 ||
         t == ElemType::kBFloat16;
}

double Tolerance(ElemType t, double expected) {
  switch (t) {
    case ElemType::kFloat16: return 1e-3 * std::max(1.0, std::abs(expected));
    case ElemType::kBFloat16: return 8e-3 * std::max(1.0, std::abs(expected));
    case ElemType::kFloat32: return 1e-6 * std::max(1.0, std::abs(expected));
    default: return 1e-12;
  }
}

std::string TypeName(ElemType t) {
  static const char* kNames[] = {"f32", "f64", "f16", "bf16", "i32", "i64", "u8"};
  return kNames[static_cast<int>(t)];
}

constexpr ElemType kAllTypes[] = {ElemType::kFloat32,  ElemType::kFloat64, ElemType::kFloat16,
                                  ElemType::kBFloat16, ElemType::kInt32,   ElemType::kInt64,
                                  ElemType::kUInt8};

template <typename Backend>
class CommunicatorTest : public ::testing::Test {
 protected:
  using Buffer = typename Backend::Buffer;

  // Returns the worlds among `wanted` this backend can run here; remembers why the others
  // cannot (the test skips with that reason when none can).
  std::vector<int> Worlds(std::vector<int> wanted) {
    std::vector<int> runnable;
    for (int w : wanted) {
      const std::string reason = Backend::SkipReason(w);
      if (reason.empty()) {
        runnable.push_back(w);
      } else {
        skip_reason_ = reason;
      }
    }
    if (!runnable.empty() && runnable.size() < wanted.size()) {
      std::cout << "[  NOTE    ] ran W=" << runnable.back() << " and below only: " << skip_reason_
                << "\n";
    }
    return runnable;
  }

  // Runs fn(group) for a fresh group of every world among `wanted` that this backend can run
  // here. Returns false when none could run (the caller skips with skip_reason_).
  template <typename Fn>
  bool ForEachGroup(std::vector<int> wanted, Fn fn) {
    const std::vector<int> worlds = Worlds(std::move(wanted));
    for (int w : worlds) {
      std::vector<std::unique_ptr<Communicator>> group = MakeGroup(w);
      if (group.size() != static_cast<size_t>(w)) {
        ADD_FAILURE() << "could not build a group of " << w;
        continue;
      }
      fn(group);
    }
    return !worlds.empty();
  }

  // Creates the `world` communicators of one group, concurrently.
  std::vector<std::unique_ptr<Communicator>> MakeGroup(int world) {
    std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
    std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> made;
    for (int r = 0; r < world; ++r) made.emplace_back(absl::UnknownError("not run"));
    RunRanks(world,
             [&](int r) { made[static_cast<size_t>(r)] = Backend::Create(*store, r, world); });
    std::vector<std::unique_ptr<Communicator>> group;
    for (auto& m : made) {
      EXPECT_THAT(m, IsOk());
      if (m.ok()) group.push_back(std::move(*m));
    }
    return group;
  }

  // Runs AllReduce of n elements on every rank and checks the result.
  void CheckAllReduce(std::vector<std::unique_ptr<Communicator>>& group, ElemType type, ReduceOp op,
                      size_t n) {
    const int world = static_cast<int>(group.size());
    SCOPED_TRACE(absl::StrCat("all-reduce W=", world, " ", TypeName(type),
                              " op=", static_cast<int>(op), " n=", n));
    std::vector<std::vector<double>> out(static_cast<size_t>(world));
    RunRanks(world, [&](int r) {
      Buffer buf(r, n * ElemSize(type));
      buf.Upload(Encode(Input(r, n), type));
      EXPECT_THAT(group[static_cast<size_t>(r)]->AllReduce(buf.data(), n, type, op, kTimeout),
                  IsOk());
      out[static_cast<size_t>(r)] = Decode(buf.Download(n * ElemSize(type)), type);
    });
    for (int r = 0; r < world; ++r) {
      for (size_t i = 0; i < n; ++i) {
        const double want = Reduced(world, i, op);
        ASSERT_NEAR(out[static_cast<size_t>(r)][i], want, Tolerance(type, want))
            << "rank " << r << " element " << i;
      }
    }
  }

  // Runs ReduceScatter with recv_count elements per rank and checks every rank's block.
  void CheckReduceScatter(std::vector<std::unique_ptr<Communicator>>& group, ElemType type,
                          ReduceOp op, size_t recv_count, bool in_place) {
    const int world = static_cast<int>(group.size());
    SCOPED_TRACE(absl::StrCat("reduce-scatter W=", world, " ", TypeName(type),
                              " op=", static_cast<int>(op), " n=", recv_count,
                              in_place ? " in place" : ""));
    const size_t total = recv_count * static_cast<size_t>(world);
    const size_t block_bytes = recv_count * ElemSize(type);
    std::vector<std::vector<double>> out(static_cast<size_t>(world));
    RunRanks(world, [&](int r) {
      Buffer send(r, total * ElemSize(type));
      Buffer recv(r, block_bytes);
      send.Upload(Encode(Input(r, total), type));
      void* dst = in_place ? static_cast<char*>(send.data()) + static_cast<size_t>(r) * block_bytes
                           : recv.data();
      EXPECT_THAT(group[static_cast<size_t>(r)]->ReduceScatter(send.data(), dst, recv_count, type,
                                                               op, kTimeout),
                  IsOk());
      std::vector<char> bytes =
          in_place ? send.Download(total * ElemSize(type)) : recv.Download(block_bytes);
      if (in_place) {
        bytes = std::vector<char>(bytes.begin() + static_cast<ptrdiff_t>(r * block_bytes),
                                  bytes.begin() + static_cast<ptrdiff_t>((r + 1) * block_bytes));
      }
      out[static_cast<size_t>(r)] = Decode(bytes, type);
    });
    for (int r = 0; r < world; ++r) {
      for (size_t i = 0; i < recv_count; ++i) {
        const double want = Reduced(world, static_cast<size_t>(r) * recv_count + i, op);
        ASSERT_NEAR(out[static_cast<size_t>(r)][i], want, Tolerance(type, want))
            << "rank " << r << " element " << i;
      }
    }
  }

  // Runs AllGather of send_count elements per rank and checks the gathered buffer.
  void CheckAllGather(std::vector<std::unique_ptr<Communicator>>& group, ElemType type,
                      size_t send_count, bool in_place) {
    const int world = static_cast<int>(group.size());
    SCOPED_TRACE(absl::StrCat("all-gather W=", world, " ", TypeName(type), " n=", send_count,
                              in_place ? " in place" : ""));
    const size_t block_bytes = send_count * ElemSize(type);
    const size_t total_bytes = block_bytes * static_cast<size_t>(world);
    std::vector<std::vector<double>> out(static_cast<size_t>(world));
    RunRanks(world, [&](int r) {
      Buffer send(r, block_bytes);
      Buffer recv(r, total_bytes);
      const std::vector<char> mine = Encode(Input(r, send_count), type);
      const void* src = send.data();
      if (in_place) {
        std::vector<char> staged(total_bytes, 0);
        std::memcpy(staged.data() + static_cast<size_t>(r) * block_bytes, mine.data(), block_bytes);
        recv.Upload(staged);
        src = static_cast<char*>(recv.data()) + static_cast<size_t>(r) * block_bytes;
      } else {
        send.Upload(mine);
      }
      EXPECT_THAT(
          group[static_cast<size_t>(r)]->AllGather(src, recv.data(), send_count, type, kTimeout),
          IsOk());
      out[static_cast<size_t>(r)] = Decode(recv.Download(total_bytes), type);
    });
    for (int r = 0; r < world; ++r) {
      for (int from = 0; from < world; ++from) {
        for (size_t i = 0; i < send_count; ++i) {
          ASSERT_EQ(out[static_cast<size_t>(r)][static_cast<size_t>(from) * send_count + i],
                    Value(from, i))
              << "rank " << r << " block " << from << " element " << i;
        }
      }
    }
  }

  std::string skip_reason_;
};

class BackendNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    if constexpr (std::is_same_v<T, GlooBackend>) return "Gloo";
    if constexpr (std::is_same_v<T, testing::StagedHostBackend>) return "StagedHost";
    if constexpr (std::is_same_v<T, testing::StagedCudaBackend>) return "StagedCuda";
    return "Nccl";
  }
};

using Backends = ::testing::Types<GlooBackend, NcclBackend, testing::StagedHostBackend,
                                  testing::StagedCudaBackend>;
TYPED_TEST_SUITE(CommunicatorTest, Backends, BackendNames);

TYPED_TEST(CommunicatorTest, AllReduceSumEveryTypeAndUnevenCounts) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    for (ElemType type : kAllTypes) {
      for (size_t n : {size_t{1}, size_t{2}, size_t{1000}}) {
        this->CheckAllReduce(group, type, ReduceOp::kSum, n);
      }
    }
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, AllReduceMaxEveryType) {
  const bool ran = this->ForEachGroup({2, 3}, [&](auto& group) {
    for (ElemType type : kAllTypes) this->CheckAllReduce(group, type, ReduceOp::kMax, 1000);
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, AllReduceAvgFloats) {
  const bool ran = this->ForEachGroup({1, 3}, [&](auto& group) {
    for (ElemType type : {ElemType::kFloat32, ElemType::kFloat64, ElemType::kBFloat16}) {
      this->CheckAllReduce(group, type, ReduceOp::kAvg, 1000);
    }
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, ReduceScatterSumAndAvg) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    for (ElemType type : kAllTypes) {
      for (size_t n : {size_t{1}, size_t{1000}}) {
        this->CheckReduceScatter(group, type, ReduceOp::kSum, n, /*in_place=*/false);
        if (IsFloat(type)) {
          this->CheckReduceScatter(group, type, ReduceOp::kAvg, n, /*in_place=*/false);
        }
      }
    }
    this->CheckReduceScatter(group, ElemType::kFloat32, ReduceOp::kSum, 333, /*in_place=*/true);
    this->CheckReduceScatter(group, ElemType::kBFloat16, ReduceOp::kAvg, 7, /*in_place=*/true);
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, AllGatherIncludingSendAliasingRecv) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    for (ElemType type : {ElemType::kFloat32, ElemType::kUInt8, ElemType::kBFloat16}) {
      for (size_t n : {size_t{1}, size_t{1000}}) {
        this->CheckAllGather(group, type, n, /*in_place=*/false);
        this->CheckAllGather(group, type, n, /*in_place=*/true);
      }
    }
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, BroadcastFromANonZeroRoot) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    const int w = static_cast<int>(group.size());
    const int root = w - 1;
    constexpr size_t kN = 777;
    std::vector<std::vector<double>> out(static_cast<size_t>(w));
    RunRanks(w, [&](int r) {
      typename TestFixture::Buffer buf(r, kN * 8);
      buf.Upload(Encode(Input(r, kN), ElemType::kFloat64));
      EXPECT_THAT(group[static_cast<size_t>(r)]->Broadcast(buf.data(), kN, ElemType::kFloat64, root,
                                                           kTimeout),
                  IsOk());
      out[static_cast<size_t>(r)] = Decode(buf.Download(kN * 8), ElemType::kFloat64);
    });
    for (int r = 0; r < w; ++r) EXPECT_EQ(out[static_cast<size_t>(r)], Input(root, kN)) << r;
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, BarrierWaitsForEveryRank) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    const int w = static_cast<int>(group.size());
    std::atomic<int> arrived{0};
    RunRanks(w, [&](int r) {
      absl::SleepFor(absl::Milliseconds(30 * r));
      arrived.fetch_add(1);
      EXPECT_THAT(group[static_cast<size_t>(r)]->Barrier(kTimeout), IsOk());
      EXPECT_EQ(arrived.load(), w) << "rank " << r << " left the barrier early";
    });
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, ZeroCountCallsSucceed) {
  const bool ran = this->ForEachGroup({1, 3}, [&](auto& group) {
    const int w = static_cast<int>(group.size());
    RunRanks(w, [&](int r) {
      Communicator& c = *group[static_cast<size_t>(r)];
      EXPECT_THAT(c.AllReduce(nullptr, 0, ElemType::kFloat32, ReduceOp::kSum, kTimeout), IsOk());
      EXPECT_THAT(
          c.ReduceScatter(nullptr, nullptr, 0, ElemType::kFloat32, ReduceOp::kAvg, kTimeout),
          IsOk());
      EXPECT_THAT(c.AllGather(nullptr, nullptr, 0, ElemType::kInt64, kTimeout), IsOk());
      EXPECT_THAT(c.Broadcast(nullptr, 0, ElemType::kUInt8, 0, kTimeout), IsOk());
      EXPECT_THAT(c.Barrier(kTimeout), IsOk());
      EXPECT_EQ(c.stats().of(CollectiveKind::kAllReduce).calls, 1);
      EXPECT_EQ(c.stats().of(CollectiveKind::kAllReduce).bytes_sent, 0);
    });
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

TYPED_TEST(CommunicatorTest, BadArgumentsAreInvalidArgumentAndHarmless) {
  if (this->Worlds({2}).empty()) GTEST_SKIP() << this->skip_reason_;
  auto group = this->MakeGroup(2);
  ASSERT_EQ(group.size(), 2u);
  RunRanks(2, [&](int r) {
    Communicator& c = *group[static_cast<size_t>(r)];
    typename TestFixture::Buffer buf(r, 64);
    EXPECT_THAT(c.Broadcast(buf.data(), 4, ElemType::kFloat32, 2, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c.Broadcast(buf.data(), 4, ElemType::kFloat32, -1, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c.AllReduce(nullptr, 4, ElemType::kFloat32, ReduceOp::kSum, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(
        c.AllReduce(buf.data(), 4, ElemType::kFloat32, ReduceOp::kSum, absl::ZeroDuration()),
        StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c.AllReduce(buf.data(), 4, static_cast<ElemType>(99), ReduceOp::kSum, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c.AllReduce(buf.data(), 4, ElemType::kFloat32, static_cast<ReduceOp>(9), kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    // Still usable.
    EXPECT_THAT(c.Barrier(kTimeout), IsOk());
  });
}

TYPED_TEST(CommunicatorTest, MissingPeerTimesOutThenAborted) {
  if (this->Worlds({2}).empty()) GTEST_SKIP() << this->skip_reason_;
  auto group = this->MakeGroup(2);
  ASSERT_EQ(group.size(), 2u);
  typename TestFixture::Buffer buf(0, 4000);
  const absl::Time start = absl::Now();
  // Rank 1 never calls: rank 0 must give up at its deadline, not hang.
  EXPECT_THAT(group[0]->AllReduce(buf.data(), 1000, ElemType::kFloat32, ReduceOp::kSum,
                                  absl::Milliseconds(300)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(290));
  EXPECT_LT(waited, absl::Seconds(5));
  EXPECT_THAT(group[0]->Barrier(kTimeout), StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(group[0]->AllReduce(buf.data(), 1000, ElemType::kFloat32, ReduceOp::kSum, kTimeout),
              StatusIs(absl::StatusCode::kAborted));
  // The late peer fails too (its partner is gone) instead of hanging.
  typename TestFixture::Buffer buf1(1, 4000);
  const absl::Time late = absl::Now();
  EXPECT_FALSE(
      group[1]
          ->AllReduce(buf1.data(), 1000, ElemType::kFloat32, ReduceOp::kSum, absl::Seconds(2))
          .ok());
  EXPECT_LT(absl::Now() - late, absl::Seconds(5));
}

TYPED_TEST(CommunicatorTest, AbortFromAnotherThreadUnblocksAWait) {
  if (this->Worlds({2}).empty()) GTEST_SKIP() << this->skip_reason_;
  auto group = this->MakeGroup(2);
  ASSERT_EQ(group.size(), 2u);
  std::thread aborter([&] {
    absl::SleepFor(absl::Milliseconds(200));
    group[0]->Abort();
    group[0]->Abort();  // idempotent
  });
  typename TestFixture::Buffer buf(0, 4000);
  const absl::Time start = absl::Now();
  EXPECT_THAT(
      group[0]->AllReduce(buf.data(), 1000, ElemType::kFloat32, ReduceOp::kSum, absl::Seconds(30)),
      StatusIs(absl::StatusCode::kAborted));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  aborter.join();
  EXPECT_THAT(group[0]->Barrier(kTimeout), StatusIs(absl::StatusCode::kAborted));
  if (TypeParam::kPeersSeeAbort) {
    // The peer's connection is gone: it fails long before its own 10 s deadline.
    typename TestFixture::Buffer buf1(1, 4000);
    const absl::Time late = absl::Now();
    EXPECT_THAT(group[1]->AllReduce(buf1.data(), 1000, ElemType::kFloat32, ReduceOp::kSum,
                                    absl::Seconds(10)),
                StatusIs(absl::StatusCode::kAborted));
    EXPECT_LT(absl::Now() - late, absl::Seconds(5));
  }
}

TYPED_TEST(CommunicatorTest, StatsCountCallsAndBytes) {
  const bool ran = this->ForEachGroup({1, 2, 3, 4}, [&](auto& group) {
    const int w = static_cast<int>(group.size());
    constexpr size_t kN = 1200;  // elements per rank's block
    const int64_t block = static_cast<int64_t>(kN * 4);
    const int64_t total = block * w;
    RunRanks(w, [&](int r) {
      Communicator& c = *group[static_cast<size_t>(r)];
      typename TestFixture::Buffer send(r, static_cast<size_t>(total));
      typename TestFixture::Buffer recv(r, static_cast<size_t>(total));
      send.Upload(std::vector<char>(static_cast<size_t>(total), 0));
      ASSERT_THAT(c.ReduceScatter(send.data(), recv.data(), kN, ElemType::kFloat32, ReduceOp::kSum,
                                  kTimeout),
                  IsOk());
      ASSERT_THAT(c.AllGather(recv.data(), send.data(), kN, ElemType::kFloat32, kTimeout), IsOk());
      ASSERT_THAT(c.AllReduce(send.data(), kN * static_cast<size_t>(w), ElemType::kFloat32,
                              ReduceOp::kSum, kTimeout),
                  IsOk());
      const CommStats stats = c.stats();
      const CollectiveCounters& rs = stats.of(CollectiveKind::kReduceScatter);
      EXPECT_EQ(rs.calls, 1);
      // A reduce-scatter sends (W-1)/W of the buffer per rank, not an all-reduce's 2(W-1)/W.
      EXPECT_EQ(rs.bytes_sent, (w - 1) * block) << "W=" << w;
      EXPECT_GE(rs.seconds, 0.0);
      EXPECT_EQ(stats.of(CollectiveKind::kAllGather).bytes_sent, (w - 1) * block);
      EXPECT_EQ(stats.of(CollectiveKind::kAllReduce).bytes_sent, 2 * (w - 1) * block);
      EXPECT_EQ(stats.of(CollectiveKind::kAllReduce).calls, 1);
      EXPECT_EQ(stats.of(CollectiveKind::kBroadcast).calls, 0);
    });
  });
  if (!ran) GTEST_SKIP() << this->skip_reason_;
}

// Many steps in a row: slots, scratch buffers and results stay right from step two on.
TYPED_TEST(CommunicatorTest, ManyStepsInARow) {
  if (this->Worlds({3}).empty()) GTEST_SKIP() << this->skip_reason_;
  auto group = this->MakeGroup(3);
  ASSERT_EQ(group.size(), 3u);
  for (int step = 0; step < 15; ++step) {
    const size_t n = 10 + static_cast<size_t>(step) * 37;
    this->CheckReduceScatter(group, ElemType::kFloat32, ReduceOp::kAvg, n, step % 2 == 0);
    this->CheckAllGather(group, ElemType::kFloat32, n, step % 2 == 1);
    this->CheckAllReduce(group, ElemType::kFloat64, ReduceOp::kMax, n + 1);
  }
}

TEST(CreateCommunicatorTest, RejectsBadRankAndSize) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  EXPECT_THAT(CreateCommunicator(Backend::kGloo, *store, 2, 2),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CreateCommunicator(Backend::kGloo, *store, 0, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseBackend("mpi"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(*ParseBackend("nccl"), Backend::kNccl);
  if (!NcclBuilt()) {
    EXPECT_THAT(CreateCommunicator(Backend::kNccl, *store, 0, 1),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  }
}

TEST(CreateCommunicatorTest, GlooRendezvousTimesOutWhenAPeerIsMissing) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  CommunicatorOptions options;
  options.gloo.connect_timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  EXPECT_THAT(CreateCommunicator(Backend::kGloo, *store, 0, 2, options),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(CreateCommunicatorTest, GlooRejectsAnUnknownInterface) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  CommunicatorOptions options;
  options.gloo.iface = "no_such_if0";
  EXPECT_THAT(CreateCommunicator(Backend::kGloo, *store, 0, 1, options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace came::comm

// What only the staged communicator does (the typed suite in communicator_test.cc checks
// its collectives): the staging capacity, a copy that misses its deadline, Create's checks.
#include "runtime/comm/staged_communicator.h"

#include <memory>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "tests/comm/comm_test_util.h"

namespace came::comm {
namespace {

using ::came::comm::testing::IsOk;
using ::came::comm::testing::RunRanks;
using ::came::comm::testing::StatusIs;

constexpr absl::Duration kTimeout = absl::Seconds(20);

// A host mover whose copies on rank `stuck_rank` never finish (a device copy stuck behind a
// hung kernel): Wait returns at its deadline.
class StuckMover final : public MemoryMover {
 public:
  explicit StuckMover(bool stuck) : host_(MakeHostMover()), stuck_(stuck) {}
  absl::StatusOr<void*> AllocateHost(size_t bytes) override { return host_->AllocateHost(bytes); }
  void FreeHost(void* p) override { host_->FreeHost(p); }
  absl::Status ToHost(void* h, const void* b, size_t n) override { return host_->ToHost(h, b, n); }
  absl::Status FromHost(void* b, const void* h, size_t n) override {
    return host_->FromHost(b, h, n);
  }
  absl::Status Wait(absl::Time deadline) override {
    if (!stuck_ || deadline == absl::InfiniteFuture()) return absl::OkStatus();
    absl::SleepFor(deadline - absl::Now());
    return absl::DeadlineExceededError("stuck copy");
  }

 private:
  std::unique_ptr<MemoryMover> host_;
  bool stuck_;
};

std::vector<std::unique_ptr<Communicator>> MakeGroup(Store& store, int world, size_t capacity,
                                                     int stuck_rank = -1) {
  std::vector<std::unique_ptr<Communicator>> group(static_cast<size_t>(world));
  RunRanks(world, [&](int r) {
    GlooOptions options;
    options.connect_timeout = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<Communicator>> host =
        GlooCommunicator::Create(store, r, world, options);
    ASSERT_THAT(host, IsOk());
    absl::StatusOr<std::unique_ptr<Communicator>> c = StagedCommunicator::Create(
        std::move(*host), std::make_unique<StuckMover>(r == stuck_rank), capacity);
    ASSERT_THAT(c, IsOk());
    group[static_cast<size_t>(r)] = std::move(*c);
  });
  return group;
}

TEST(StagedCommunicatorTest, CreateNeedsACommunicatorAndAMover) {
  EXPECT_THAT(StagedCommunicator::Create(nullptr, MakeHostMover(), 64),
              StatusIs(absl::StatusCode::kInvalidArgument));
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  absl::StatusOr<std::unique_ptr<Communicator>> host = GlooCommunicator::Create(*store, 0, 1);
  ASSERT_THAT(host, IsOk());
  EXPECT_THAT(StagedCommunicator::Create(std::move(*host), nullptr, 64),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(StagedCommunicatorTest, ACallLargerThanTheStagingMemoryIsRefusedAndHarmless) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  // 2 ranks, 64 bytes: a reduce-scatter of 9 floats per rank needs 72.
  auto group = MakeGroup(*store, 2, 64);
  ASSERT_EQ(group.size(), 2u);
  RunRanks(2, [&](int r) {
    Communicator& c = *group[static_cast<size_t>(r)];
    std::vector<float> send(18, 1.0f + r), recv(9, 0.0f);
    EXPECT_THAT(
        c.ReduceScatter(send.data(), recv.data(), 9, ElemType::kFloat32, ReduceOp::kSum, kTimeout),
        StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(c.AllGather(recv.data(), send.data(), 9, ElemType::kFloat32, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    std::vector<double> big(9, 1.0);
    EXPECT_THAT(c.AllReduce(big.data(), 9, ElemType::kFloat64, ReduceOp::kSum, kTimeout),
                StatusIs(absl::StatusCode::kInvalidArgument));
    // Exactly the capacity still works, and the earlier refusals changed nothing.
    std::vector<float> fit(16, 1.0f + r), part(8, 0.0f);
    ASSERT_THAT(
        c.ReduceScatter(fit.data(), part.data(), 8, ElemType::kFloat32, ReduceOp::kSum, kTimeout),
        IsOk());
    EXPECT_EQ(part, std::vector<float>(8, 3.0f));
    EXPECT_EQ(recv, std::vector<float>(9, 0.0f));
  });
}

TEST(StagedCommunicatorTest, ACopyPastItsDeadlineBreaksItAndThePeerFailsInsteadOfHanging) {
  std::unique_ptr<InMemoryStore> store = InMemoryStore::Create();
  auto group = MakeGroup(*store, 2, 1024, /*stuck_rank=*/0);
  ASSERT_EQ(group.size(), 2u);
  std::vector<absl::Status> status(2);
  const absl::Time start = absl::Now();
  RunRanks(2, [&](int r) {
    std::vector<float> buf(16, 1.0f);
    status[static_cast<size_t>(r)] = group[static_cast<size_t>(r)]->AllReduce(
        buf.data(), 16, ElemType::kFloat32, ReduceOp::kSum,
        r == 0 ? absl::Milliseconds(300) : absl::Seconds(10));
  });
  EXPECT_THAT(status[0], StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_FALSE(status[1].ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  std::vector<float> buf(16, 1.0f);
  EXPECT_THAT(group[0]->AllReduce(buf.data(), 16, ElemType::kFloat32, ReduceOp::kSum, kTimeout),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(group[0]->Barrier(kTimeout), StatusIs(absl::StatusCode::kAborted));
}

}  // namespace
}  // namespace came::comm

// ShardedCame over the staged communicator (runtime/comm/staged_communicator.h) with the host
// mover equals ShardedCame over the Gloo communicator it wraps, bit for bit: W = 2 and 3 ranks
// as threads, 10 steps, different gradients per rank, fp32 and bf16 parameters (bf16 also
// reduced in float32), and a NaN on one rank that skips the step everywhere. The staged path
// is what ranks sharing one GPU run (with the CUDA mover instead of the host one).
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/comm/gloo_communicator.h"
#include "runtime/comm/in_memory_store.h"
#include "runtime/comm/staged_communicator.h"
#include "runtime/sharded_came.h"
#include "tests/comm/comm_test_util.h"
#include "tests/runtime/test_model.h"

namespace came {
namespace {

using comm::testing::RunRanks;

constexpr int kSteps = 10;
constexpr int kNanStep = 4;

// Every rank's flat buffers, state and step statistics after kSteps.
struct Trajectory {
  std::vector<std::vector<uint8_t>> params;  // per rank
  std::vector<std::vector<float>> state;     // per rank: every owned tensor's state, in order
  std::vector<std::vector<bool>> skipped;    // per rank, per step
};

Trajectory Train(DType dtype, int world, bool staged, bool reduce_in_float32) {
  absl::StatusOr<ShardPlan> plan = ShardPlan::Make(testing::TestModel(dtype), world, 1);
  EXPECT_TRUE(plan.ok()) << plan.status();
  const size_t elem = DTypeSize(dtype);
  const size_t bytes = static_cast<size_t>(plan->padded_size) * elem;
  std::unique_ptr<comm::InMemoryStore> store = comm::InMemoryStore::Create();
  const std::vector<std::vector<double>> initial =
      testing::InitialParams(testing::TestModel(dtype));
  Trajectory run;
  run.params.resize(world);
  run.state.resize(world);
  run.skipped.resize(world);
  RunRanks(world, [&](int r) {
    absl::StatusOr<std::unique_ptr<comm::Communicator>> c =
        comm::GlooCommunicator::Create(*store, r, world);
    ASSERT_TRUE(c.ok()) << c.status();
    std::unique_ptr<comm::Communicator> communicator = std::move(*c);
    if (staged) {
      // The largest call: the reduce-scatter of the whole gradient buffer, in float32 when
      // 16-bit gradients are reduced in float32.
      c = comm::StagedCommunicator::Create(std::move(communicator), comm::MakeHostMover(),
                                           static_cast<size_t>(plan->padded_size) * 4);
      ASSERT_TRUE(c.ok()) << c.status();
      communicator = std::move(*c);
    }
    std::vector<uint8_t> params(bytes, 0), grads(bytes, 0);
    for (size_t t = 0; t < plan->tensors.size(); ++t)
      for (int64_t i = 0; i < plan->tensors[t].geom.numel; ++i)
        StoreFromFloat(params.data(), dtype, plan->tensors[t].offset + i,
                       static_cast<float>(initial[t][i]));
    EngineOptions options;
    options.groups = testing::TestGroups();
    options.reduce_in_float32 = reduce_in_float32;
    absl::StatusOr<std::unique_ptr<ShardedCame>> engine =
        ShardedCame::Create(*plan, communicator.get(), params.data(), grads.data(), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    for (int step = 1; step <= kSteps; ++step) {
      for (size_t t = 0; t < plan->tensors.size(); ++t)
        for (int64_t i = 0; i < plan->tensors[t].geom.numel; ++i)
          StoreFromFloat(grads.data(), dtype, plan->tensors[t].offset + i,
                         static_cast<float>(testing::Grad(r, step, static_cast<int>(t), i)));
      if (step == kNanStep && r == world - 1)
        StoreFromFloat(grads.data(), dtype, plan->tensors[2].offset + 3,
                       std::numeric_limits<float>::quiet_NaN());
      StepInputs inputs;
      inputs.step = step;
      absl::StatusOr<EngineStepStats> stats = (*engine)->Step(inputs);
      ASSERT_TRUE(stats.ok()) << stats.status();
      run.skipped[r].push_back(stats->skipped);
    }
    run.params[r] = params;
    for (size_t t = 0; t < plan->tensors.size(); ++t) {
      const TensorStateView v = (*engine)->tensor_state(static_cast<int>(t));
      for (std::span<const float> part :
           {v.exp_avg, v.exp_avg_sq, v.exp_avg_sq_row, v.exp_avg_sq_col, v.exp_avg_res_row,
            v.exp_avg_res_col, v.master})
        run.state[r].insert(run.state[r].end(), part.begin(), part.end());
    }
  });
  return run;
}

struct Case {
  DType dtype;
  int world;
  bool reduce_in_float32;
};

class StagedEngineTest : public ::testing::TestWithParam<Case> {};

TEST_P(StagedEngineTest, EqualsTheEngineOverTheWrappedCommunicatorBitwise) {
  const Case c = GetParam();
  const Trajectory plain = Train(c.dtype, c.world, /*staged=*/false, c.reduce_in_float32);
  const Trajectory staged = Train(c.dtype, c.world, /*staged=*/true, c.reduce_in_float32);
  for (int r = 0; r < c.world; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    for (int step = 1; step <= kSteps; ++step)
      EXPECT_EQ(staged.skipped[r][step - 1], step == kNanStep) << "step " << step;
    EXPECT_EQ(staged.skipped[r], plain.skipped[r]);
    EXPECT_EQ(staged.params[r], plain.params[r]);
    EXPECT_EQ(staged.state[r], plain.state[r]);
    // Every rank ends with the same parameters (the all-gather ran through the staging).
    EXPECT_EQ(staged.params[r], staged.params[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Worlds, StagedEngineTest,
    ::testing::Values(Case{DType::kFloat32, 2, false}, Case{DType::kFloat32, 3, false},
                      Case{DType::kBFloat16, 2, false}, Case{DType::kBFloat16, 3, false},
                      Case{DType::kBFloat16, 3, true}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.dtype == DType::kFloat32 ? "fp32" : "bf16") + "_w" +
             std::to_string(info.param.world) + (info.param.reduce_in_float32 ? "_f32reduce" : "");
    });

}  // namespace
}  // namespace came

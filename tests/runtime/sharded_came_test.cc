// ShardedCame with ranks as threads (LocalCluster, Gloo over 127.0.0.1): results equal the
// double reference and the single-rank engine on the mean gradient, for W = 1..5, over 10
// steps; skipped steps; bf16 parameters; bad options.
#include "runtime/sharded_came.h"

#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "kernels/reference.h"
#include "runtime/local_cluster.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

using testing::Grad;
using testing::InitialParams;
using testing::MeanGrad;
using testing::TestGroups;
using testing::TestModel;

constexpr int kSteps = 10;

using testing::NamedState;
using testing::ReferenceRun;
using testing::RunReferenceModel;
using testing::StepLr;

EngineOptions Options() {
  EngineOptions o;
  o.groups = TestGroups();
  o.num_threads = 2;
  o.collective_timeout = absl::Seconds(60);
  return o;
}

std::unique_ptr<LocalCluster> MakeCluster(int world, DType dtype = DType::kFloat32,
                                          int64_t alignment = 1) {
  const auto specs = TestModel(dtype);
  auto c = LocalCluster::Create(specs, world, alignment, InitialParams(specs), Options());
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

class ShardedCameWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(ShardedCameWorldTest, EqualsReferenceAndSingleRankOnMeanGradient) {
  const int world = GetParam();
  auto cluster = MakeCluster(world);
  ASSERT_NE(cluster, nullptr);
  auto single = MakeCluster(1);
  ASSERT_NE(single, nullptr);
  // The plan must exercise what the test claims to.
  if (world >= 3) {
    const auto& t = cluster->plan().tensors[0];
    EXPECT_GE(t.last_rank - t.first_rank, 2) << "embed should span 3+ chunks";
  }
  bool mid_row_split = false;
  for (int t : cluster->plan().split_tensors) {
    const auto& tensor = cluster->plan().tensors[t];
    for (int r = tensor.first_rank; r <= tensor.last_rank; ++r)
      for (const ShardPiece& p : cluster->plan().pieces[r])
        if (p.tensor == t && tensor.geom.factored && p.begin % tensor.geom.m != 0)
          mid_row_split = true;
  }
  if (world >= 3) {
    EXPECT_TRUE(mid_row_split) << "some factored tensor should be split mid-row";
  }
  if (world >= 2) {
    EXPECT_FALSE(cluster->plan().split_tensors.empty());
  }

  for (int step = 1; step <= kSteps; ++step) {
    StepInputs in{step, StepLr(step)};
    auto stats = cluster->Step(
        [&](int rank, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(Grad(rank, step, t, i));
        },
        in);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_FALSE(stats->skipped);
    auto one = single->Step(
        [&](int, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(MeanGrad(world, step, t, i));
        },
        in);
    ASSERT_TRUE(one.ok()) << one.status();
  }

  const ReferenceRun ref = RunReferenceModel(world, kSteps);
  for (size_t t = 0; t < ref.params.size(); ++t) {
    const std::string name = cluster->plan().tensors[t].spec.name;
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(cluster->Param(t, r), cluster->Param(t, 0)) << name << ": rank " << r << " differs";
    }
    EXPECT_LE(ParamError(cluster->Param(t), ref.params[t]), kFloat32ParamTolerance) << name;
    EXPECT_LE(ParamError(cluster->Param(t), single->Param(t)), kFloat32ParamTolerance) << name;
    auto state = cluster->State(t);
    ASSERT_TRUE(state.ok()) << state.status();
    auto single_state = single->State(t);
    ASSERT_TRUE(single_state.ok());
    for (const auto& [key, values] : NamedState(ref.states[t])) {
      ASSERT_EQ(state->count(key), 1u) << name << "." << key;
      EXPECT_LE(StateError(state->at(key), values), kFloat32StateTolerance) << name << "." << key;
      EXPECT_LE(StateError(state->at(key), single_state->at(key)), kFloat32StateTolerance)
          << name << "." << key;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, ShardedCameWorldTest, ::testing::Values(1, 2, 3, 4, 5));

// Captures every rank's parameters and state, bit for bit.
std::vector<std::vector<double>> Snapshot(LocalCluster& c) {
  std::vector<std::vector<double>> out;
  for (size_t t = 0; t < c.plan().tensors.size(); ++t) {
    for (int r = 0; r < c.world_size(); ++r) out.push_back(c.Param(t, r));
    auto s = c.State(t);
    EXPECT_TRUE(s.ok());
    for (auto& [k, v] : *s) out.push_back(v);
    for (int r = 0; r < c.world_size(); ++r) {
      const TensorStateView v = c.engine(r).tensor_state(t);
      out.emplace_back(v.master.begin(), v.master.end());
    }
  }
  return out;
}

TEST(ShardedCameTest, NonFiniteGradientOnOneRankSkipsEverywhereAndChangesNothing) {
  for (float bad : {NAN, INFINITY}) {
    auto cluster = MakeCluster(3);
    ASSERT_NE(cluster, nullptr);
    auto good = [](int step) {
      return [step](int rank, int t, std::span<float> g) {
        for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(Grad(rank, step, t, i));
      };
    };
    for (int step = 1; step <= 2; ++step) ASSERT_TRUE(cluster->Step(good(step), {step, {}}).ok());
    const auto before = Snapshot(*cluster);
    auto stats = cluster->Step(
        [&](int rank, int t, std::span<float> g) {
          good(3)(rank, t, g);
          if (rank == 1 && t == 5) g[17] = bad;
        },
        {3, {}});
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(stats->skipped);
    for (int r = 0; r < 3; ++r) EXPECT_EQ(cluster->engine(r).steps_taken(), 2);
    const auto after = Snapshot(*cluster);
    ASSERT_EQ(before.size(), after.size());
    for (size_t k = 0; k < before.size(); ++k)
      EXPECT_EQ(0, std::memcmp(before[k].data(), after[k].data(), before[k].size() * sizeof(double)))
          << "snapshot entry " << k << " changed";
    // The next good step proceeds.
    auto next = cluster->Step(good(4), {4, {}});
    ASSERT_TRUE(next.ok());
    EXPECT_FALSE(next->skipped);
  }
}

TEST(ShardedCameTest, BFloat16ParametersMatchSingleRankFp32Master) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    auto cluster = MakeCluster(4, dtype);
    auto single = MakeCluster(1, dtype);
    ASSERT_NE(cluster, nullptr);
    ASSERT_NE(single, nullptr);
    // The same gradient on every rank and a power-of-two world: each ring hop's 16-bit sum
    // (2g, 3g, 4g) rounds back to the exact 4g, so the average is exact and the sharded run
    // and the single-rank run see identical inputs (Note [16-bit reduction] in
    // runtime/sharded_came.h).
    auto grads = [](int step) {
      return [step](int, int t, std::span<float> g) {
        for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(Grad(0, step, t, i));
      };
    };
    for (int step = 1; step <= kSteps; ++step) {
      ASSERT_TRUE(cluster->Step(grads(step), {step, {}}).ok());
      ASSERT_TRUE(single->Step(grads(step), {step, {}}).ok());
    }
    EXPECT_GT(cluster->engine(0).state_bytes().master, 0);
    for (size_t t = 0; t < cluster->plan().tensors.size(); ++t) {
      std::vector<double> master(cluster->plan().tensors[t].geom.numel),
          single_master(master.size());
      for (int r = 0; r < 4; ++r) {
        const TensorStateView v = cluster->engine(r).tensor_state(t);
        std::copy(v.master.begin(), v.master.end(), master.begin() + v.begin);
      }
      const TensorStateView s = single->engine(0).tensor_state(t);
      std::copy(s.master.begin(), s.master.end(), single_master.begin());
      EXPECT_LE(ParamError(master, single_master), kFloat32ParamTolerance)
          << cluster->plan().tensors[t].spec.name;
      // The 16-bit parameters are the masters rounded.
      const auto p = cluster->Param(t);
      for (size_t i = 0; i < p.size(); ++i) {
        float m = static_cast<float>(master[i]);
        const float rounded = dtype == DType::kBFloat16 ? BFloat16ToFloat(FloatToBFloat16(m))
                                                        : HalfToFloat(FloatToHalf(m));
        ASSERT_EQ(static_cast<float>(p[i]), rounded) << "tensor " << t << " element " << i;
      }
    }
  }
}

TEST(ShardedCameTest, StateBytesAreHalfOfAdamsForFp32) {
  auto cluster = MakeCluster(4, DType::kFloat32, 4);
  ASSERT_NE(cluster, nullptr);
  int64_t total = 0, momentum = 0;
  for (int r = 0; r < 4; ++r) {
    const StateBytes b = cluster->engine(r).state_bytes();
    EXPECT_EQ(b.master, 0) << "fp32 parameters need no master copy";
    EXPECT_LE(b.momentum, cluster->plan().chunk_size * 4);
    momentum += b.momentum;
    total += b.total();
  }
  int64_t numel = 0;
  for (const auto& t : cluster->plan().tensors) numel += t.geom.numel;
  EXPECT_EQ(momentum, numel * 4);
  EXPECT_LT(total, numel * 8) << "Adam under ZeRO keeps 8 bytes per parameter";
}

TEST(ShardedCameTest, RejectsBadOptions) {
  const auto specs = TestModel();
  auto o = Options();
  o.groups.resize(1);  // tensors use group 1
  auto c = LocalCluster::Create(specs, 2, 1, InitialParams(specs), o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("embed_bias"), std::string::npos) << c.status();

  o = Options();
  o.groups[0].beta2 = 1.0;
  c = LocalCluster::Create(specs, 2, 1, InitialParams(specs), o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);

  auto cluster = MakeCluster(2);
  ASSERT_NE(cluster, nullptr);
  auto bad_lr = cluster->Step([](int, int, std::span<float> g) { std::fill(g.begin(), g.end(), 0.1f); },
                              {1, {0.1}});
  ASSERT_FALSE(bad_lr.ok());
  EXPECT_EQ(bad_lr.status().code(), absl::StatusCode::kInvalidArgument);
}

// With reduce_in_float32 the 16-bit average is exact at any world size (W=3 here), and
// different gradients on every rank give the single-rank result on the float mean.
TEST(ShardedCameTest, Float32ReductionOf16BitGradientsMatchesSingleRankAtAnyWorldSize) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    const auto specs = TestModel(dtype);
    EngineOptions o = Options();
    o.reduce_in_float32 = true;
    auto cluster = LocalCluster::Create(specs, 3, 1, InitialParams(specs), o);
    auto single = LocalCluster::Create(specs, 1, 1, InitialParams(specs), Options());
    ASSERT_TRUE(cluster.ok() && single.ok());
    auto grads = [](int step) {
      return [step](int, int t, std::span<float> g) {
        for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(Grad(0, step, t, i));
      };
    };
    for (int step = 1; step <= kSteps; ++step) {
      ASSERT_TRUE((*cluster)->Step(grads(step), {step, {}}).ok());
      ASSERT_TRUE((*single)->Step(grads(step), {step, {}}).ok());
    }
    for (size_t t = 0; t < specs.size(); ++t) {
      std::vector<double> master((*cluster)->plan().tensors[t].geom.numel);
      for (int r = 0; r < 3; ++r) {
        const TensorStateView v = (*cluster)->engine(r).tensor_state(t);
        std::copy(v.master.begin(), v.master.end(), master.begin() + v.begin);
      }
      const TensorStateView s = (*single)->engine(0).tensor_state(t);
      EXPECT_LE(ParamError(master, std::vector<double>(s.master.begin(), s.master.end())),
                kFloat32ParamTolerance)
          << DTypeName(dtype) << " " << specs[t].name;
    }
  }
}

// Different gradients on every rank: the 16-bit ring rounds every partial sum, the float32
// reduction does not. Against the float64 reference on the exact mean of the (16-bit) rank
// gradients, the float32 reduction stays within the float32 tolerance and the 16-bit one does
// not.
TEST(ShardedCameTest, Float32ReductionOfDifferent16BitGradientsFollowsTheExactMean) {
  const int world = 3;
  const DType dtype = DType::kBFloat16;
  const auto specs = TestModel(dtype);
  auto round = [](double v) { return static_cast<double>(BFloat16ToFloat(FloatToBFloat16(static_cast<float>(v)))); };
  auto grad = [&](int rank, int step, int t, int64_t i) { return round(Grad(rank, step, t, i)); };
  // The reference: start from the rounded parameters, step on the exact mean.
  auto params = InitialParams(specs);
  for (auto& p : params)
    for (double& v : p) v = round(v);
  std::vector<ReferenceState> states;
  for (const auto& sp : specs) states.push_back(ReferenceState::Zeros(TensorGeometry::FromShape(sp.shape)));
  auto run = [&](bool f32) {
    EngineOptions o = Options();
    o.reduce_in_float32 = f32;
    auto c = LocalCluster::Create(specs, world, 1, InitialParams(specs), o);
    EXPECT_TRUE(c.ok()) << c.status();
    for (int step = 1; step <= kSteps; ++step)
      EXPECT_TRUE((*c)->Step([&](int rank, int t, std::span<float> g) {
                      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(grad(rank, step, t, i));
                    }, {step, {}}).ok());
    return *std::move(c);
  };
  auto exact = run(true);
  auto rounded = run(false);
  const auto groups = TestGroups();
  for (int step = 1; step <= kSteps; ++step)
    for (size_t t = 0; t < specs.size(); ++t) {
      const TensorGeometry g = TensorGeometry::FromShape(specs[t].shape);
      std::vector<double> mean(g.numel);
      for (int64_t i = 0; i < g.numel; ++i) {
        for (int r = 0; r < world; ++r) mean[i] += grad(r, step, t, i);
        mean[i] /= world;
      }
      ReferenceStep(g, groups[specs[t].group], params[t], mean, states[t]);
    }
  double worst_exact = 0, worst_rounded = 0;
  for (size_t t = 0; t < specs.size(); ++t) {
    auto master = [&](LocalCluster& c) {
      std::vector<double> m(c.plan().tensors[t].geom.numel);
      for (int r = 0; r < world; ++r) {
        const TensorStateView v = c.engine(r).tensor_state(t);
        std::copy(v.master.begin(), v.master.end(), m.begin() + v.begin);
      }
      return m;
    };
    worst_exact = std::max(worst_exact, ParamError(master(*exact), params[t]));
    worst_rounded = std::max(worst_rounded, ParamError(master(*rounded), params[t]));
  }
  EXPECT_LE(worst_exact, kFloat32ParamTolerance);
  EXPECT_GT(worst_rounded, kFloat32ParamTolerance) << "the 16-bit reduction should differ measurably";
}

}  // namespace
}  // namespace came

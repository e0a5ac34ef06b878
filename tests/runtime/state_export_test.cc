// ShardedCame's round headers and whole-state transfer (Note [Step rounds]), ranks as threads:
// ExportState gathers exactly the ranks' state, also when only rank 0 asks and the others
// serve it from their Step; ImportState reshards it to another world size and the runs
// continue equal; bad states are refused unchanged; ranks that disagree on a step's scalars,
// or whose inputs are invalid on one rank, fail that step everywhere and change nothing.
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/local_cluster.h"
#include "runtime/sharded_came.h"
#include "tests/runtime/reference_model.h"
#include "tests/runtime/test_model.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

using ::testing::HasSubstr;
using testing::Grad;
using testing::InitialParams;
using testing::MeanGrad;
using testing::StepLr;
using testing::TestGroups;
using testing::TestModel;

std::unique_ptr<LocalCluster> MakeCluster(int world,
                                          absl::Duration timeout = absl::Seconds(60)) {
  EngineOptions o;
  o.groups = TestGroups();
  o.collective_timeout = timeout;
  const auto specs = TestModel();
  auto c = LocalCluster::Create(specs, world, /*alignment=*/1, InitialParams(specs), o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

void RunSteps(LocalCluster& c, int first, int last, int grad_world) {
  for (int step = first; step <= last; ++step) {
    auto stats = c.Step(
        [&](int rank, int t, std::span<float> g) {
          for (size_t i = 0; i < g.size(); ++i)
            g[i] = static_cast<float>(grad_world == 0 ? Grad(rank, step, t, i)
                                                      : MeanGrad(grad_world, step, t, i));
        },
        StepInputs{step, StepLr(step)});
    ASSERT_TRUE(stats.ok()) << stats.status();
  }
}

// Runs fn(rank) on every rank at once; returns each rank's status.
std::vector<absl::Status> OnRanks(int world, const std::function<absl::Status(int)>& fn) {
  std::vector<absl::Status> out(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { out[r] = fn(r); });
  for (auto& t : threads) t.join();
  return out;
}

// Returns tensor t's part of an exported state by the golden format's names.
std::map<std::string, std::vector<double>> Named(const ShardPlan& plan,
                                                 const std::vector<float>& state, int t) {
  const StateLayout l = ShardedCame::StateLayoutOf(plan);
  const auto& tp = plan.tensors[t];
  auto range = [&](int64_t from, int64_t n) {
    return std::vector<double>(state.begin() + from, state.begin() + from + n);
  };
  std::map<std::string, std::vector<double>> out;
  out["exp_avg"] = range(l.exp_avg + tp.offset, tp.geom.numel);
  if (!tp.geom.factored) {
    out["exp_avg_sq"] = range(l.exp_avg_sq + tp.offset, tp.geom.numel);
    return out;
  }
  const int64_t rows = tp.geom.rows(), cols = tp.geom.cols(), f = l.factored[t];
  out["exp_avg_sq_row"] = range(f, rows);
  out["exp_avg_sq_col"] = range(f + rows, cols);
  out["exp_avg_res_row"] = range(f + rows + cols, rows);
  out["exp_avg_res_col"] = range(f + 2 * rows + cols, cols);
  return out;
}

std::vector<std::vector<float>> ExportAll(LocalCluster& c) {
  const int64_t n = ShardedCame::StateLayoutOf(c.plan()).size;
  std::vector<std::vector<float>> out(c.world_size(), std::vector<float>(n, -1.0f));
  for (const absl::Status& s :
       OnRanks(c.world_size(), [&](int r) { return c.engine(r).ExportState(out[r]); }))
    EXPECT_TRUE(s.ok()) << s;
  return out;
}

class StateExportTest : public ::testing::TestWithParam<int> {};

TEST_P(StateExportTest, ExportIsEveryRanksStateOnEveryCaller) {
  const int world = GetParam();
  auto c = MakeCluster(world);
  ASSERT_NE(c, nullptr);
  RunSteps(*c, 1, 3, 0);
  const auto exported = ExportAll(*c);
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(exported[r], exported[0]) << "rank " << r;
    EXPECT_EQ(c->engine(r).last_step(), 3);
  }
  for (size_t t = 0; t < c->plan().tensors.size(); ++t) {
    auto state = c->State(t);
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(Named(c->plan(), exported[0], t), *state) << c->plan().tensors[t].spec.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, StateExportTest, ::testing::Values(1, 2, 3));

TEST(StateExport, OneRankExportsAndTheOthersServeItFromTheirStep) {
  auto c = MakeCluster(3);
  ASSERT_NE(c, nullptr);
  RunSteps(*c, 1, 2, 0);
  std::vector<std::map<std::string, std::vector<double>>> before;
  for (size_t t = 0; t < c->plan().tensors.size(); ++t) before.push_back(*c->State(t));
  std::vector<float> state(ShardedCame::StateLayoutOf(c->plan()).size);
  const auto done = OnRanks(3, [&](int r) -> absl::Status {
    if (r == 0) {
      if (absl::Status s = c->engine(0).ExportState(state); !s.ok()) return s;
    }
    // Ranks 1 and 2 are already in step 3 (their trainers did not ask for the state).
    return c->engine(r).Step(StepInputs{3, StepLr(3)}).status();
  });
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(done[r].ok()) << "rank " << r << ": " << done[r];
  for (size_t t = 0; t < before.size(); ++t)
    EXPECT_EQ(Named(c->plan(), state, t), before[t]) << c->plan().tensors[t].spec.name;
  for (size_t t = 0; t < before.size(); ++t)
    for (int r = 1; r < 3; ++r) EXPECT_EQ(c->Param(t, r), c->Param(t, 0));
}

TEST(StateExport, ImportReshardsAndTheRunsContinueEqual) {
  auto w2 = MakeCluster(2);
  ASSERT_NE(w2, nullptr);
  RunSteps(*w2, 1, 3, 0);
  const std::vector<float> state = ExportAll(*w2)[0];
  for (int world : {1, 3}) {
    SCOPED_TRACE(world);
    auto c = MakeCluster(world);
    ASSERT_NE(c, nullptr);
    auto single = MakeCluster(1);
    for (const absl::Status& s : OnRanks(world, [&](int r) {
           return c->engine(r).ImportState(state, 3);
         }))
      ASSERT_TRUE(s.ok()) << s;
    for (size_t t = 0; t < c->plan().tensors.size(); ++t)
      EXPECT_EQ(*c->State(t), Named(c->plan(), state, t)) << c->plan().tensors[t].spec.name;
    ASSERT_TRUE(single->engine(0).ImportState(state, 3).ok());
    // Steps 4..6 on W ranks equal one rank on their mean gradient.
    RunSteps(*c, 4, 6, 0);
    RunSteps(*single, 4, 6, world);
    for (size_t t = 0; t < c->plan().tensors.size(); ++t)
      EXPECT_LE(ParamError(c->Param(t), single->Param(t)), kFloat32ParamTolerance)
          << c->plan().tensors[t].spec.name;
  }
}

TEST(StateExport, ImportRefusesBadValuesAndChangesNothing) {
  auto c = MakeCluster(1);
  ASSERT_NE(c, nullptr);
  RunSteps(*c, 1, 2, 0);
  const std::vector<float> good = ExportAll(*c)[0];
  const StateLayout l = ShardedCame::StateLayoutOf(c->plan());
  const int conv = 2;  // {3, 5, 7}: factored
  struct Bad {
    const char* what;
    int64_t index;
    float value;
    const char* message;
  } bads[] = {
      {"NaN momentum", l.exp_avg + 3, std::nanf(""), "tensor 'embed': exp_avg[3] is nan"},
      {"negative second moment", l.exp_avg_sq + c->plan().tensors[1].offset, -1.0f,
       "tensor 'embed_bias': exp_avg_sq[0] is -1 (a second moment must be finite and >= 0)"},
      {"infinite factored statistic", l.factored[conv] + 1, INFINITY,
       "tensor 'conv': factored statistics[1] is inf"},
  };
  for (const Bad& bad : bads) {
    SCOPED_TRACE(bad.what);
    std::vector<float> state = good;
    state[bad.index] = bad.value;
    absl::Status s = c->engine(0).ImportState(state, 9);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(bad.message));
    EXPECT_EQ(ExportAll(*c)[0], good);
    EXPECT_EQ(c->engine(0).last_step(), 2);
  }
  std::vector<float> short_state(good.begin(), good.end() - 1);
  EXPECT_EQ(c->engine(0).ImportState(short_state, 9).code(), absl::StatusCode::kInvalidArgument);
}

// Runs one step on every rank with rank r's inputs from inputs_of(r); returns the statuses.
std::vector<absl::Status> StepWith(LocalCluster& c,
                                   const std::function<StepInputs(int)>& inputs_of) {
  return OnRanks(c.world_size(),
                 [&](int r) { return c.engine(r).Step(inputs_of(r)).status(); });
}

TEST(StepRounds, DisagreeingScalarsFailTheStepOnEveryRankAndChangeNothing) {
  auto c = MakeCluster(2);
  ASSERT_NE(c, nullptr);
  RunSteps(*c, 1, 2, 0);
  const std::vector<float> state = ExportAll(*c)[0];
  const std::vector<double> param = c->Param(0);
  struct Case {
    const char* what;
    std::function<void(StepInputs&)> rank1;
    const char* message;
  } cases[] = {
      {"lr", [](StepInputs& in) { in.lr[1] *= 2; },
       "step 3: the ranks disagree on lr of parameter group 1 ("},
      {"beta1", [](StepInputs& in) { in.groups[0].beta1 = 0.8; },
       "the ranks disagree on beta1 of parameter group 0 (0.8 on one rank, 0.9 on another)"},
      {"step number", [](StepInputs& in) { in.step = 4; },
       "the ranks disagree on the step number (3 on one rank, 4 on another)"},
      {"max_grad_norm", [](StepInputs& in) { in.max_grad_norm = 1.0; },
       "the ranks disagree on max_grad_norm (0 on one rank, 1 on another)"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    const auto statuses = StepWith(*c, [&](int r) {
      StepInputs in{3, StepLr(3)};
      in.groups = TestGroups();
      in.max_grad_norm = 0.0;
      if (r == 1) k.rank1(in);
      return in;
    });
    for (const absl::Status& s : statuses) {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr(k.message));
    }
  }
  EXPECT_EQ(ExportAll(*c)[0], state);
  EXPECT_EQ(c->Param(0), param);
  RunSteps(*c, 3, 3, 0);  // the engines still work
  EXPECT_NE(c->Param(0), param);
}

TEST(StepRounds, InvalidInputsOnOneRankFailTheStepEverywhere) {
  auto c = MakeCluster(2);
  ASSERT_NE(c, nullptr);
  const auto statuses = StepWith(*c, [](int r) {
    StepInputs in{1, StepLr(1)};
    in.groups = TestGroups();
    if (r == 1) in.groups[0].eps1 = 0;
    return in;
  });
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(statuses[1].message(), "step 1: parameter group 0: eps must be > 0, got eps1=0");
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(statuses[0].message()), HasSubstr("step 1: rank 1 refused its step inputs"));
  RunSteps(*c, 1, 1, 0);
}

TEST(StepRounds, RanksHoldingDifferentStepsAreRefused) {
  auto c = MakeCluster(2);
  ASSERT_NE(c, nullptr);
  c->engine(1).set_last_step(5);
  for (const absl::Status& s : StepWith(*c, [](int) { return StepInputs{6, StepLr(6)}; })) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("different steps (0 and 5)"));
  }
}

TEST(StepRounds, EveryHyperparameterMayChangeBetweenSteps) {
  // A step's groups reach the kernels: beta1 = 0 makes the momentum the clipped update itself,
  // which differs from the default beta1's.
  auto a = MakeCluster(2);
  auto b = MakeCluster(2);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  auto grads = [](int rank, int t, std::span<float> g) {
    for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(Grad(rank, 1, t, i));
  };
  StepInputs in{1, StepLr(1)};
  in.groups = TestGroups();
  ASSERT_TRUE(a->Step(grads, in).ok());
  for (CameHyper& h : in.groups) {
    h.beta1 = 0.0;
    h.eps1 = 1e-20;
    h.clip_threshold = 0.25;
  }
  ASSERT_TRUE(b->Step(grads, in).ok());
  EXPECT_NE(a->Param(0), b->Param(0));
  EXPECT_NE(*a->State(0), *b->State(0));
}

// Rounds of different kinds, and refused calls, fail on every rank at once: well within the
// collective deadline, with nothing changed, and the engines keep working.
constexpr absl::Duration kDeadline = absl::Seconds(30);
constexpr absl::Duration kPrompt = absl::Seconds(5);  // a small fraction of kDeadline

struct Timed {
  std::vector<absl::Status> statuses;
  absl::Duration took;
};

Timed OnRanksTimed(int world, const std::function<absl::Status(int)>& fn) {
  const absl::Time start = absl::Now();
  Timed t{OnRanks(world, fn), absl::ZeroDuration()};
  t.took = absl::Now() - start;
  return t;
}

class RoundKindsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = MakeCluster(2, kDeadline);
    ASSERT_NE(c_, nullptr);
    RunSteps(*c_, 1, 2, 0);
    state_ = ExportAll(*c_)[0];
    param_ = c_->Param(0);
  }
  // Checks that nothing changed and that steps 3 and 4 still run on every rank.
  void ExpectUnchangedAndWorking() {
    EXPECT_EQ(ExportAll(*c_)[0], state_);
    EXPECT_EQ(c_->Param(0), param_);
    for (int r = 0; r < 2; ++r) EXPECT_EQ(c_->engine(r).last_step(), 2);
    RunSteps(*c_, 3, 4, 0);
    EXPECT_NE(c_->Param(0), param_);
  }
  std::vector<float> Buffer() const {
    return std::vector<float>(ShardedCame::StateLayoutOf(c_->plan()).size);
  }
  std::unique_ptr<LocalCluster> c_;
  std::vector<float> state_;
  std::vector<double> param_;
};

TEST_F(RoundKindsTest, AnExportAgainstASaveOrALoadFailsBothAtOnce) {
  for (RoundKind other : {RoundKind::kSave, RoundKind::kLoad}) {
    SCOPED_TRACE(RoundKindName(other));
    std::vector<float> out = Buffer();
    const Timed t = OnRanksTimed(2, [&](int r) {
      return r == 0 ? c_->engine(0).ExportState(out) : c_->engine(1).OpenRound(other, 2);
    });
    EXPECT_LT(t.took, kPrompt);
    for (const absl::Status& s : t.statuses) {
      EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
      EXPECT_THAT(std::string(s.message()),
                  HasSubstr(absl::StrCat("do not pair up: export on rank 0 (step 2), ",
                                         RoundKindName(other), " on rank 1 (step 2)")));
    }
  }
  ExpectUnchangedAndWorking();
}

TEST_F(RoundKindsTest, ADetachFailsAPendingExportAtOnceAndEveryLaterCall) {
  std::vector<float> out = Buffer();
  const Timed t = OnRanksTimed(2, [&](int r) {
    return r == 0 ? c_->engine(0).ExportState(out)
                  : c_->engine(1).OpenRound(RoundKind::kDetach, 2);
  });
  EXPECT_LT(t.took, kPrompt);
  for (const absl::Status& s : t.statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("do not pair up: export on rank 0 (step 2), detach on rank 1 (step 2)"));
  }
  // Rank 1's engine is gone: rank 0 refuses every later call at once, its detach included.
  const absl::Time start = absl::Now();
  for (const absl::Status& s : {c_->engine(0).Step(StepInputs{3, StepLr(3)}).status(),
                                c_->engine(0).ExportState(out),
                                c_->engine(0).OpenRound(RoundKind::kDetach, 2)}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr("A rank detached: detach this rank too"));
  }
  EXPECT_LT(absl::Now() - start, kPrompt);
  EXPECT_EQ(c_->Param(0), param_);
}

TEST_F(RoundKindsTest, AStepAgainstASaveFailsBothAtOnceNamingTheSteps) {
  const Timed t = OnRanksTimed(2, [&](int r) {
    return r == 0 ? c_->engine(0).Step(StepInputs{3, StepLr(3)}).status()
                  : c_->engine(1).OpenRound(RoundKind::kSave, 2);
  });
  EXPECT_LT(t.took, kPrompt);
  for (const absl::Status& s : t.statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("step on rank 0 (step 3), save on rank 1 (step 2)"));
  }
  ExpectUnchangedAndWorking();
}

TEST_F(RoundKindsTest, MatchingRoundsOpenAndASaveComparesTheStep) {
  for (RoundKind k : {RoundKind::kSave, RoundKind::kLoad, RoundKind::kDetach})
    for (const absl::Status& s : OnRanks(2, [&](int r) { return c_->engine(r).OpenRound(k, 2); }))
      EXPECT_TRUE(s.ok()) << RoundKindName(k) << ": " << s;
  const Timed t = OnRanksTimed(
      2, [&](int r) { return c_->engine(r).OpenRound(RoundKind::kSave, 2 + r); });
  EXPECT_LT(t.took, kPrompt);
  for (const absl::Status& s : t.statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(std::string(s.message()),
                HasSubstr("the ranks disagree on the step number (2 on one rank, 3 on another)"));
  }
  ExpectUnchangedAndWorking();
}

TEST_F(RoundKindsTest, ARefusedStepFailsTheStepOnEveryRankAtOnce) {
  const absl::Status reason = absl::FailedPreconditionError("step 3 is out of order");
  const Timed t = OnRanksTimed(2, [&](int r) {
    return r == 0 ? c_->engine(0).Step(StepInputs{3, StepLr(3)}).status()
                  : c_->engine(1).OpenRound(RoundKind::kStep, 3, reason);
  });
  EXPECT_LT(t.took, kPrompt);
  EXPECT_EQ(t.statuses[1], reason);
  EXPECT_EQ(t.statuses[0].code(), absl::StatusCode::kInvalidArgument) << t.statuses[0];
  EXPECT_THAT(std::string(t.statuses[0].message()),
              HasSubstr("step 3: rank 1 refused its step inputs"));
  ExpectUnchangedAndWorking();
}

TEST_F(RoundKindsTest, ARefusedSaveFailsEveryRankAtOnce) {
  const absl::Status reason = absl::FailedPreconditionError("asked to save step 5");
  const Timed t = OnRanksTimed(2, [&](int r) {
    return c_->engine(r).OpenRound(RoundKind::kSave, 2, r == 0 ? reason : absl::OkStatus());
  });
  EXPECT_LT(t.took, kPrompt);
  EXPECT_EQ(t.statuses[0], reason);
  EXPECT_EQ(t.statuses[1].code(), absl::StatusCode::kFailedPrecondition) << t.statuses[1];
  EXPECT_THAT(std::string(t.statuses[1].message()),
              HasSubstr("rank 0 refused the save (step 2; its error says why)"));
  ExpectUnchangedAndWorking();
}

TEST_F(RoundKindsTest, ARefusedExportFailsTheOtherExportersAndTheServersStepOn) {
  // Both ranks export, rank 1 refuses: both fail at once.
  const absl::Status reason = absl::ResourceExhaustedError("no room for the state");
  std::vector<float> out = Buffer();
  const Timed t = OnRanksTimed(2, [&](int r) {
    return r == 0 ? c_->engine(0).ExportState(out)
                  : c_->engine(1).OpenRound(RoundKind::kExport, 2, reason);
  });
  EXPECT_LT(t.took, kPrompt);
  EXPECT_EQ(t.statuses[1], reason);
  EXPECT_EQ(t.statuses[0].code(), absl::StatusCode::kFailedPrecondition) << t.statuses[0];
  EXPECT_THAT(std::string(t.statuses[0].message()),
              HasSubstr("rank 1 refused the export of the state after step 2"));
  // Rank 0 refuses its export while rank 1 is in step 3: rank 1 does not serve it, and the
  // step runs once rank 0 steps too.
  const auto done = OnRanks(2, [&](int r) -> absl::Status {
    if (r == 0) {
      absl::Status s = c_->engine(0).OpenRound(RoundKind::kExport, 2, reason);
      if (s != reason) return absl::InternalError(absl::StrCat("unexpected: ", s.ToString()));
    }
    return c_->engine(r).Step(StepInputs{3, StepLr(3)}).status();
  });
  for (const absl::Status& s : done) EXPECT_TRUE(s.ok()) << s;
  EXPECT_NE(c_->Param(0), param_);
}

TEST(RoundKinds, OneRankIsRefusedLocally) {
  auto c = MakeCluster(1);
  ASSERT_NE(c, nullptr);
  const absl::Status reason = absl::FailedPreconditionError("refused");
  EXPECT_EQ(c->engine(0).OpenRound(RoundKind::kSave, 0, reason), reason);
  EXPECT_TRUE(c->engine(0).OpenRound(RoundKind::kSave, 0).ok());
  EXPECT_EQ(c->engine(0).OpenRound(RoundKind::kStep, 1).code(), absl::StatusCode::kInternal);
  RunSteps(*c, 1, 1, 0);
}

}  // namespace
}  // namespace came

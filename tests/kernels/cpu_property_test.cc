// Random property tests of the fused CPU kernels (float32) against the double reference, by
// the golden README's criterion and tolerances, over many steps: awkward shapes, huge
// dynamic range, zero rows and columns, 16-bit gradients and parameters, parameter groups,
// thread counts, gradient-norm clipping, skipped steps, and the phase API run by hand over
// arbitrary element ranges with the partial sums completed across them (Note [Phases]).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu_came.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"
#include "kernels/reference.h"
#include "tools/replay/case_io.h"

namespace came {
namespace {

using Rng = std::mt19937_64;

// The largest errors seen per category, printed once at the end of the run.
class ErrorLog : public testing::Environment {
 public:
  // Returns the larger of two errors; NaN wins.
  static double Max(double a, double b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }
  static void Record(const std::string& category, double param, double state) {
    auto& e = Entries()[category];
    e.first = Max(e.first, param);
    e.second = Max(e.second, state);
  }
  void TearDown() override {
    for (const auto& [name, e] : Entries())
      std::printf("[ max error ] %-28s params %.3e  state %.3e\n", name.c_str(), e.first,
                  e.second);
  }

 private:
  static std::map<std::string, std::pair<double, double>>& Entries() {
    static auto* entries = new std::map<std::string, std::pair<double, double>>;
    return *entries;
  }
};
testing::Environment* const kErrorLog = testing::AddGlobalTestEnvironment(new ErrorLog);

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

template <typename T>
bool SameBytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The row and column statistics of one factored tensor (a rank keeps its own copy).
struct Stats {
  std::vector<float> sq_row, sq_col, res_row, res_col;
  explicit Stats(const TensorGeometry& g)
      : sq_row(g.rows()), sq_col(g.cols()), res_row(g.rows()), res_col(g.cols()) {}
  bool operator==(const Stats& o) const {
    return SameBytes(sq_row, o.sq_row) && SameBytes(sq_col, o.sq_col) &&
           SameBytes(res_row, o.res_row) && SameBytes(res_col, o.res_col);
  }
};

enum class GradKind {
  kNormal,            // N(0, 1)
  kLogUniform,        // random sign, magnitude 10^U(-12, 12) (float16: 10^U(-4, 4))
  kZeroRowsCols,      // N(0, 1) with some rows zero at every step, some columns every other
  kLargeAndZeroRows,  // odd rows zero, even rows +-1e8..3e8
};

struct TensorSpec {
  std::vector<int64_t> shape;
  int group = 0;
  DType grad_dtype = DType::kFloat32;
  std::optional<DType> param_dtype;  // a parameter copy the kernel refreshes
  GradKind kind = GradKind::kNormal;
};

TensorSpec Spec(std::vector<int64_t> shape, int group = 0) {
  TensorSpec s;
  s.shape = std::move(shape);
  s.group = group;
  return s;
}

// One tensor's buffers for the CPU kernels and the reference's, fed the same inputs: the
// reference sees exactly the gradient values the kernel reads (rounded to grad_dtype).
struct TestTensor {
  TensorSpec spec;
  TensorGeometry geom;
  std::vector<uint8_t> grad;
  std::vector<double> grad_ref;
  std::vector<float> master, exp_avg, exp_avg_sq;
  Stats stats;
  std::vector<uint8_t> param;
  std::vector<double> ref_param;
  ReferenceState ref;

  TestTensor(const TensorSpec& s, const std::vector<float>& param0)
      : spec(s),
        geom(TensorGeometry::FromShape(s.shape)),
        grad(geom.numel * DTypeSize(s.grad_dtype)),
        grad_ref(geom.numel),
        master(param0),
        exp_avg(geom.numel),
        exp_avg_sq(geom.factored ? 0 : geom.numel),
        stats(geom),
        param(s.param_dtype ? geom.numel * DTypeSize(*s.param_dtype) : 0),
        ref_param(param0.begin(), param0.end()),
        ref(ReferenceState::Zeros(geom)) {}

  // Returns the slice [begin, end) of this tensor with `st` as its statistics.
  TensorSlice Slice(int64_t begin, int64_t end, Stats& st) {
    TensorSlice s;
    s.geom = geom;
    s.begin = begin;
    s.end = end;
    s.group = spec.group;
    s.grad = grad.data() + begin * DTypeSize(spec.grad_dtype);
    s.grad_dtype = spec.grad_dtype;
    s.master = master.data() + begin;
    if (spec.param_dtype) {
      s.param = param.data() + begin * DTypeSize(*spec.param_dtype);
      s.param_dtype = *spec.param_dtype;
    }
    s.exp_avg = exp_avg.data() + begin;
    if (geom.factored) {
      s.exp_avg_sq_row = st.sq_row.data();
      s.exp_avg_sq_col = st.sq_col.data();
      s.exp_avg_res_row = st.res_row.data();
      s.exp_avg_res_col = st.res_col.data();
    } else {
      s.exp_avg_sq = exp_avg_sq.data() + begin;
    }
    return s;
  }
  TensorSlice Whole() { return Slice(0, geom.numel, stats); }

  // Stores the gradient in grad_dtype; the reference gets the rounded values.
  void SetGrad(const std::vector<double>& g) {
    for (int64_t i = 0; i < geom.numel; ++i) {
      StoreFromFloat(grad.data(), spec.grad_dtype, i, static_cast<float>(g[i]));
      grad_ref[i] = LoadAsFloat(grad.data(), spec.grad_dtype, i);
    }
  }
  double GradSumSq() const {
    double s = 0.0;
    for (double x : grad_ref) s += x * x;
    return s;
  }
  void StepReference(const CameHyper& h, double grad_scale) {
    ReferenceStep(geom, h, ref_param, grad_ref, ref, grad_scale);
  }

  // Returns the README's state error of the CPU state against the reference's, worst tensor.
  double StateErr(const Stats& st) const {
    double e = StateError(ToDouble(exp_avg), ref.exp_avg);
    if (geom.factored) {
      e = std::max({e, StateError(ToDouble(st.sq_row), ref.exp_avg_sq_row),
                    StateError(ToDouble(st.sq_col), ref.exp_avg_sq_col),
                    StateError(ToDouble(st.res_row), ref.exp_avg_res_row),
                    StateError(ToDouble(st.res_col), ref.exp_avg_res_col)});
    } else {
      e = std::max(e, StateError(ToDouble(exp_avg_sq), ref.exp_avg_sq));
    }
    return e;
  }

  // Expects the parameter copy to be the master rounded to its dtype, bit for bit.
  void ExpectParamCopyIsMasterRounded() const {
    if (!spec.param_dtype) return;
    const DType t = *spec.param_dtype;
    std::vector<uint8_t> want(param.size());
    for (int64_t i = 0; i < geom.numel; ++i) StoreFromFloat(want.data(), t, i, master[i]);
    for (int64_t i = 0; i < geom.numel; ++i) {
      const size_t w = DTypeSize(t);
      if (std::memcmp(&want[i * w], &param[i * w], w) != 0) {
        ADD_FAILURE() << "param copy (" << DTypeName(t) << ") element " << i
                      << " is not the master " << master[i] << " rounded";
        return;
      }
    }
  }

  // Returns every buffer the kernel may write, for bitwise before/after comparisons.
  std::vector<uint8_t> Snapshot() const {
    std::vector<uint8_t> out;
    auto add = [&](const auto& v) {
      const auto* p = reinterpret_cast<const uint8_t*>(v.data());
      out.insert(out.end(), p, p + v.size() * sizeof(v[0]));
    };
    add(master), add(exp_avg), add(exp_avg_sq), add(param);
    add(stats.sq_row), add(stats.sq_col), add(stats.res_row), add(stats.res_col);
    return out;
  }
};

using Tensors = std::vector<std::unique_ptr<TestTensor>>;

// Returns a random gradient of this kind; `step` varies which columns are zero.
std::vector<double> MakeGrad(const TestTensor& t, Rng& rng, int step) {
  const int64_t n = t.geom.numel;
  std::vector<double> g(n);
  std::normal_distribution<double> normal;
  if (t.spec.kind == GradKind::kLogUniform) {
    // float16 holds 6e-5..65504 (normal); the others 1e-12..1e12 with g^2 sums in range.
    const double e = t.spec.grad_dtype == DType::kFloat16 ? 4.0 : 12.0;
    std::uniform_real_distribution<double> expo(-e, e);
    for (double& x : g) x = (rng() & 1 ? 1.0 : -1.0) * std::pow(10.0, expo(rng));
    return g;
  }
  if (t.spec.kind == GradKind::kLargeAndZeroRows) {
    for (int64_t k = 0; k < n; ++k)
      g[k] = (k / t.geom.m) % 2 ? 0.0 : (k % 3 + 1) * (k % 2 ? -1e8 : 1e8);
    return g;
  }
  for (double& x : g) x = normal(rng);
  if (t.spec.kind == GradKind::kZeroRowsCols) {
    const int64_t m = t.geom.m;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t row = k / m, col = t.geom.factored ? (k / (t.geom.n * m)) * m + k % m : k;
      if ((row * 7 + 3) % 4 == 0 || (step % 2 == 1 && col % 3 == 1)) g[k] = 0.0;
    }
  }
  return g;
}

// Returns random initial parameters for these specs (float values).
std::vector<std::vector<float>> MakeParams(const std::vector<TensorSpec>& specs, Rng& rng) {
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> out;
  for (const TensorSpec& s : specs) {
    std::vector<float> p(TensorGeometry::FromShape(s.shape).numel);
    for (float& x : p) x = normal(rng);
    out.push_back(std::move(p));
  }
  return out;
}

Tensors MakeTensors(const std::vector<TensorSpec>& specs,
                    const std::vector<std::vector<float>>& params) {
  Tensors out;
  for (size_t i = 0; i < specs.size(); ++i)
    out.push_back(std::make_unique<TestTensor>(specs[i], params[i]));
  return out;
}

CameHyper Hyper(double lr, double wd = 0.0, double clip = 1.0) {
  CameHyper h;
  h.lr = lr;
  h.weight_decay = wd;
  h.clip_threshold = clip;
  return h;
}

struct Scenario {
  std::vector<TensorSpec> tensors;
  std::vector<CameHyper> groups = {Hyper(1e-2)};
  int threads = 2;
  int steps = 10;
  double max_grad_norm = 0.0;
  uint64_t seed = 1;
};

// Returns a one-group scenario over these tensors, every one with gradients of `kind`.
Scenario MakeScenario(std::vector<TensorSpec> specs, GradKind kind, int threads, uint64_t seed) {
  Scenario sc;
  sc.tensors = std::move(specs);
  for (TensorSpec& t : sc.tensors) t.kind = kind;
  sc.threads = threads;
  sc.seed = seed;
  return sc;
}

// Draws every tensor's gradient for one step into every copy and steps the copies'
// references; returns the global gradient norm.
double NextGradients(const Scenario& sc, std::span<Tensors* const> copies, Rng& rng, int step) {
  Tensors& tensors = *copies[0];
  double sum_sq = 0.0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::vector<double> g = MakeGrad(*tensors[i], rng, step);
    for (Tensors* c : copies) (*c)[i]->SetGrad(g);
    sum_sq += tensors[i]->GradSumSq();
  }
  const double norm = std::sqrt(sum_sq);
  const double scale = GradNormScale(norm, sc.max_grad_norm);
  for (Tensors* c : copies)
    for (auto& t : *c) t->StepReference(sc.groups[t->spec.group], scale);
  return norm;
}

// Checks a tensor (with statistics `st`) against its reference; tracks the largest errors.
void CheckAgainstReference(const TestTensor& t, const Stats& st, int step, double& max_param,
                           double& max_state) {
  const double pe = ParamError(ToDouble(t.master), t.ref_param);
  const double se = t.StateErr(st);
  EXPECT_LE(pe, kFloat32ParamTolerance) << ShapeString(t.spec.shape) << " step " << step;
  EXPECT_LE(se, kFloat32StateTolerance) << ShapeString(t.spec.shape) << " step " << step;
  max_param = ErrorLog::Max(max_param, pe);
  max_state = ErrorLog::Max(max_state, se);
  t.ExpectParamCopyIsMasterRounded();
}

// Runs the scenario with every tensor whole in one CpuCame and LocalStepper.
void RunWhole(const Scenario& sc, const std::string& category) {
  SCOPED_TRACE(category + " seed " + std::to_string(sc.seed) + " threads " +
               std::to_string(sc.threads));
  Rng rng(sc.seed);
  Tensors tensors = MakeTensors(sc.tensors, MakeParams(sc.tensors, rng));
  std::vector<TensorSlice> slices;
  for (auto& t : tensors) slices.push_back(t->Whole());
  CpuCame cpu(slices, sc.threads);
  LocalStepper stepper(cpu);
  double max_param = 0.0, max_state = 0.0;
  Tensors* copies[] = {&tensors};
  for (int step = 1; step <= sc.steps; ++step) {
    const double norm = NextGradients(sc, copies, rng, step);
    const StepResult r = stepper.Step(sc.groups, StepOptions{sc.max_grad_norm});
    ASSERT_FALSE(r.skipped) << "step " << step;
    EXPECT_NEAR(r.grad_norm, norm, 1e-12 * norm);
    EXPECT_NEAR(r.grad_scale, GradNormScale(norm, sc.max_grad_norm), 1e-12);
    for (const auto& t : tensors) CheckAgainstReference(*t, t->stats, step, max_param, max_state);
  }
  ErrorLog::Record(category, max_param, max_state);
}

std::vector<std::vector<int64_t>> AwkwardShapes() {
  return {{1, 1}, {1, 37}, {53, 1}, {13, 7}, {9, 33}, {5, 1001}, {3, 4, 7}, {2, 3, 5, 17},
          {1},    {7},     {1001}};
}

// Returns one spec per awkward shape, gradients in `grad_dtype`.
std::vector<TensorSpec> Specs(DType grad_dtype = DType::kFloat32) {
  std::vector<TensorSpec> specs;
  for (auto& s : AwkwardShapes()) {
    specs.push_back(Spec(s));
    specs.back().grad_dtype = grad_dtype;
  }
  return specs;
}

TEST(CpuPropertyTest, AwkwardShapesOnEveryThreadCount) {
  for (int threads : {1, 2, 3, 5})
    RunWhole(MakeScenario(Specs(), GradKind::kNormal, threads, 100 + threads), "shapes");
}

TEST(CpuPropertyTest, LongOneDimensionalTensor) {
  RunWhole(MakeScenario({Spec({1000003}), Spec({3, 1001})}, GradKind::kNormal, 3, 7),
           "shapes_1000003");
}

TEST(CpuPropertyTest, HugeDynamicRange) {
  for (int threads : {1, 3})
    RunWhole(MakeScenario(Specs(), GradKind::kLogUniform, threads, 200 + threads),
             "log_uniform_1e-12..1e12");
}

// A row of zero gradient next to rows of |g| ~ 1e8 (g^2 ~ 1e16, far inside float range):
// the zero row's r is ~eps1 = 1e-30 while mean(r) is ~1e13, so r / mean(r) (~1e-46) is below
// float's smallest subnormal. The reference gives that row an update of 0; a float32
// quotient underflows to 0, rsqrt(0) = inf and 0 * inf = NaN poisons the whole tensor
// through the update's RMS. The same underflow, or a subnormal quotient that has lost its
// precision, shows with log-uniform gradients on [n, 1] shapes (HugeDynamicRange).
TEST(CpuPropertyTest, ZeroRowNextToLargeRowsStaysFinite) {
  RunWhole(MakeScenario({Spec({2, 3}), Spec({4, 1}), Spec({2, 2, 3})}, GradKind::kLargeAndZeroRows,
                        1, 11),
           "zero_row_next_to_1e8");
}

TEST(CpuPropertyTest, ZeroRowsAndColumns) {
  for (int threads : {1, 2})
    RunWhole(MakeScenario(Specs(), GradKind::kZeroRowsCols, threads, 300 + threads),
             "zero_rows_cols");
}

TEST(CpuPropertyTest, SixteenBitGradients) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (GradKind kind : {GradKind::kNormal, GradKind::kLogUniform, GradKind::kZeroRowsCols})
      RunWhole(MakeScenario(Specs(dt), kind, 3, 400 + static_cast<int>(kind)),
               "grad_" + std::string(DTypeName(dt)));
}

TEST(CpuPropertyTest, ParameterCopiesAreTheMasterRounded) {
  for (DType pt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    Scenario sc;
    sc.tensors = Specs();
    for (TensorSpec& t : sc.tensors) t.param_dtype = pt;
    sc.tensors[1].grad_dtype = DType::kBFloat16;
    sc.tensors[8].grad_dtype = DType::kFloat16;
    sc.threads = 2;
    sc.seed = 500 + static_cast<int>(pt);
    RunWhole(sc, "param_copy_" + std::string(DTypeName(pt)));
  }
}

CameHyper OddHyper() {
  CameHyper h = Hyper(1e-3, 0.01, 2.0);
  h.beta1 = 0.8;
  h.beta2 = 0.99;
  h.beta3 = 0.999;
  h.eps1 = 1e-20;
  h.eps2 = 1e-12;
  return h;
}

TEST(CpuPropertyTest, ParameterGroups) {
  Scenario sc;
  sc.groups = {Hyper(1e-2), Hyper(3e-3, 0.1, 0.5), OddHyper()};
  sc.tensors = Specs();
  for (size_t i = 0; i < sc.tensors.size(); ++i) sc.tensors[i].group = static_cast<int>(i % 3);
  for (int threads : {1, 5}) {
    sc.threads = threads;
    sc.seed = 600 + threads;
    RunWhole(sc, "groups");
  }
}

TEST(CpuPropertyTest, GradientNormClipping) {
  for (double max_norm : {0.5, 10.0, 1e9}) {
    Scenario sc;
    sc.groups = {Hyper(1e-2), Hyper(3e-3, 0.1, 0.5)};
    sc.tensors = Specs();
    for (size_t i = 0; i < sc.tensors.size(); i += 2) sc.tensors[i].group = 1;
    sc.max_grad_norm = max_norm;
    sc.threads = 3;
    sc.seed = 700;
    RunWhole(sc, "max_grad_norm");
  }
}

// A non-finite gradient anywhere skips the step: nothing changes, bit for bit; the next
// finite steps continue as if it never happened.
TEST(CpuPropertyTest, NonFiniteGradientSkipsTheStepBitwise) {
  const float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kFloat16})
    for (float bad : kBad)
      for (int victim : {0, 3, 9}) {  // [1, 1], [13, 7], [7]
        SCOPED_TRACE(std::string(DTypeName(dt)) + " " + std::to_string(bad) + " in tensor " +
                     std::to_string(victim));
        Scenario sc;
        sc.tensors = Specs(dt);
        for (auto& t : sc.tensors) t.param_dtype = DType::kBFloat16;
        sc.max_grad_norm = 5.0;
        sc.seed = 800;
        Rng rng(sc.seed);
        Tensors tensors = MakeTensors(sc.tensors, MakeParams(sc.tensors, rng));
        std::vector<TensorSlice> slices;
        for (auto& t : tensors) slices.push_back(t->Whole());
        CpuCame cpu(slices, 3);
        LocalStepper stepper(cpu);
        Tensors* copies[] = {&tensors};
        double max_param = 0.0, max_state = 0.0;
        for (int step = 1; step <= 10; ++step) {
          if (step == 3 || step == 4) {
            for (auto& t : tensors) t->SetGrad(MakeGrad(*t, rng, step));
            TestTensor& v = *tensors[victim];
            StoreFromFloat(v.grad.data(), dt, v.geom.numel / 2, bad);
            std::vector<std::vector<uint8_t>> before;
            for (auto& t : tensors) before.push_back(t->Snapshot());
            const StepResult r = stepper.Step(sc.groups, StepOptions{sc.max_grad_norm});
            EXPECT_TRUE(r.skipped) << "step " << step;
            for (size_t i = 0; i < tensors.size(); ++i)
              EXPECT_TRUE(before[i] == tensors[i]->Snapshot())
                  << "tensor " << i << " changed in a skipped step " << step;
            continue;
          }
          NextGradients(sc, copies, rng, step);
          ASSERT_FALSE(stepper.Step(sc.groups, StepOptions{sc.max_grad_norm}).skipped);
          for (const auto& t : tensors)
            CheckAgainstReference(*t, t->stats, step, max_param, max_state);
        }
        ErrorLog::Record("after_skipped_steps", max_param, max_state);
      }
}

// Note [Phases] by hand: ranks each own a list of element ranges (pieces) of the tensors,
// one CpuCame per rank with its own copy of the row/column statistics of every tensor it
// touches; partial sums are completed across ranks in rank order between the phases.
struct Piece {
  int tensor;
  int64_t begin, end;
};

struct Rank {
  std::vector<Piece> pieces;
  std::vector<std::unique_ptr<Stats>> stats;  // per piece
  std::unique_ptr<CpuCame> cpu;
  std::vector<double> sums, sum_sq, clip;
};

// Sums the ranks' partial row/column sums per tensor and gives every rank the totals.
void AllReduceStats(std::vector<Rank>& ranks, const Tensors& tensors) {
  std::vector<std::vector<double>> total(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) total[t].assign(tensors[t]->geom.stats_size(), 0.0);
  for (Rank& r : ranks)
    for (size_t k = 0; k < r.pieces.size(); ++k) {
      std::vector<double>& tot = total[r.pieces[k].tensor];
      const int64_t off = r.cpu->stats_offset(static_cast<int>(k));
      for (size_t i = 0; i < tot.size(); ++i) tot[i] += r.sums[off + i];
    }
  for (Rank& r : ranks)
    for (size_t k = 0; k < r.pieces.size(); ++k) {
      const std::vector<double>& tot = total[r.pieces[k].tensor];
      std::copy(tot.begin(), tot.end(), r.sums.begin() + r.cpu->stats_offset(static_cast<int>(k)));
    }
}

// Runs one step over the ranks; returns false when it was skipped (non-finite gradient).
bool StitchedStep(std::vector<Rank>& ranks, const Tensors& tensors, const Scenario& sc) {
  double sum_sq = 0.0;
  bool finite = true;
  for (Rank& r : ranks) {
    const GradSummary g = r.cpu->GradStats(r.sums);
    sum_sq += g.sum_sq;
    finite = finite && g.finite();
  }
  if (!finite) return false;
  const double grad_scale = GradNormScale(std::sqrt(sum_sq), sc.max_grad_norm);
  AllReduceStats(ranks, tensors);
  for (Rank& r : ranks) r.cpu->UpdateSecondMoments(r.sums, sc.groups, grad_scale);
  std::vector<double> tensor_sum_sq(tensors.size(), 0.0);
  for (Rank& r : ranks) {
    r.cpu->UpdateSquares(r.sum_sq);
    for (size_t k = 0; k < r.pieces.size(); ++k) tensor_sum_sq[r.pieces[k].tensor] += r.sum_sq[k];
  }
  for (Rank& r : ranks) {
    for (size_t k = 0; k < r.pieces.size(); ++k) {
      const TestTensor& t = *tensors[r.pieces[k].tensor];
      r.clip[k] = ClipScale(tensor_sum_sq[r.pieces[k].tensor], static_cast<double>(t.geom.numel),
                            sc.groups[t.spec.group].clip_threshold);
    }
    r.cpu->Momentum(r.clip, r.sums);
  }
  AllReduceStats(ranks, tensors);
  for (Rank& r : ranks) r.cpu->UpdateResiduals(r.sums);
  for (Rank& r : ranks) r.cpu->Apply();
  return true;
}

// Runs the scenario twice, whole (LocalStepper) and stitched from the ranks' pieces, and
// checks both against the reference and each other at every step.
void RunStitched(const Scenario& sc, const std::vector<std::vector<Piece>>& layout,
                 const std::string& category) {
  SCOPED_TRACE(category + " seed " + std::to_string(sc.seed) + " ranks " +
               std::to_string(layout.size()));
  Rng rng(sc.seed);
  const auto params = MakeParams(sc.tensors, rng);
  Tensors whole = MakeTensors(sc.tensors, params), split = MakeTensors(sc.tensors, params);
  std::vector<TensorSlice> slices;
  for (auto& t : whole) slices.push_back(t->Whole());
  CpuCame whole_cpu(slices, sc.threads);
  LocalStepper stepper(whole_cpu);

  std::vector<Rank> ranks(layout.size());
  for (size_t ri = 0; ri < layout.size(); ++ri) {
    Rank& r = ranks[ri];
    r.pieces = layout[ri];
    std::vector<TensorSlice> rs;
    for (const Piece& p : r.pieces) {
      TestTensor& t = *split[p.tensor];
      r.stats.push_back(std::make_unique<Stats>(t.geom));
      rs.push_back(t.Slice(p.begin, p.end, *r.stats.back()));
    }
    r.cpu = std::make_unique<CpuCame>(rs, static_cast<int>(ri % 3) + 1);
    r.sums.assign(r.cpu->stats_size(), 0.0);
    r.sum_sq.assign(r.pieces.size(), 0.0);
    r.clip.assign(r.pieces.size(), 1.0);
  }

  double max_param = 0.0, max_state = 0.0, max_vs_whole = 0.0, max_state_vs_whole = 0.0;
  Tensors* copies[] = {&whole, &split};
  for (int step = 1; step <= sc.steps; ++step) {
    NextGradients(sc, copies, rng, step);
    ASSERT_FALSE(stepper.Step(sc.groups, StepOptions{sc.max_grad_norm}).skipped);
    ASSERT_TRUE(StitchedStep(ranks, split, sc));
    for (size_t ti = 0; ti < split.size(); ++ti) {
      const TestTensor& t = *split[ti];
      // Every rank's copy of the tensor's statistics is the same, bit for bit.
      const Stats* first = nullptr;
      for (const Rank& r : ranks)
        for (size_t k = 0; k < r.pieces.size(); ++k) {
          if (r.pieces[k].tensor != static_cast<int>(ti)) continue;
          if (first == nullptr) first = r.stats[k].get();
          EXPECT_TRUE(*first == *r.stats[k])
              << "statistics of tensor " << ti << " differ across ranks at step " << step;
        }
      ASSERT_NE(first, nullptr) << "tensor " << ti << " is in no rank";
      CheckAgainstReference(t, *first, step, max_param, max_state);
      const double vs_whole = ParamError(ToDouble(t.master), ToDouble(whole[ti]->master));
      EXPECT_LE(vs_whole, kFloat32ParamTolerance) << ShapeString(t.spec.shape) << " step " << step;
      max_vs_whole = ErrorLog::Max(max_vs_whole, vs_whole);
      const double state_vs_whole = std::max(
          StateError(ToDouble(t.exp_avg), ToDouble(whole[ti]->exp_avg)),
          t.geom.factored ? StateError(ToDouble(first->res_col), ToDouble(whole[ti]->stats.res_col))
                          : StateError(ToDouble(t.exp_avg_sq), ToDouble(whole[ti]->exp_avg_sq)));
      EXPECT_LE(state_vs_whole, kFloat32StateTolerance) << ShapeString(t.spec.shape);
      max_state_vs_whole = ErrorLog::Max(max_state_vs_whole, state_vs_whole);
    }
  }
  ErrorLog::Record(category, max_param, max_state);
  ErrorLog::Record(category + "_vs_whole", max_vs_whole, max_state_vs_whole);
}

// Returns sorted cut points in (0, n): `count` random ones plus a single-element range.
std::vector<int64_t> RandomCuts(int64_t n, int count, Rng& rng) {
  std::vector<int64_t> cuts;
  if (n < 2) return cuts;
  std::uniform_int_distribution<int64_t> pos(1, n - 1);
  for (int i = 0; i < count; ++i) cuts.push_back(pos(rng));
  if (n >= 3) {
    const int64_t p = std::uniform_int_distribution<int64_t>(1, n - 2)(rng);
    cuts.push_back(p);
    cuts.push_back(p + 1);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

// One rank per random range of every tensor.
std::vector<std::vector<Piece>> PerTensorRanges(const std::vector<TensorSpec>& specs, Rng& rng) {
  std::vector<std::vector<Piece>> layout;
  for (size_t t = 0; t < specs.size(); ++t) {
    const int64_t n = TensorGeometry::FromShape(specs[t].shape).numel;
    std::vector<int64_t> cuts = RandomCuts(n, 3, rng);
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(n);
    for (size_t k = 0; k + 1 < cuts.size(); ++k)
      layout.push_back({{static_cast<int>(t), cuts[k], cuts[k + 1]}});
  }
  return layout;
}

// The tensors laid end to end and cut at `ranks` - 1 random points plus around one element,
// one rank per chunk (a rank may hold pieces of several tensors and a tensor may span
// several ranks).
std::vector<std::vector<Piece>> FlatChunks(const std::vector<TensorSpec>& specs, int ranks,
                                           Rng& rng) {
  std::vector<int64_t> start = {0};
  for (const TensorSpec& s : specs)
    start.push_back(start.back() + TensorGeometry::FromShape(s.shape).numel);
  std::vector<int64_t> cuts = RandomCuts(start.back(), ranks - 1, rng);
  cuts.insert(cuts.begin(), 0);
  cuts.push_back(start.back());
  std::vector<std::vector<Piece>> layout;
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    std::vector<Piece> pieces;
    for (size_t t = 0; t < specs.size(); ++t) {
      const int64_t lo = std::max(cuts[k], start[t]), hi = std::min(cuts[k + 1], start[t + 1]);
      if (lo < hi) pieces.push_back({static_cast<int>(t), lo - start[t], hi - start[t]});
    }
    layout.push_back(std::move(pieces));
  }
  return layout;
}

Scenario MixedScenario(uint64_t seed) {
  Scenario sc;
  sc.groups = {Hyper(1e-2), Hyper(3e-3, 0.1, 0.5), OddHyper()};
  sc.tensors = Specs();
  sc.tensors.push_back(Spec({20011}, 1));
  for (size_t i = 0; i < sc.tensors.size(); ++i) {
    TensorSpec& t = sc.tensors[i];
    t.group = static_cast<int>(i % 3);
    if (i % 4 == 1) t.grad_dtype = DType::kBFloat16;
    if (i % 4 == 2) t.param_dtype = DType::kFloat16;
    if (i % 5 == 3) t.kind = GradKind::kZeroRowsCols;
    if (i % 5 == 4) t.kind = GradKind::kLogUniform;
  }
  sc.steps = 12;
  sc.max_grad_norm = 20.0;
  sc.seed = seed;
  return sc;
}

TEST(CpuPropertyTest, PhasesOverRandomRangesOfEachTensor) {
  for (uint64_t seed : {900, 901}) {
    Scenario sc = MixedScenario(seed);
    Rng cut_rng(seed * 31);
    RunStitched(sc, PerTensorRanges(sc.tensors, cut_rng), "ranges_per_tensor");
  }
}

TEST(CpuPropertyTest, PhasesOverFlatChunksOfSeveralTensors) {
  for (int ranks : {2, 3, 5, 8}) {
    Scenario sc = MixedScenario(1000 + ranks);
    Rng cut_rng(ranks * 77);
    RunStitched(sc, FlatChunks(sc.tensors, ranks, cut_rng), "flat_chunks");
  }
}

}  // namespace
}  // namespace came

// Tests of the kernels' C ABI (kernels/capi/came_capi.h) through libcame_capi.so: argument
// checks that leave every buffer unchanged, steps equal to CpuCame's on the same data (also
// when the buffers move between steps), skipped non-finite steps, and the CUDA request of a
// CPU-only library.
#include "kernels/capi/came_capi.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/came_math.h"
#include "kernels/cpu_came.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"

namespace came {
namespace {

using ::testing::HasSubstr;

// One tensor's buffers, owned (parameters, gradient, master, state), with the C ABI's views.
struct Tensor {
  came_tensor_desc desc{};
  TensorGeometry geom;
  std::vector<uint16_t> param16;  // bf16/fp16 parameters
  std::vector<float> param32;     // float32 parameters, or the master of a 16-bit one
  std::vector<float> grad;
  std::vector<float> exp_avg, exp_avg_sq, sq_row, sq_col, res_row, res_col;

  Tensor(std::vector<int64_t> shape, int32_t param_dtype, int32_t group, uint64_t seed) {
    desc.ndim = static_cast<int32_t>(shape.size());
    for (size_t k = 0; k < shape.size(); ++k) desc.shape[k] = shape[k];
    desc.param_dtype = param_dtype;
    desc.grad_dtype = CAME_FLOAT32;
    desc.group = group;
    geom = TensorGeometry::FromShape(shape);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    param32.resize(geom.numel);
    for (float& p : param32) p = normal(rng);
    if (param_dtype != CAME_FLOAT32) {
      param16.resize(geom.numel);
      for (int64_t i = 0; i < geom.numel; ++i) {
        StoreFromFloat(param16.data(), static_cast<DType>(param_dtype), i, param32[i]);
        param32[i] = LoadAsFloat(param16.data(), static_cast<DType>(param_dtype), i);
      }
    }
    grad.resize(geom.numel);
    exp_avg.assign(geom.numel, 0.0f);
    if (geom.factored) {
      sq_row.assign(geom.rows(), 0.0f);
      res_row.assign(geom.rows(), 0.0f);
      sq_col.assign(geom.cols(), 0.0f);
      res_col.assign(geom.cols(), 0.0f);
    } else {
      exp_avg_sq.assign(geom.numel, 0.0f);
    }
  }

  void FillGrad(std::mt19937_64& rng) {
    std::normal_distribution<float> normal;
    for (float& g : grad) g = 0.1f * normal(rng);
  }

  static float* Data(std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

  came_tensor_ptrs Ptrs() {
    came_tensor_ptrs p{};
    const bool low = desc.param_dtype != CAME_FLOAT32;
    p.param = low ? static_cast<void*>(param16.data()) : param32.data();
    p.grad = grad.data();
    p.master = low ? param32.data() : nullptr;
    p.exp_avg = exp_avg.data();
    p.exp_avg_sq = Data(exp_avg_sq);
    p.exp_avg_sq_row = Data(sq_row);
    p.exp_avg_sq_col = Data(sq_col);
    p.exp_avg_res_row = Data(res_row);
    p.exp_avg_res_col = Data(res_col);
    return p;
  }

  // Returns the same tensor as a CpuCame slice over these buffers.
  TensorSlice Slice() {
    TensorSlice s;
    s.geom = geom;
    s.begin = 0;
    s.end = geom.numel;
    s.group = desc.group;
    s.grad = grad.data();
    s.master = param32.data();
    if (desc.param_dtype != CAME_FLOAT32) {
      s.param = param16.data();
      s.param_dtype = static_cast<DType>(desc.param_dtype);
    }
    s.exp_avg = exp_avg.data();
    s.exp_avg_sq = Data(exp_avg_sq);
    s.exp_avg_sq_row = Data(sq_row);
    s.exp_avg_sq_col = Data(sq_col);
    s.exp_avg_res_row = Data(res_row);
    s.exp_avg_res_col = Data(res_col);
    return s;
  }

  // Returns every byte the optimizer may change, for bitwise comparisons.
  std::vector<uint8_t> Bytes() const {
    std::vector<uint8_t> out;
    auto add = [&out](const auto& v) {
      const auto* b = reinterpret_cast<const uint8_t*>(v.data());
      out.insert(out.end(), b, b + v.size() * sizeof(v[0]));
    };
    add(param16);
    add(param32);
    add(exp_avg);
    add(exp_avg_sq);
    add(sq_row);
    add(sq_col);
    add(res_row);
    add(res_col);
    return out;
  }
};

// A small model: factored, 3-D, 1-D, a bf16 and an fp16 parameter, two groups.
std::vector<Tensor> Model(uint64_t seed) {
  std::vector<Tensor> t;
  t.emplace_back(std::vector<int64_t>{17, 33}, CAME_FLOAT32, 0, seed + 1);
  t.emplace_back(std::vector<int64_t>{2, 3, 40}, CAME_FLOAT32, 1, seed + 2);
  t.emplace_back(std::vector<int64_t>{129}, CAME_FLOAT32, 0, seed + 3);
  t.emplace_back(std::vector<int64_t>{9, 70}, CAME_BFLOAT16, 1, seed + 4);
  t.emplace_back(std::vector<int64_t>{31}, CAME_FLOAT16, 0, seed + 5);
  t.emplace_back(std::vector<int64_t>{}, CAME_FLOAT32, 1, seed + 6);  // a scalar
  return t;
}

std::vector<came_tensor_desc> Descs(const std::vector<Tensor>& model) {
  std::vector<came_tensor_desc> d;
  for (const Tensor& t : model) d.push_back(t.desc);
  return d;
}

std::vector<came_tensor_ptrs> Ptrs(std::vector<Tensor>& model) {
  std::vector<came_tensor_ptrs> p;
  for (Tensor& t : model) p.push_back(t.Ptrs());
  return p;
}

std::vector<uint8_t> Bytes(const std::vector<Tensor>& model) {
  std::vector<uint8_t> out;
  for (const Tensor& t : model) {
    const auto b = t.Bytes();
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

came_hyper Hyper(double lr, double wd) {
  came_hyper h;
  h.lr = lr;
  h.beta1 = 0.9;
  h.beta2 = 0.999;
  h.beta3 = 0.9999;
  h.eps1 = 1e-30;
  h.eps2 = 1e-16;
  h.clip_threshold = 1.0;
  h.weight_decay = wd;
  return h;
}

CameHyper ToCame(const came_hyper& h) {
  CameHyper c;
  c.lr = h.lr;
  c.beta1 = h.beta1;
  c.beta2 = h.beta2;
  c.beta3 = h.beta3;
  c.eps1 = h.eps1;
  c.eps2 = h.eps2;
  c.clip_threshold = h.clip_threshold;
  c.weight_decay = h.weight_decay;
  return c;
}

// Owns an optimizer handle.
class Handle {
 public:
  ~Handle() { came_optimizer_destroy(opt_); }
  void** out() { return &opt_; }
  void* get() const { return opt_; }

 private:
  void* opt_ = nullptr;
};

// Copies every gradient of `from` into `to` (same model).
void CopyGrads(const std::vector<Tensor>& from, std::vector<Tensor>& to) {
  for (size_t i = 0; i < from.size(); ++i) to[i].grad = from[i].grad;
}

TEST(CapiTest, ReportsVersionAndBuild) {
  EXPECT_EQ(came_abi_version(), CAME_ABI_VERSION);
  EXPECT_THAT(std::string(came_build_info()), HasSubstr("cpu="));
  EXPECT_THAT(std::string(came_build_info()), HasSubstr("cuda=none"));
  EXPECT_EQ(came_cuda_device_count(), 0);
}

TEST(CapiTest, CpuOnlyLibraryRefusesCudaDevice) {
  std::vector<Tensor> model = Model(1);
  const auto descs = Descs(model);
  Handle h;
  EXPECT_EQ(came_optimizer_create(0, descs.data(), descs.size(), 1, h.out()), CAME_UNAVAILABLE);
  EXPECT_EQ(h.get(), nullptr);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("no CUDA kernels"));
}

TEST(CapiTest, RefusesBadDescriptors) {
  struct Case {
    const char* what;
    void (*mutate)(came_tensor_desc&);
    const char* message;
  } cases[] = {
      {"ndim", [](came_tensor_desc& d) { d.ndim = CAME_MAX_DIMS + 1; }, "ndim must be in"},
      {"negative ndim", [](came_tensor_desc& d) { d.ndim = -1; }, "ndim must be in"},
      {"zero dim", [](came_tensor_desc& d) { d.shape[1] = 0; }, "every dim must be > 0"},
      {"huge", [](came_tensor_desc& d) { d.shape[0] = d.shape[1] = int64_t{1} << 40; },
       "too many elements"},
      {"param dtype", [](came_tensor_desc& d) { d.param_dtype = 7; }, "param_dtype must be"},
      {"grad dtype", [](came_tensor_desc& d) { d.grad_dtype = -1; }, "grad_dtype must be"},
      {"group", [](came_tensor_desc& d) { d.group = -2; }, "group must be >= 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<Tensor> model = Model(2);
    auto descs = Descs(model);
    c.mutate(descs[0]);
    Handle h;
    EXPECT_EQ(came_optimizer_create(-1, descs.data(), descs.size(), 1, h.out()),
              CAME_INVALID_ARGUMENT);
    EXPECT_EQ(h.get(), nullptr);
    EXPECT_THAT(std::string(came_last_error()), HasSubstr("tensor 0: "));
    EXPECT_THAT(std::string(came_last_error()), HasSubstr(c.message));
  }
  Handle h;
  EXPECT_EQ(came_optimizer_create(-1, nullptr, 3, 1, h.out()), CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("tensors is NULL"));
  EXPECT_EQ(came_optimizer_create(-1, nullptr, -1, 1, h.out()), CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("num_tensors must be >= 0"));
  EXPECT_EQ(came_optimizer_create(-2, nullptr, 0, 1, h.out()), CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("device must be -1"));
  EXPECT_EQ(came_optimizer_create(-1, nullptr, 0, 1, nullptr), CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("out_optimizer is NULL"));
}

// Every refused step leaves every buffer bitwise unchanged and names the problem.
TEST(CapiTest, RefusedStepsChangeNothing) {
  std::vector<Tensor> model = Model(3);
  std::mt19937_64 rng(3);
  for (Tensor& t : model) t.FillGrad(rng);
  const auto descs = Descs(model);
  Handle h;
  ASSERT_EQ(came_optimizer_create(-1, descs.data(), descs.size(), 2, h.out()), CAME_OK)
      << came_last_error();
  const std::vector<came_hyper> good = {Hyper(1e-2, 0.0), Hyper(1e-3, 0.1)};
  // One good step first, so the state is not all zeros.
  ASSERT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), good.data(), 2, nullptr, nullptr),
            CAME_OK);
  const std::vector<uint8_t> before = Bytes(model);

  struct PtrCase {
    const char* what;
    int tensor;
    void (*mutate)(came_tensor_ptrs&);
    const char* message;
  } ptr_cases[] = {
      {"param", 0, [](came_tensor_ptrs& p) { p.param = nullptr; }, "tensor 0: param is NULL"},
      {"grad", 1, [](came_tensor_ptrs& p) { p.grad = nullptr; }, "tensor 1: grad is NULL"},
      {"exp_avg", 2, [](came_tensor_ptrs& p) { p.exp_avg = nullptr; }, "exp_avg is NULL"},
      {"master of bf16", 3, [](came_tensor_ptrs& p) { p.master = nullptr; }, "master is NULL"},
      {"master of fp32", 0, [](came_tensor_ptrs& p) { p.master = reinterpret_cast<float*>(16); },
       "master must be NULL"},
      {"row", 0, [](came_tensor_ptrs& p) { p.exp_avg_sq_row = nullptr; },
       "exp_avg_sq_row is NULL"},
      {"res col", 1, [](came_tensor_ptrs& p) { p.exp_avg_res_col = nullptr; },
       "exp_avg_res_col is NULL"},
      {"sq of factored", 0, [](came_tensor_ptrs& p) { p.exp_avg_sq = p.exp_avg; },
       "exp_avg_sq must be NULL"},
      {"sq of 1-D", 2, [](came_tensor_ptrs& p) { p.exp_avg_sq = nullptr; },
       "exp_avg_sq is NULL"},
      {"row of 1-D", 4, [](came_tensor_ptrs& p) { p.exp_avg_sq_row = p.exp_avg; },
       "must be NULL for an unfactored"},
  };
  for (const PtrCase& c : ptr_cases) {
    SCOPED_TRACE(c.what);
    auto ptrs = Ptrs(model);
    c.mutate(ptrs[c.tensor]);
    EXPECT_EQ(came_optimizer_step(h.get(), ptrs.data(), good.data(), 2, nullptr, nullptr),
              CAME_INVALID_ARGUMENT);
    EXPECT_THAT(std::string(came_last_error()), HasSubstr(c.message));
    EXPECT_EQ(Bytes(model), before);
  }

  struct HyperCase {
    const char* what;
    void (*mutate)(came_hyper&);
    const char* message;
  } hyper_cases[] = {
      {"negative lr", [](came_hyper& g) { g.lr = -1e-3; }, "group 1: lr must be >= 0"},
      {"eps1 = 0", [](came_hyper& g) { g.eps1 = 0; }, "eps must be > 0"},
      {"eps2 < 0", [](came_hyper& g) { g.eps2 = -1e-16; }, "eps must be > 0"},
      {"beta1 = 1", [](came_hyper& g) { g.beta1 = 1.0; }, "betas must be in [0, 1)"},
      {"beta3 < 0", [](came_hyper& g) { g.beta3 = -0.1; }, "betas must be in [0, 1)"},
      {"clip", [](came_hyper& g) { g.clip_threshold = 0; }, "clip_threshold must be > 0"},
      {"wd", [](came_hyper& g) { g.weight_decay = -0.1; }, "weight_decay must be >= 0"},
      {"nan lr", [](came_hyper& g) { g.lr = NAN; }, "must be finite"},
  };
  for (const HyperCase& c : hyper_cases) {
    SCOPED_TRACE(c.what);
    auto groups = good;
    c.mutate(groups[1]);
    EXPECT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), groups.data(), 2, nullptr,
                                  nullptr),
              CAME_INVALID_ARGUMENT);
    EXPECT_THAT(std::string(came_last_error()), HasSubstr(c.message));
    EXPECT_EQ(Bytes(model), before);
  }

  EXPECT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), good.data(), 1, nullptr, nullptr),
            CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("need 2, got 1"));
  EXPECT_EQ(came_optimizer_step(h.get(), nullptr, good.data(), 2, nullptr, nullptr),
            CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("ptrs is NULL"));
  EXPECT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), nullptr, 2, nullptr, nullptr),
            CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("groups is NULL"));
  EXPECT_EQ(came_optimizer_step(nullptr, Ptrs(model).data(), good.data(), 2, nullptr, nullptr),
            CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("optimizer is NULL"));
  EXPECT_EQ(Bytes(model), before);
}

// Runs `steps` steps through the C ABI on `model` (moving every buffer to a fresh copy before
// each step when `move_buffers`) and the same steps through CpuCame on a copy, and checks
// that both end bitwise equal.
void ExpectSameAsCpuCame(int steps, int threads, bool move_buffers) {
  std::vector<Tensor> abi = Model(4);
  std::vector<Tensor> direct = Model(4);
  const auto descs = Descs(abi);
  Handle h;
  ASSERT_EQ(came_optimizer_create(-1, descs.data(), descs.size(), threads, h.out()), CAME_OK)
      << came_last_error();
  std::vector<TensorSlice> slices;
  for (Tensor& t : direct) slices.push_back(t.Slice());
  CpuCame cpu(std::move(slices), threads);
  LocalStepper stepper(cpu);

  std::mt19937_64 rng(4);
  for (int s = 0; s < steps; ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    for (Tensor& t : direct) t.FillGrad(rng);
    if (move_buffers) {
      std::vector<Tensor> moved = abi;  // new vectors: every pointer changes
      abi.swap(moved);
    }
    CopyGrads(direct, abi);  // assigns into the same vectors: grad pointers stay
    // lr and betas[0] change every step (schedulers, OneCycleLR's momentum).
    const std::vector<came_hyper> groups = {Hyper(1e-2 / (s + 1), 0.0),
                                            Hyper(3e-3, 0.05)};
    std::vector<came_hyper> cycled = groups;
    cycled[0].beta1 = 0.85 + 0.01 * s;
    came_step_result result{};
    ASSERT_EQ(came_optimizer_step(h.get(), Ptrs(abi).data(), cycled.data(), 2, nullptr, &result),
              CAME_OK)
        << came_last_error();
    const StepResult want = stepper.Step(std::vector<CameHyper>{ToCame(cycled[0]),
                                                                ToCame(cycled[1])},
                                         StepOptions{});
    EXPECT_EQ(result.skipped, 0);
    EXPECT_DOUBLE_EQ(result.grad_norm, want.grad_norm);
    came_step_result last{};
    ASSERT_EQ(came_optimizer_last_result(h.get(), &last), CAME_OK);
    EXPECT_DOUBLE_EQ(last.grad_norm, want.grad_norm);
    ASSERT_EQ(Bytes(abi), Bytes(direct));
  }
  // The parameters did move (the comparison above is not of two no-ops).
  EXPECT_NE(Bytes(direct), Bytes(Model(4)));
}

TEST(CapiTest, StepEqualsCpuCame) { ExpectSameAsCpuCame(5, 1, false); }
TEST(CapiTest, StepEqualsCpuCameOnTwoThreads) { ExpectSameAsCpuCame(5, 2, false); }
TEST(CapiTest, BuffersMayMoveBetweenSteps) { ExpectSameAsCpuCame(5, 2, true); }

TEST(CapiTest, NonFiniteGradientSkipsTheStep) {
  std::vector<Tensor> model = Model(5);
  std::mt19937_64 rng(5);
  for (Tensor& t : model) t.FillGrad(rng);
  const auto descs = Descs(model);
  Handle h;
  ASSERT_EQ(came_optimizer_create(-1, descs.data(), descs.size(), 2, h.out()), CAME_OK);
  const std::vector<came_hyper> groups = {Hyper(1e-2, 0.0), Hyper(1e-2, 0.1)};
  ASSERT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), groups.data(), 2, nullptr, nullptr),
            CAME_OK);
  const std::vector<uint8_t> before = Bytes(model);
  model[3].grad[7] = std::numeric_limits<float>::infinity();
  came_step_result result{};
  ASSERT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), groups.data(), 2, nullptr, &result),
            CAME_OK);
  EXPECT_EQ(result.skipped, 1);
  EXPECT_EQ(Bytes(model), before);
  model[3].grad[7] = NAN;
  ASSERT_EQ(came_optimizer_step(h.get(), Ptrs(model).data(), groups.data(), 2, nullptr, &result),
            CAME_OK);
  EXPECT_EQ(result.skipped, 1);
  EXPECT_EQ(Bytes(model), before);
}

TEST(CapiTest, EmptyOptimizerChecksHyperparameters) {
  Handle h;
  ASSERT_EQ(came_optimizer_create(-1, nullptr, 0, 1, h.out()), CAME_OK);
  came_hyper g = Hyper(1e-3, 0.0);
  EXPECT_EQ(came_optimizer_step(h.get(), nullptr, &g, 1, nullptr, nullptr), CAME_OK);
  g.eps2 = 0;
  EXPECT_EQ(came_optimizer_step(h.get(), nullptr, &g, 1, nullptr, nullptr),
            CAME_INVALID_ARGUMENT);
  EXPECT_THAT(std::string(came_last_error()), HasSubstr("group 0: eps must be > 0"));
}

}  // namespace
}  // namespace came

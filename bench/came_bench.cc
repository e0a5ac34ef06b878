// came_bench: how close the fused CPU CAME step comes to the machine's memory bandwidth.
//
//   triad                 STREAM triad a = b + s*c over 3 x 256 MiB of floats: the roofline,
//                         12 bytes per element (read b, c; write a).
//   gpt2_small_fused_*    LocalStepper::Step over GPT-2 small (124,439,808 parameters, real
//                         shapes). roofline_fraction = (20 B x params / step time) / triad
//                         bytes/s at the same thread count in this run: 20 B/param is the least
//                         traffic a step can have (read g, m, p; write m, p).
//   gpt2_small_phases     The same step phase by phase (Note [Phases]), each phase's bandwidth.
//   gpt2_small_unfused    A float32 port of the reference's eager PyTorch loop, one tensor at a
//                         time, one pass over full-size temporaries per operation; its
//                         fused_speedup counter is its step time over the fused step's.
//   toy_2layer_*          The same on a 2-layer GPT-2-shaped toy model (3.7M parameters).
//
// Buffers are allocated once per model and reused by every benchmark of that model. Results
// and the command that produced them: docs/PERF.md.
#include <benchmark/benchmark.h>

#include "bench/gpt2_model.h"
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/cpu_came.h"
#include "kernels/cpu_loops.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"
#include "kernels/thread_pool.h"

namespace came {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Returns the CPU time of the whole process (all threads) in seconds.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// ---------------------------------------------------------------------------------------------
// Buffers

constexpr size_t kHugePage = size_t{2} << 20;

// Uninitialised, 2 MiB-aligned memory, advised to use transparent huge pages (the same for
// the roofline and the step, so both see the same TLB behaviour).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes) : bytes_((bytes + kHugePage - 1) / kHugePage * kHugePage) {
    if (bytes_ == 0) return;
    data_ = std::aligned_alloc(kHugePage, bytes_);
    if (data_ == nullptr) {
      std::fprintf(stderr, "came_bench: out of memory allocating %zu bytes\n", bytes_);
      std::abort();
    }
    madvise(data_, bytes_, MADV_HUGEPAGE);
  }
  ~Buffer() { std::free(data_); }
  Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), bytes_(o.bytes_) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Runs fn(t, lo, hi) on each thread t of `team` over its contiguous share of [0, n).
template <typename Fn>
void ParallelFor(ThreadTeam& team, int64_t n, Fn&& fn) {
  const int threads = team.size();
  team.Run([&](int t) {
    const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
    if (lo < hi) fn(t, lo, hi);
  });
}

// ---------------------------------------------------------------------------------------------
// STREAM triad: the roofline

constexpr int64_t kTriadElems = int64_t{64} << 20;  // 256 MiB of floats per array
constexpr double kTriadBytes = 12.0 * static_cast<double>(kTriadElems);  // read b, c; write a

__attribute__((noinline)) void Triad(float* __restrict a, const float* __restrict b,
                                     const float* __restrict c, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// Note [Noisy machine]
// The benchmark machine is shared, so a step and a triad pass measured seconds apart can see
// different loads. Every benchmark that reports a roofline fraction therefore runs one triad
// pass after each of its steps, and reports three ratios: roofline_fraction, best step
// against best triad pass (both the least disturbed samples; the triad side also includes
// the triad benchmark's own passes, which only makes the fraction smaller);
// roofline_fraction_mean, mean against mean over the interleaved iterations; and
// roofline_fraction_paired_median, the median of each step against the triad pass right
// after it.

// The three triad arrays and a team to run the triad on.
class TriadArrays {
 public:
  explicit TriadArrays(int threads)
      : a_(kTriadElems * 4), b_(kTriadElems * 4), c_(kTriadElems * 4), team_(threads) {
    float *pa = a_.as<float>(), *pb = b_.as<float>(), *pc = c_.as<float>();
    ParallelFor(team_, kTriadElems, [&](int, int64_t lo, int64_t hi) {
      std::fill(pa + lo, pa + hi, 0.0f);
      std::fill(pb + lo, pb + hi, 1.0f);
      std::fill(pc + lo, pc + hi, 2.0f);
    });
    Pass();  // warm-up
  }

  // Runs one triad pass; returns its seconds.
  double Pass() {
    float *pa = a_.as<float>(), *pb = b_.as<float>(), *pc = c_.as<float>();
    const auto t0 = Clock::now();
    ParallelFor(team_, kTriadElems, [&](int, int64_t lo, int64_t hi) {
      Triad(pa + lo, pb + lo, pc + lo, 3.0f, hi - lo);
    });
    const double s = Seconds(t0, Clock::now());
    benchmark::DoNotOptimize(pa[kTriadElems / 2]);
    double& best = BestTriad()[team_.size()];
    best = std::max(best, kTriadBytes / s);
    return s;
  }

  // threads -> best triad bytes/s of any pass in this run.
  static std::map<int, double>& BestTriad() {
    static std::map<int, double> best;
    return best;
  }

 private:
  Buffer a_, b_, c_;
  ThreadTeam team_;
};

void BM_triad(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  TriadArrays arrays(threads);
  double seconds = 0.0;
  for (auto _ : state) seconds += arrays.Pass();
  const double bytes = kTriadBytes * static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
  state.counters["GBps"] = bytes / seconds / 1e9;
  state.counters["GBps_best"] = TriadArrays::BestTriad()[threads] / 1e9;
  state.counters["threads"] = threads;
}

// Samples of a step interleaved with triad passes (Note [Noisy machine]).
struct Interleaved {
  std::vector<double> step_s, triad_s;

  double MeanStep() const { return Mean(step_s); }
  double BestStep() const { return *std::min_element(step_s.begin(), step_s.end()); }
  double MeanTriadBytesPerSecond() const { return kTriadBytes / Mean(triad_s); }
  // Returns the median over iterations of (step's rate) / (the next triad pass's rate), for
  // a step moving `bytes`: each pair ran within a second, under about the same load.
  double PairedMedianFraction(double bytes) const {
    std::vector<double> f;
    for (size_t i = 0; i < step_s.size() && i < triad_s.size(); ++i)
      f.push_back(bytes / step_s[i] / (kTriadBytes / triad_s[i]));
    std::sort(f.begin(), f.end());
    if (f.empty()) return 0.0;
    return f.size() % 2 ? f[f.size() / 2] : 0.5 * (f[f.size() / 2 - 1] + f[f.size() / 2]);
  }
  static double Mean(const std::vector<double>& v) {
    double s = 0.0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  }
};

// ---------------------------------------------------------------------------------------------
// Models

using TensorSpec = came::bench::ModelTensor;

std::vector<TensorSpec> Gpt2Specs(int64_t vocab, int64_t ctx, int64_t d, int layers) {
  return came::bench::Gpt2Shapes(vocab, ctx, d, layers);
}

enum class ModelId { kGpt2Small, kToy2Layer };

std::vector<TensorSpec> Specs(ModelId id) {
  if (id == ModelId::kGpt2Small) return Gpt2Specs(50257, 1024, 768, 12);
  return Gpt2Specs(8192, 256, 256, 2);
}

constexpr int64_t kGpt2SmallParams = 124439808;

// Fills out[0, n) with normal(0, 1) * scale from a fixed-seed generator (splitmix64 and
// Box-Muller), so every run sees the same gradients.
void FillNormal(float* out, int64_t n, float scale, uint64_t seed) {
  uint64_t x = seed;
  auto next = [&x] {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  for (int64_t i = 0; i < n; i += 2) {
    const uint64_t r = next();
    const double u1 = (static_cast<double>(r >> 40) + 1.0) / 16777217.0;  // (0, 1]
    const double u2 = static_cast<double>(r & 0xffffff) / 16777216.0;
    const double rad = std::sqrt(-2.0 * std::log(u1));
    out[i] = static_cast<float>(rad * std::cos(6.283185307179586 * u2)) * scale;
    if (i + 1 < n) out[i + 1] = static_cast<float>(rad * std::sin(6.283185307179586 * u2)) * scale;
  }
}

// One model's buffers, laid out tensor after tensor like a flat parameter arena.
struct Model {
  ModelId id;
  DType grad_dtype, param_dtype;
  int64_t params = 0;
  Buffer grad, master, param, exp_avg, exp_avg_sq, stats;
  std::vector<TensorSlice> slices;
};

// Allocates and fills a model: gradients normal * 1e-3, parameters normal * 0.02, state
// zero. param_dtype kFloat32 means the parameters are the fp32 master (no copy).
std::unique_ptr<Model> MakeModel(ModelId id, DType grad_dtype, DType param_dtype) {
  auto model = std::make_unique<Model>();
  Model& md = *model;
  md.id = id;
  md.grad_dtype = grad_dtype;
  md.param_dtype = param_dtype;
  const std::vector<TensorSpec> specs = Specs(id);
  int64_t unfactored = 0, stats = 0;
  std::vector<TensorGeometry> geoms;
  for (const TensorSpec& t : specs) {
    geoms.push_back(TensorGeometry::FromShape(t.shape));
    const TensorGeometry& g = geoms.back();
    md.params += g.numel;
    if (!g.factored) unfactored += g.numel;
    stats += 2 * g.stats_size();
  }
  const int64_t p = md.params;
  const bool copy = param_dtype != DType::kFloat32;
  md.grad = Buffer(p * DTypeSize(grad_dtype));
  md.master = Buffer(p * 4);
  if (copy) md.param = Buffer(p * DTypeSize(param_dtype));
  md.exp_avg = Buffer(p * 4);
  md.exp_avg_sq = Buffer(std::max<int64_t>(unfactored, 1) * 4);
  md.stats = Buffer(std::max<int64_t>(stats, 1) * 4);

  // Values: generated in fp32 once, converted to the gradient / parameter dtype.
  std::vector<float> tmp(std::min<int64_t>(p, int64_t{1} << 22));
  for (int64_t off = 0, chunk = 0; off < p; off += static_cast<int64_t>(tmp.size()), ++chunk) {
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(tmp.size()), p - off);
    FillNormal(tmp.data(), len, 1e-3f, 0x5eed0000 + chunk);
    for (int64_t i = 0; i < len; ++i) StoreFromFloat(md.grad.as<void>(), grad_dtype, off + i, tmp[i]);
    FillNormal(md.master.as<float>() + off, len, 0.02f, 0x9a7a0000 + chunk);
    if (copy)
      for (int64_t i = 0; i < len; ++i)
        StoreFromFloat(md.param.as<void>(), param_dtype, off + i, md.master.as<float>()[off + i]);
  }
  std::memset(md.exp_avg.as<void>(), 0, p * 4);
  std::memset(md.exp_avg_sq.as<void>(), 0, std::max<int64_t>(unfactored, 1) * 4);
  std::memset(md.stats.as<void>(), 0, std::max<int64_t>(stats, 1) * 4);

  int64_t off = 0, v_off = 0, s_off = 0;
  for (const TensorGeometry& g : geoms) {
    TensorSlice s;
    s.geom = g;
    s.begin = 0;
    s.end = g.numel;
    s.grad = md.grad.as<uint8_t>() + off * DTypeSize(grad_dtype);
    s.grad_dtype = grad_dtype;
    s.master = md.master.as<float>() + off;
    if (copy) {
      s.param = md.param.as<uint8_t>() + off * DTypeSize(param_dtype);
      s.param_dtype = param_dtype;
    }
    s.exp_avg = md.exp_avg.as<float>() + off;
    if (g.factored) {
      float* st = md.stats.as<float>() + s_off;
      s.exp_avg_sq_row = st;
      s.exp_avg_sq_col = st + g.rows();
      s.exp_avg_res_row = st + g.stats_size();
      s.exp_avg_res_col = st + g.stats_size() + g.rows();
      s_off += 2 * g.stats_size();
    } else {
      s.exp_avg_sq = md.exp_avg_sq.as<float>() + v_off;
      v_off += g.numel;
    }
    md.slices.push_back(s);
    off += g.numel;
  }
  return model;
}

// Returns the model, reusing the one from the previous benchmark when it matches (only one
// is kept, so the GPT-2 fp32 and bf16 sets are never resident together).
Model& GetModel(ModelId id, DType grad_dtype, DType param_dtype) {
  static std::unique_ptr<Model> current;
  if (!current || current->id != id || current->grad_dtype != grad_dtype ||
      current->param_dtype != param_dtype) {
    current.reset();
    current = MakeModel(id, grad_dtype, param_dtype);
  }
  return *current;
}

const CameHyper kHyper = [] {
  CameHyper h;
  h.lr = 1e-4;
  return h;
}();

std::string ModelKey(const Model& m, int threads) {
  return std::to_string(static_cast<int>(m.id)) + "/" +
         std::to_string(static_cast<int>(m.grad_dtype)) + "/" +
         std::to_string(static_cast<int>(m.param_dtype)) + "/" + std::to_string(threads);
}

struct FusedTimes {
  double best_s = 0.0, mean_s = 0.0;
};

std::map<std::string, FusedTimes>& FusedCache() {  // ModelKey -> fused step in this run
  static std::map<std::string, FusedTimes> cache;
  return cache;
}

// Returns the fused step times of this model on `threads` threads measured in this run, or
// measures them (3 steps) when the fused benchmark was filtered out.
FusedTimes FusedStepTimes(Model& model, int threads) {
  auto it = FusedCache().find(ModelKey(model, threads));
  if (it != FusedCache().end()) return it->second;
  CpuCame cpu(model.slices, threads);
  LocalStepper stepper(cpu);
  const CameHyper groups[1] = {kHyper};
  stepper.Step(groups, StepOptions{});
  Interleaved samples;
  for (int k = 0; k < 3; ++k) {
    const auto t0 = Clock::now();
    stepper.Step(groups, StepOptions{});
    samples.step_s.push_back(Seconds(t0, Clock::now()));
  }
  return FusedCache()[ModelKey(model, threads)] = {samples.BestStep(), samples.MeanStep()};
}

// Minimal bytes per parameter of one step: read g, m, master; write m, master; plus the
// low-precision parameter copy when there is one (bf16 g + bf16 copy: 2 + 8 + 8 + 2 = 20).
double MinBytesPerParam(const Model& m) {
  double b = DTypeSize(m.grad_dtype) + 16.0;
  if (m.param_dtype != DType::kFloat32) b += DTypeSize(m.param_dtype);
  return b;
}

// Sets the counters of a whole-step benchmark from its interleaved samples.
void SetStepCounters(benchmark::State& state, const Model& model, int threads,
                     const Interleaved& samples) {
  const double p = static_cast<double>(model.params);
  const double mean = samples.MeanStep(), best = samples.BestStep();
  const double min_bytes = MinBytesPerParam(model) * p;
  const double triad_best = TriadArrays::BestTriad()[threads];
  state.counters["params"] = p;
  state.counters["threads"] = threads;
  state.counters["step_ms"] = mean * 1e3;
  state.counters["step_ms_best"] = best * 1e3;
  state.counters["params_per_second"] = p / mean;
  state.counters["params_per_second_best"] = p / best;
  state.counters["min_bytes_per_param"] = MinBytesPerParam(model);
  state.counters["triad_GBps"] = samples.MeanTriadBytesPerSecond() / 1e9;
  state.counters["triad_GBps_best"] = triad_best / 1e9;
  state.counters["roofline_fraction"] = min_bytes / best / triad_best;
  state.counters["roofline_fraction_mean"] = min_bytes / mean / samples.MeanTriadBytesPerSecond();
  state.counters["roofline_fraction_paired_median"] = samples.PairedMedianFraction(min_bytes);
}

// Runs `step` once per benchmark iteration, each followed by a triad pass on as many
// threads (Note [Noisy machine]); returns the samples.
template <typename StepFn>
Interleaved RunInterleaved(benchmark::State& state, int threads, StepFn&& step) {
  TriadArrays triad(threads);
  Interleaved samples;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    step();
    samples.step_s.push_back(Seconds(t0, Clock::now()));
    state.PauseTiming();
    samples.triad_s.push_back(triad.Pass());
    state.ResumeTiming();
  }
  return samples;
}

// ---------------------------------------------------------------------------------------------
// The fused step

void BM_Fused(benchmark::State& state, ModelId id, DType grad_dtype, DType param_dtype) {
  const int threads = static_cast<int>(state.range(0));
  Model& model = GetModel(id, grad_dtype, param_dtype);
  if (id == ModelId::kGpt2Small && model.params != kGpt2SmallParams) {
    state.SkipWithError("GPT-2 small parameter count is wrong");
    return;
  }
  CpuCame cpu(model.slices, threads);
  LocalStepper stepper(cpu);
  const CameHyper groups[1] = {kHyper};
  stepper.Step(groups, StepOptions{});  // warm-up: faults pages in, starts the team
  const Interleaved samples = RunInterleaved(state, threads, [&] {
    const StepResult r = stepper.Step(groups, StepOptions{});
    benchmark::DoNotOptimize(r);
  });
  FusedCache()[ModelKey(model, threads)] = {samples.BestStep(), samples.MeanStep()};
  SetStepCounters(state, model, threads, samples);
}

// The fused step phase by phase (what LocalStepper::Step does): each streaming phase's best
// time and its bandwidth against the best triad pass (Note [Noisy machine]); bytes are those
// the phase must move (Note [Phases]).
void BM_Phases(benchmark::State& state, ModelId id) {
  const int threads = static_cast<int>(state.range(0));
  Model& model = GetModel(id, DType::kFloat32, DType::kFloat32);
  CpuCame cpu(model.slices, threads);
  const CameHyper groups[1] = {kHyper};
  std::vector<double> sums(cpu.stats_size()), sum_sq(model.slices.size()),
      clip(model.slices.size());
  constexpr double kInf = 1e300;
  double best[6] = {kInf, kInf, kInf, kInf, kInf, kInf}, busy[6] = {};
  auto step = [&] {
    auto t0 = Clock::now();
    double c0 = ProcessCpuSeconds();
    auto lap = [&](int k) {
      const auto now = Clock::now();
      const double c = ProcessCpuSeconds(), s = Seconds(t0, now);
      if (s < best[k]) {
        best[k] = s;
        busy[k] = (c - c0) / threads / s;
      }
      t0 = now;
      c0 = c;
    };
    cpu.GradStats(sums);
    lap(0);
    cpu.UpdateSecondMoments(sums, groups, 1.0);
    lap(1);
    cpu.UpdateSquares(sum_sq);
    lap(2);
    for (size_t i = 0; i < model.slices.size(); ++i)
      clip[i] = ClipScale(sum_sq[i], static_cast<double>(model.slices[i].geom.numel), 1.0);
    cpu.Momentum(clip, sums);
    lap(3);
    cpu.UpdateResiduals(sums);
    lap(4);
    cpu.Apply();
    lap(5);
  };
  step();
  std::fill(best, best + 6, kInf);
  RunInterleaved(state, threads, step);
  const double p = static_cast<double>(model.params);
  const double triad = TriadArrays::BestTriad()[threads];
  // Bytes per parameter each streaming phase moves (fp32; the 1-D tensors, 0.1% of GPT-2,
  // are counted as factored ones).
  const struct {
    const char* name;
    int index;
    double bytes;
  } phases[] = {{"p1_grad_stats", 0, 4}, {"p3_squares", 2, 4}, {"p4_momentum", 3, 12},
                {"p6_apply", 5, 12}};
  for (const auto& ph : phases) {
    const double s = best[ph.index];
    state.counters[std::string(ph.name) + "_ms"] = s * 1e3;
    // CPU time per thread over wall time: below 1 when a thread waits for a core (the
    // machine is shared) or for its partner at the end of the phase.
    state.counters[std::string(ph.name) + "_busy"] = busy[ph.index];
    state.counters[std::string(ph.name) + "_triad_fraction"] = ph.bytes * p / s / triad;
  }
  state.counters["host_phases_ms"] = (best[1] + best[4]) * 1e3;
  state.counters["params"] = p;
  state.counters["threads"] = threads;
}

// ---------------------------------------------------------------------------------------------
// The unfused baseline: came-pytorch's loop in float32, op by op

// One CAME step in the style of eager PyTorch: one tensor at a time, every operation a
// separate pass that reads its inputs from and writes its result to full-size memory
// (temporaries are preallocated, which is kinder than eager mode's fresh allocations). The
// passes follow came-pytorch 0.1.3 line by line; elementwise passes and reductions are split
// over the threads like ATen's intra-op parallelism.
class UnfusedCame {
 public:
  UnfusedCame(const std::vector<TensorSlice>& slices, int threads)
      : slices_(slices), team_(threads) {
    int64_t max_numel = 0, max_m = 0;
    for (const TensorSlice& s : slices_) {
      max_numel = std::max(max_numel, s.geom.numel);
      max_m = std::max(max_m, s.geom.m);
    }
    for (Buffer& b : tmp_) b = Buffer(max_numel * 4);
    for (int k = 0; k < 3; ++k) {  // fault the temporaries in
      ParallelFor(team_, max_numel, [&](int, int64_t lo, int64_t hi) {
        std::memset(tmp_[k].as<float>() + lo, 0, (hi - lo) * 4);
      });
    }
    col_partial_.assign(static_cast<size_t>(threads) * max_m, 0.0);
  }

  void Step(const CameHyper& h) {
    for (const TensorSlice& s : slices_) StepTensor(s, h);
  }

 private:
  template <typename Fn>
  void Map(int64_t n, Fn&& fn) {  // fn(i) for every element
    ParallelFor(team_, n, [&](int, int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) fn(i);
    });
  }

  // out[r] = mean(x[r, :]) over an [n, m] matrix.
  void RowMean(const float* x, int64_t n, int64_t m, std::vector<float>& out) {
    out.resize(n);
    ParallelFor(team_, n, [&](int, int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) {
        double acc = 0.0;
        for (int64_t j = 0; j < m; ++j) acc += x[r * m + j];
        out[r] = static_cast<float>(acc / m);
      }
    });
  }

  // out[c] = mean(x[:, c]) over an [n, m] matrix.
  void ColMean(const float* x, int64_t n, int64_t m, std::vector<float>& out) {
    const int threads = team_.size();
    ParallelFor(team_, n, [&](int t, int64_t lo, int64_t hi) {
      double* acc = &col_partial_[t * m];
      std::fill(acc, acc + m, 0.0);
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t j = 0; j < m; ++j) acc[j] += x[r * m + j];
    });
    out.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      double acc = 0.0;
      for (int t = 0; t < threads; ++t) acc += col_partial_[t * m + j];
      out[j] = static_cast<float>(acc / n);
    }
  }

  double SumSquares(const float* x, int64_t n) {  // torch.norm(x)^2
    std::vector<double> part(team_.size(), 0.0);
    ParallelFor(team_, n, [&](int t, int64_t lo, int64_t hi) {
      double acc = 0.0;
      for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(x[i]) * x[i];
      part[t] = acc;
    });
    double s = 0.0;
    for (double v : part) s += v;
    return s;
  }

  // _approx_sq_grad: out[r, c] = rsqrt(row[r] / mean(row)) * rsqrt(col[c]) (torch.mul).
  void ApproxSqGrad(const float* row, const float* col, int64_t n, int64_t m, float* out) {
    double mean = 0.0;
    for (int64_t r = 0; r < n; ++r) mean += row[r];
    const float mean_f = static_cast<float>(mean / n);
    rf_.resize(n);
    cf_.resize(m);
    for (int64_t r = 0; r < n; ++r) rf_[r] = Rsqrt(row[r] / mean_f);
    for (int64_t c = 0; c < m; ++c) cf_[c] = Rsqrt(col[c]);
    ParallelFor(team_, n, [&](int, int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (int64_t c = 0; c < m; ++c) out[r * m + c] = rf_[r] * cf_[c];
    });
  }

  // row = beta*row + (1-beta)*x.mean(dim=-1); col likewise with x.mean(dim=-2); then
  // out = _approx_sq_grad(row, col).
  void FactoredEma(const float* x, int64_t rows, int64_t cols, float beta, float* row,
                   float* col, float* out) {
    RowMean(x, rows, cols, mean_row_);
    ColMean(x, rows, cols, mean_col_);
    for (int64_t r = 0; r < rows; ++r) row[r] = beta * row[r] + (1 - beta) * mean_row_[r];
    for (int64_t c = 0; c < cols; ++c) col[c] = beta * col[c] + (1 - beta) * mean_col_[c];
    ApproxSqGrad(row, col, rows, cols, out);
  }

  void StepTensor(const TensorSlice& s, const CameHyper& h) {
    const int64_t numel = s.geom.numel;
    const float* g = static_cast<const float*>(s.grad);
    float* p = s.master;
    float* m = s.exp_avg;
    float* t0 = tmp_[0].as<float>();
    float* t1 = tmp_[1].as<float>();
    float* t2 = tmp_[2].as<float>();
    const float e1 = static_cast<float>(h.eps1), e2 = static_cast<float>(h.eps2);
    const float b1 = static_cast<float>(h.beta1), b2 = static_cast<float>(h.beta2),
                b3 = static_cast<float>(h.beta3);
    const float lr = static_cast<float>(h.lr);
    const bool factored = s.geom.factored;
    const int64_t rows = s.geom.n, cols = s.geom.m;  // GPT-2: no batch dims

    Map(numel, [&](int64_t i) { t0[i] = g[i] * g[i]; });  // update = grad**2
    Map(numel, [&](int64_t i) { t0[i] = t0[i] + e1; });   // + eps1
    float* update = t1;
    if (factored) {
      FactoredEma(t0, rows, cols, b2, s.exp_avg_sq_row, s.exp_avg_sq_col, update);
      Map(numel, [&](int64_t i) { update[i] = update[i] * g[i]; });  // update.mul_(grad)
    } else {
      float* v = s.exp_avg_sq;
      Map(numel, [&](int64_t i) { v[i] = v[i] * b2; });              // mul_(beta2)
      Map(numel, [&](int64_t i) { v[i] = v[i] + (1 - b2) * t0[i]; });  // add_(update)
      Map(numel, [&](int64_t i) { update[i] = Rsqrt(v[i]); });       // rsqrt()
      Map(numel, [&](int64_t i) { update[i] = update[i] * g[i]; });  // mul_(grad)
    }
    const double rms = std::sqrt(SumSquares(update, numel)) / std::sqrt(double(numel));
    const float div = static_cast<float>(std::max(rms / h.clip_threshold, 1.0));
    Map(numel, [&](int64_t i) { update[i] = update[i] / div; });  // div_(clamp(rms/d, 1))
    Map(numel, [&](int64_t i) { m[i] = m[i] * b1; });              // exp_avg.mul_(beta1)
    Map(numel, [&](int64_t i) { m[i] = m[i] + (1 - b1) * update[i]; });  // add_(update)
    Map(numel, [&](int64_t i) { t0[i] = update[i] - m[i]; });      // update - exp_avg
    Map(numel, [&](int64_t i) { t2[i] = t0[i] * t0[i]; });         // **2
    Map(numel, [&](int64_t i) { t0[i] = t2[i] + e2; });            // + eps2: res
    float* upd = t2;
    if (factored) {
      FactoredEma(t0, rows, cols, b3, s.exp_avg_res_row, s.exp_avg_res_col, upd);
      Map(numel, [&](int64_t i) { upd[i] = upd[i] * m[i]; });  // res_approx.mul_(exp_avg)
    } else {
      Map(numel, [&](int64_t i) { upd[i] = m[i]; });  // update = exp_avg (a copy: no alias)
    }
    Map(numel, [&](int64_t i) { upd[i] = upd[i] * lr; });  // update.mul_(lr)
    Map(numel, [&](int64_t i) { t1[i] = -upd[i]; });       // -update
    Map(numel, [&](int64_t i) { p[i] = p[i] + t1[i]; });   // p.add_(-update)
  }

  std::vector<TensorSlice> slices_;
  ThreadTeam team_;
  Buffer tmp_[3];
  std::vector<double> col_partial_;
  std::vector<float> mean_row_, mean_col_, rf_, cf_;
};

void BM_Unfused(benchmark::State& state, ModelId id) {
  const int threads = static_cast<int>(state.range(0));
  Model& model = GetModel(id, DType::kFloat32, DType::kFloat32);
  const FusedTimes fused = FusedStepTimes(model, threads);
  UnfusedCame unfused(model.slices, threads);
  unfused.Step(kHyper);  // warm-up
  const Interleaved samples = RunInterleaved(state, threads, [&] { unfused.Step(kHyper); });
  SetStepCounters(state, model, threads, samples);
  state.counters["fused_step_ms"] = fused.mean_s * 1e3;
  state.counters["fused_step_ms_best"] = fused.best_s * 1e3;
  state.counters["fused_speedup"] = samples.BestStep() / fused.best_s;
  state.counters["fused_speedup_mean"] = samples.MeanStep() / fused.mean_s;
}

// ---------------------------------------------------------------------------------------------
// The inner loops on data in L2: compute cost per element, measured in thread CPU time so the
// figure holds on a busy machine (a step streams from memory; a loop whose cost here is
// near the memory time per element cannot reach the memory bandwidth).

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

enum class LoopId { kSqStats, kPrecondSumSq, kMomentum, kApply };

void BM_LoopInCache(benchmark::State& state, LoopId id) {
  const cpu::CpuLoops& loops = cpu::GetCpuLoops();
  constexpr int64_t kM = 768, kRows = 32, kN = kM * kRows;  // 96 KiB per array
  std::vector<float> g(kN), m(kN, 0.0f), p(kN, 0.02f), b(kM, 1.1f), c(kM, 0.9f);
  FillNormal(g.data(), kN, 1e-3f, 7);
  std::vector<double> col(kM, 0.0);
  const StepScalars<float> k = MakeStepScalars<float>(kHyper);
  double sink = 0.0, cpu_s = 0.0;
  for (auto _ : state) {
    const double t0 = ThreadCpuSeconds();
    for (int64_t r = 0; r < kRows; ++r) {
      const int64_t o = r * kM;
      switch (id) {
        case LoopId::kSqStats: sink += loops.sq_stats[0](&g[o], kM, col.data()); break;
        case LoopId::kPrecondSumSq:
          sink += loops.precond_sumsq[0](&g[o], kM, 1.0f, b.data());
          break;
        case LoopId::kMomentum:
          sink += loops.momentum[0](&g[o], &m[o], kM, 1.0f, b.data(), col.data(), k);
          break;
        case LoopId::kApply:
          loops.apply[cpu::kNoParamCopy](&m[o], &p[o], nullptr, kM, 1.0f, c.data(), k);
          break;
      }
    }
    cpu_s += ThreadCpuSeconds() - t0;
  }
  benchmark::DoNotOptimize(sink);
  state.counters["cpu_ns_per_elem"] = cpu_s * 1e9 / (static_cast<double>(kN) * state.iterations());
  state.SetLabel(loops.isa);
}

// ---------------------------------------------------------------------------------------------
// Registration: triad first, so the roofline of later benchmarks comes from the same run.

constexpr DType kF32 = DType::kFloat32, kBF16 = DType::kBFloat16;

void RegisterAll() {
  auto threads = [](benchmark::internal::Benchmark* b) {
    b->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  threads(benchmark::RegisterBenchmark("triad", BM_triad)->Iterations(10));
  threads(benchmark::RegisterBenchmark("gpt2_small_fused_fp32", BM_Fused, ModelId::kGpt2Small,
                                       kF32, kF32)
              ->Iterations(12));
  threads(benchmark::RegisterBenchmark("gpt2_small_phases_fp32", BM_Phases, ModelId::kGpt2Small)
              ->Iterations(4));
  threads(benchmark::RegisterBenchmark("gpt2_small_unfused_fp32", BM_Unfused, ModelId::kGpt2Small)
              ->Iterations(2));
  threads(benchmark::RegisterBenchmark("gpt2_small_fused_bf16_grad_bf16_param", BM_Fused,
                                       ModelId::kGpt2Small, kBF16, kBF16)
              ->Iterations(12));
  threads(benchmark::RegisterBenchmark("toy_2layer_fused_fp32", BM_Fused, ModelId::kToy2Layer,
                                       kF32, kF32)
              ->Iterations(200));
  const std::pair<const char*, LoopId> loops[] = {{"loop_in_l2/sq_stats", LoopId::kSqStats},
                                                   {"loop_in_l2/precond_sumsq",
                                                    LoopId::kPrecondSumSq},
                                                   {"loop_in_l2/momentum", LoopId::kMomentum},
                                                   {"loop_in_l2/apply", LoopId::kApply}};
  for (const auto& [name, id] : loops)
    benchmark::RegisterBenchmark(name, BM_LoopInCache, id)->Iterations(3000);
  threads(benchmark::RegisterBenchmark("toy_2layer_unfused_fp32", BM_Unfused, ModelId::kToy2Layer)
              ->Iterations(20));
}

}  // namespace
}  // namespace came

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  came::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// cuda_bench: how close the fused CUDA CAME step (CudaCame::Step) comes to the device's copy
// bandwidth, measured in the same run.
//
//   copy                  cudaMemcpyAsync device to device of 4 GiB: the baseline, counting
//                         bytes read plus bytes written.
//   gpt2_{small,xl}_{float32,bfloat16}
//                         one whole step over GPT-2 small (124,439,808 parameters) or GPT-2 XL
//                         (48 layers, width 1600, vocab 50257, context 1024: 1,557,611,200
//                         parameters), real shapes, gradients and parameters in that dtype
//                         (bf16: an fp32 master as well), timed with CUDA events per step.
//
// Counters: min_frac = (20 B x params / step time) / copy bandwidth, where 20 B/param is the
// least traffic any optimizer step can have (fp32: read g, m, p, write m, p; bf16: read g (2),
// m, master, write m, master, param (2)); moved_frac = the bytes these kernels actually move
// (Note [CUDA traffic] below) over the step time, against the same bandwidth.
//
// Note [CUDA traffic]
// CAME's data dependencies force more than one pass: the row/column factors need the sums of
// g^2 of the whole tensor (pass 1 reads g), the clip needs the RMS of the preconditioned update
// of the whole tensor (pass 2 reads g), the momentum and the residual statistics need the clip
// (pass 3 reads g and m, writes m), and the update needs the residual factors of the whole
// tensor (pass 4 reads m and the master, writes the master and the 16-bit copy). A factored
// fp32 tensor therefore moves 32 B/param (bf16: 28), so min_frac cannot exceed 20/32 = 0.625
// (bf16: 0.71) even at the full copy bandwidth; moved_frac says how close the kernels come to
// the bandwidth for what they must move.
//
// Results and the command that produced them: docs/PERF.md.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/gpt2_model.h"
#include "kernels/came_math.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/cuda_came.h"
#include "kernels/cuda/probe.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"

namespace came {
namespace {

#define CUDA_CHECK(x)                                                                    \
  do {                                                                                   \
    const cudaError_t e_ = (x);                                                          \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "cuda_bench: %s: %s\n", #x, cudaGetErrorString(e_));          \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

constexpr int64_t kAlign = 64;  // elements: every tensor starts 256-byte aligned

// Fills `bytes` of device memory with copies of one random block (never zeros: they can run
// faster than real data and hide unwritten outputs).
void FillRandom(void* dst, size_t bytes, DType t, float scale, uint64_t seed) {
  constexpr size_t kBlock = size_t{1} << 24;
  const size_t esize = DTypeSize(t);
  const size_t elems = std::min(kBlock, bytes / esize);
  std::vector<uint8_t> host(elems * esize);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  for (size_t i = 0; i < elems; ++i) StoreFromFloat(host.data(), t, i, normal(rng));
  uint8_t* d = static_cast<uint8_t*>(dst);
  const size_t block = host.size();
  if (block == 0) return;
  CUDA_CHECK(cudaMemcpy(d, host.data(), std::min(block, bytes), cudaMemcpyHostToDevice));
  for (size_t off = block; off < bytes; off += block)
    CUDA_CHECK(cudaMemcpy(d + off, d, std::min(block, bytes - off), cudaMemcpyDeviceToDevice));
}

// A model's buffers on the device, flat per kind, and the CudaCame over them.
struct DeviceModel {
  int64_t params = 0;
  double moved_bytes = 0.0;  // per step, Note [CUDA traffic]
  std::vector<void*> allocations;
  std::unique_ptr<cuda::CudaCame> came;

  ~DeviceModel() {
    came.reset();
    for (void* p : allocations) cudaFree(p);
  }
  void* Alloc(size_t bytes) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 16)));
    allocations.push_back(p);
    return p;
  }
};

std::unique_ptr<DeviceModel> MakeModel(const std::vector<bench::ModelTensor>& tensors, DType t) {
  auto model = std::make_unique<DeviceModel>();
  std::vector<TensorGeometry> geoms;
  int64_t flat = 0, stats = 0;
  for (const auto& mt : tensors) {
    geoms.push_back(TensorGeometry::FromShape(mt.shape));
    flat += (geoms.back().numel + kAlign - 1) / kAlign * kAlign;
    stats += geoms.back().factored ? geoms.back().stats_size() : geoms.back().numel;
    model->params += geoms.back().numel;
  }
  const size_t es = DTypeSize(t);
  auto* grad = static_cast<uint8_t*>(model->Alloc(flat * es));
  auto* master = static_cast<float*>(model->Alloc(flat * 4));
  auto* exp_avg = static_cast<float*>(model->Alloc(flat * 4));
  auto* second = static_cast<float*>(model->Alloc(stats * 4 * 2));  // r, c (or v), R, C
  uint8_t* param = t == DType::kFloat32 ? nullptr : static_cast<uint8_t*>(model->Alloc(flat * es));
  FillRandom(grad, flat * es, t, 1e-2f, 1);
  FillRandom(master, flat * 4, DType::kFloat32, 2e-2f, 2);
  CUDA_CHECK(cudaMemset(exp_avg, 0, flat * 4));
  CUDA_CHECK(cudaMemset(second, 0, stats * 4 * 2));
  if (param != nullptr) CUDA_CHECK(cudaMemset(param, 0, flat * es));

  std::vector<TensorSlice> slices;
  int64_t off = 0, soff = 0;
  for (const TensorGeometry& g : geoms) {
    TensorSlice s;
    s.geom = g;
    s.end = g.numel;
    s.grad = grad + off * es;
    s.grad_dtype = t;
    s.master = master + off;
    s.param = param == nullptr ? nullptr : param + off * es;
    s.param_dtype = t;
    s.exp_avg = exp_avg + off;
    if (g.factored) {
      s.exp_avg_sq_row = second + soff;
      s.exp_avg_sq_col = s.exp_avg_sq_row + g.rows();
      s.exp_avg_res_row = second + stats + soff;
      s.exp_avg_res_col = s.exp_avg_res_row + g.rows();
      soff += g.stats_size();
      // g three times, m read twice and written, master read and written, the 16-bit copy.
      model->moved_bytes += g.numel * (3.0 * es + 12.0 + 8.0 + (param ? es : 0.0));
    } else {
      s.exp_avg_sq = second + soff;
      soff += g.numel;
      // g three times; v read and written (pass 2), read (pass 3); m and master read and
      // written.
      model->moved_bytes += g.numel * (3.0 * es + 12.0 + 16.0 + (param ? es : 0.0));
    }
    off += (g.numel + kAlign - 1) / kAlign * kAlign;
    slices.push_back(s);
  }
  cuda::CudaError e;
  model->came = cuda::CudaCame::Create(std::move(slices), 0, &e);
  if (model->came == nullptr) {
    std::fprintf(stderr, "cuda_bench: %s\n", e.message.c_str());
    std::exit(1);
  }
  return model;
}

// Bytes read plus written per second of a 4 GiB device-to-device copy (median of 9), once.
double CopyBandwidth() {
  static const double bw = [] {
    const size_t bytes = size_t{4} << 30;
    void *a = nullptr, *b = nullptr;
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    FillRandom(a, bytes, DType::kFloat32, 1.0f, 3);
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<double> t;
    for (int i = 0; i < 11; ++i) {
      CUDA_CHECK(cudaEventRecord(e0));
      CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaEventRecord(e1));
      CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (i >= 2) t.push_back(ms * 1e-3);
    }
    std::sort(t.begin(), t.end());
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * static_cast<double>(bytes) / t[t.size() / 2];
  }();
  return bw;
}

void BM_Copy(benchmark::State& state) {
  const size_t bytes = size_t{4} << 30;
  void *a = nullptr, *b = nullptr;
  CUDA_CHECK(cudaMalloc(&a, bytes));
  CUDA_CHECK(cudaMalloc(&b, bytes));
  FillRandom(a, bytes, DType::kFloat32, 1.0f, 4);
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  for (auto _ : state) {
    CUDA_CHECK(cudaEventRecord(e0));
    CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    state.SetIterationTime(ms * 1e-3);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * 2 * bytes);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
}

void BM_Step(benchmark::State& state, std::vector<bench::ModelTensor> tensors, DType t) {
  const double copy_bw = CopyBandwidth();
  std::unique_ptr<DeviceModel> model = MakeModel(tensors, t);
  CameHyper h;
  h.lr = 1e-4;
  const CameHyper groups[1] = {h};
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i)
    if (!model->came->Step(groups, StepOptions{}, stream).ok()) state.SkipWithError("step failed");
  CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0.0;
  for (auto _ : state) {
    CUDA_CHECK(cudaEventRecord(e0, stream));
    const cuda::CudaError err = model->came->Step(groups, StepOptions{}, stream);
    CUDA_CHECK(cudaEventRecord(e1, stream));
    CUDA_CHECK(cudaEventSynchronize(e1));
    if (!err.ok()) {
      state.SkipWithError(err.message.c_str());
      break;
    }
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    state.SetIterationTime(ms * 1e-3);
    total += ms * 1e-3;
  }
  StepResult r;
  if (!model->came->ReadResult(&r, stream).ok() || r.skipped) state.SkipWithError("bad step");
  const double per_step = total / std::max<int64_t>(1, state.iterations());
  const double p = static_cast<double>(model->params);
  state.counters["params"] = p;
  state.counters["copy_GBps"] = copy_bw / 1e9;
  state.counters["min_frac"] = 20.0 * p / per_step / copy_bw;
  state.counters["moved_frac"] = model->moved_bytes / per_step / copy_bw;
  state.counters["workspace_MB"] = static_cast<double>(model->came->workspace_bytes()) / 1e6;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
}

void Register() {
  const auto small = bench::Gpt2Shapes(50257, 1024, 768, 12);
  const auto xl = bench::Gpt2Shapes(50257, 1024, 1600, 48);
  benchmark::RegisterBenchmark("copy", BM_Copy)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
  for (DType t : {DType::kFloat32, DType::kBFloat16}) {
    const std::string d(DTypeName(t));
    benchmark::RegisterBenchmark(("gpt2_small_" + d).c_str(), BM_Step, small, t)
        ->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
    benchmark::RegisterBenchmark(("gpt2_xl_" + d).c_str(), BM_Step, xl, t)
        ->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(1.0);
  }
}

}  // namespace
}  // namespace came

int main(int argc, char** argv) {
  if (came::cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "cuda_bench: no CUDA device is present\n");
    return 2;
  }
  came::Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

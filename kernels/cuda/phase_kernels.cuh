// The CUDA kernels of the fused CAME step (Note [Phases] in kernels/cpu_came.h; Note [CUDA
// chunks] in layout.h). Each phase kernel runs one block per chunk of the chunk table for all
// slices at once; the arithmetic is came_math.h's, as in the CPU loops (cpu_loops.inc); only
// the loads, stores and reductions differ. Included by cuda_came.cu, and by a host emulation
// of the few CUDA features it uses (tests/kernels/cuda_emulation.h) that runs these kernels on
// the CPU in tests.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

#include "kernels/came_math.h"
#include "kernels/cuda/device_types.h"
#include "kernels/cuda/layout.h"
#include "kernels/dtype.h"

namespace came::cuda {

enum Phase : int { kGradStats = 0, kSquares = 1, kMomentum = 2, kApply = 3 };

// What every phase kernel reads; passed by value (no per-step upload).
struct PhaseArgs {
  const SliceInfo* slices;
  const Chunk* chunks;
  const SlicePointers* ptrs;
  const DeviceGroup* groups;
  const DeviceStep* step;
  const float* factor;    // row then column factors of every factored slice, at stats_offset
  const double* sum_sq;   // kMomentum: complete sum of u^2 per slice
  double* row_part;
  double* col_part;
  double* chunk_sum;      // one total per chunk (kGradStats, kSquares)
};

namespace dev {

__host__ __device__ constexpr bool HasRowCol(int phase) { return phase == kGradStats || phase == kMomentum; }
__host__ __device__ constexpr bool HasTotal(int phase) { return phase == kGradStats || phase == kSquares; }
__host__ __device__ constexpr bool UsesFactors(int phase) { return phase != kGradStats; }

// Returns the sum over the warp, the same value in every lane (a fixed butterfly).
__device__ __forceinline__ double WarpSum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Returns the block's sum of v to thread 0 (fixed order: warps, then warp 0..kWarps-1). Every
// thread of the block must call it.
__device__ __forceinline__ double BlockSum(double v, double* shared /* kWarps */) {
  v = WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += shared[w];
  __syncthreads();
  return total;
}

template <int G>
__device__ __forceinline__ float ToFloat(uint16_t h) {
  if constexpr (G == static_cast<int>(DType::kBFloat16)) return BFloat16ToFloat(h);
  return HalfToFloat(h);
}

// V elements loaded or stored together. The alignment is at most 16 bytes, which is all that
// PointersOf checks (and the widest access sm_90 has): a 16-bit gradient vector of 8 elements
// pairs with 8 floats of state, 32 bytes, which the compiler then moves as two 16-byte
// accesses instead of assuming a 32-byte alignment the buffers need not have.
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T x[V];
};

// Loads V gradients at element `off` (from the slice's pointer) as float: one vector load
// when the whole vector is valid and vectorised, else element by element (invalid: 0).
template <int G, int V>
__device__ __forceinline__ void LoadGrad(const void* g, int64_t off, bool full,
                                         const bool (&valid)[V], float (&x)[V]) {
  if constexpr (G == static_cast<int>(DType::kFloat32)) {
    const float* p = static_cast<const float*>(g) + off;
    if (V > 1 && full) {
      const Pack<float, V> v = *reinterpret_cast<const Pack<float, V>*>(p);
#pragma unroll
      for (int q = 0; q < V; ++q) x[q] = v.x[q];
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) x[q] = valid[q] ? p[q] : 0.0f;
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(g) + off;
    if (V > 1 && full) {
      const Pack<uint16_t, V> v = *reinterpret_cast<const Pack<uint16_t, V>*>(p);
#pragma unroll
      for (int q = 0; q < V; ++q) x[q] = ToFloat<G>(v.x[q]);
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) x[q] = valid[q] ? ToFloat<G>(p[q]) : 0.0f;
    }
  }
}

template <int V>
__device__ __forceinline__ void LoadF(const float* p, bool full, const bool (&valid)[V],
                                      float (&x)[V]) {
  if (V > 1 && full) {
    const Pack<float, V> v = *reinterpret_cast<const Pack<float, V>*>(p);
#pragma unroll
    for (int q = 0; q < V; ++q) x[q] = v.x[q];
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q) x[q] = valid[q] ? p[q] : 0.0f;
  }
}

template <int V>
__device__ __forceinline__ void StoreF(float* p, bool full, const bool (&valid)[V],
                                       const float (&x)[V]) {
  if (V > 1 && full) {
    Pack<float, V> v;
#pragma unroll
    for (int q = 0; q < V; ++q) v.x[q] = x[q];
    *reinterpret_cast<Pack<float, V>*>(p) = v;
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q)
      if (valid[q]) p[q] = x[q];
  }
}

// Stores the parameter copy in dtype P (kNoParamCopy: nothing).
template <int P, int V>
__device__ __forceinline__ void StoreParam(void* param, int64_t off, bool full,
                                           const bool (&valid)[V], const float (&x)[V]) {
  if constexpr (P == static_cast<int>(DType::kFloat32)) {
    StoreF<V>(static_cast<float*>(param) + off, full, valid, x);
  } else if constexpr (P == static_cast<int>(DType::kBFloat16) ||
                       P == static_cast<int>(DType::kFloat16)) {
    uint16_t* p = static_cast<uint16_t*>(param) + off;
    Pack<uint16_t, V> v;
#pragma unroll
    for (int q = 0; q < V; ++q)
      v.x[q] = P == static_cast<int>(DType::kBFloat16) ? FloatToBFloat16(x[q]) : FloatToHalf(x[q]);
    if (V > 1 && full) {
      *reinterpret_cast<Pack<uint16_t, V>*>(p) = v;
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q)
        if (valid[q]) p[q] = v.x[q];
    }
  }
}

// One tile of a factored slice (Note [CUDA chunks]). Warp w takes rows r0 + w, r0 + w +
// kWarps, ...; lane l owns the columns c0 + (k * 32 + l) * V + q (k < K, q < V) for the whole
// tile, so its column factors and column sums stay in registers. `a` is the scale of the
// phase (kSquares: grad scale; kMomentum: clip scale * grad scale).
template <int kPhase, int G, int P, int V>
__device__ __forceinline__ void FactoredTile(const PhaseArgs& args, const Chunk& c,
                                             const SliceInfo& s, const SlicePointers& p, float a,
                                             const StepScalars<float>& k,
                                             double (*scol)[kTileCols], double* swarp) {
  constexpr int K = static_cast<int>(kTileCols / 32) / V;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t m = s.m, rows = s.rows();
  const int64_t c0 = c.c0, c1 = MinI(c0 + kTileCols, m);
  const int64_t b = c.r0 / s.n;
  const float* row_f = args.factor + s.stats_offset;
  const float* col_f = row_f + rows + b * m;

  float cf[K][V];
  double cacc[K][V];
#pragma unroll
  for (int kk = 0; kk < K; ++kk)
#pragma unroll
    for (int q = 0; q < V; ++q) {
      const int64_t j = c0 + (kk * 32 + lane) * V + q;
      cf[kk][q] = UsesFactors(kPhase) && j < c1 ? col_f[j] : 0.0f;
      cacc[kk][q] = 0.0;
    }

  double wtotal = 0.0;  // lane 0: this warp's rows
  for (int64_t r = c.r0 + warp; r < c.r1; r += kWarps) {
    int64_t lo, hi;
    RowColumns(s, r, c0, c1, &lo, &hi);
    double racc = 0.0;
    if (lo < hi) {
      const float rf = UsesFactors(kPhase) ? row_f[r] : 0.0f;
      const float ra = rf * a;  // kSquares, kMomentum: g * (row factor * scale) * col factor
#pragma unroll
      for (int kk = 0; kk < K; ++kk) {
        const int64_t j0 = c0 + (kk * 32 + lane) * V;
        if (j0 >= hi || j0 + V <= lo) continue;
        bool valid[V];
#pragma unroll
        for (int q = 0; q < V; ++q) valid[q] = j0 + q >= lo && j0 + q < hi;
        const bool full = j0 >= lo && j0 + V <= hi;
        const int64_t off = r * m + j0 - s.begin;
        if constexpr (kPhase == kGradStats) {
          float x[V];
          LoadGrad<G, V>(p.grad, off, full, valid, x);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            const double xd = x[q];
            const double sq = valid[q] ? xd * xd : 0.0;
            racc += sq;
            cacc[kk][q] += sq;
          }
        } else if constexpr (kPhase == kSquares) {
          float x[V];
          LoadGrad<G, V>(p.grad, off, full, valid, x);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            const float u = x[q] * ra * cf[kk][q];
            racc += valid[q] ? static_cast<double>(u * u) : 0.0;
          }
        } else if constexpr (kPhase == kMomentum) {
          float x[V], mv[V];
          LoadGrad<G, V>(p.grad, off, full, valid, x);
          LoadF<V>(p.exp_avg + off, full, valid, mv);
#pragma unroll
          for (int q = 0; q < V; ++q) {
            const float u = x[q] * ra * cf[kk][q];
            mv[q] = Momentum(mv[q], u, k);
            const double res = valid[q] ? static_cast<double>(Residual(u, mv[q], k.eps2)) : 0.0;
            racc += res;
            cacc[kk][q] += res;
          }
          StoreF<V>(p.exp_avg + off, full, valid, mv);
        } else {  // kApply: the residual factors
          float mv[V], w[V];
          LoadF<V>(p.exp_avg + off, full, valid, mv);
          LoadF<V>(p.master + off, full, valid, w);
#pragma unroll
          for (int q = 0; q < V; ++q) w[q] = ApplyUpdate(w[q], (rf * cf[kk][q]) * mv[q], k);
          StoreF<V>(p.master + off, full, valid, w);
          StoreParam<P, V>(p.param, off, full, valid, w);
        }
      }
    }
    if constexpr (HasTotal(kPhase) || HasRowCol(kPhase)) {
      racc = WarpSum(racc);  // r is the same in every lane: the whole warp calls this
      if (lane == 0) {
        if constexpr (HasRowCol(kPhase))
          args.row_part[RowPartIndex(s, c0 / kTileCols, r)] = racc;
        wtotal += racc;
      }
    }
  }

  if constexpr (HasRowCol(kPhase)) {
#pragma unroll
    for (int kk = 0; kk < K; ++kk)
#pragma unroll
      for (int q = 0; q < V; ++q) scol[warp][(kk * 32 + lane) * V + q] = cacc[kk][q];
    __syncthreads();
    const int64_t band = BandOf(s, c.r0);
    for (int cl = threadIdx.x; cl < kTileCols; cl += kBlockThreads) {
      if (c0 + cl >= c1) continue;
      double sum = 0.0;
      for (int w = 0; w < kWarps; ++w) sum += scol[w][cl];
      args.col_part[ColPartIndex(s, band, c0 + cl)] = sum;
    }
  }
  if constexpr (HasTotal(kPhase)) {
    if (lane == 0) swarp[warp] = wtotal;
    __syncthreads();
    if (threadIdx.x == 0) {
      double t = 0.0;
      for (int w = 0; w < kWarps; ++w) t += swarp[w];
      args.chunk_sum[blockIdx.x] = t;
    }
  }
}

// One chunk of an unfactored slice: elements [r0, r1); thread t takes the vectors at
// multiples of V starting at t * V. `a` as in FactoredTile (kSquares: the grad scale).
template <int kPhase, int G, int P, int V>
__device__ __forceinline__ void FlatChunk(const PhaseArgs& args, const Chunk& c,
                                          const SliceInfo& s, const SlicePointers& p, float a,
                                          const DeviceGroup& grp, double* swarp) {
  const StepScalars<float>& k = grp.k;
  double acc = 0.0;
  for (int64_t e0 = (c.r0 / V) * V + threadIdx.x * V; e0 < c.r1; e0 += kBlockThreads * V) {
    bool valid[V];
#pragma unroll
    for (int q = 0; q < V; ++q) valid[q] = e0 + q >= c.r0 && e0 + q < c.r1;
    const bool full = e0 >= c.r0 && e0 + V <= c.r1;
    const int64_t off = e0 - s.begin;
    float x[V];
    LoadGrad<G, V>(p.grad, off, full, valid, x);
    if constexpr (kPhase == kGradStats) {
#pragma unroll
      for (int q = 0; q < V; ++q) {
        const double xd = x[q];
        acc += valid[q] ? xd * xd : 0.0;
      }
    } else if constexpr (kPhase == kSquares) {
      float v[V];
      LoadF<V>(p.exp_avg_sq + off, full, valid, v);
#pragma unroll
      for (int q = 0; q < V; ++q) {
        const float gs = x[q] * a;
        v[q] = Ema(v[q], SquarePlusEps(gs, k.eps1), k.beta2, k.one_minus_beta2);
        const float u = gs * Rsqrt(v[q]);
        acc += valid[q] ? static_cast<double>(u * u) : 0.0;
      }
      StoreF<V>(p.exp_avg_sq + off, full, valid, v);
    } else if constexpr (kPhase == kMomentum) {  // finishes the tensor
      float v[V], mv[V], w[V];
      LoadF<V>(p.exp_avg_sq + off, full, valid, v);
      LoadF<V>(p.exp_avg + off, full, valid, mv);
      LoadF<V>(p.master + off, full, valid, w);
#pragma unroll
      for (int q = 0; q < V; ++q) {
        const float u = a * x[q] * Rsqrt(valid[q] ? v[q] : 1.0f);
        mv[q] = Momentum(mv[q], u, k);
        w[q] = ApplyUpdate(w[q], mv[q], k);
      }
      StoreF<V>(p.exp_avg + off, full, valid, mv);
      StoreF<V>(p.master + off, full, valid, w);
      StoreParam<P, V>(p.param, off, full, valid, w);
    }
  }
  if constexpr (HasTotal(kPhase)) {
    const double t = BlockSum(acc, swarp);
    if (threadIdx.x == 0) args.chunk_sum[blockIdx.x] = t;
  }
}

template <int kPhase, int G, int P, int V>
__device__ __forceinline__ void RunChunk(const PhaseArgs& args, const Chunk& c,
                                         const SliceInfo& s, const SlicePointers& p, float a,
                                         const DeviceGroup& grp, double (*scol)[kTileCols],
                                         double* swarp) {
  if (s.factored)
    FactoredTile<kPhase, G, P, V>(args, c, s, p, a, grp.k, scol, swarp);
  else if constexpr (kPhase != kApply)
    FlatChunk<kPhase, G, P, V>(args, c, s, p, a, grp, swarp);
}

// Picks the parameter-copy dtype for the phases that write parameters.
template <int kPhase, int G, int V>
__device__ __forceinline__ void DispatchParam(const PhaseArgs& args, const Chunk& c,
                                              const SliceInfo& s, const SlicePointers& p,
                                              float a, const DeviceGroup& grp,
                                              double (*scol)[kTileCols], double* swarp) {
  if constexpr (kPhase == kMomentum || kPhase == kApply) {
    switch (p.param_dtype) {
      case 0: RunChunk<kPhase, G, 0, V>(args, c, s, p, a, grp, scol, swarp); return;
      case 1: RunChunk<kPhase, G, 1, V>(args, c, s, p, a, grp, scol, swarp); return;
      case 2: RunChunk<kPhase, G, 2, V>(args, c, s, p, a, grp, scol, swarp); return;
      default: RunChunk<kPhase, G, kNoParamCopy, V>(args, c, s, p, a, grp, scol, swarp); return;
    }
  } else {
    RunChunk<kPhase, G, kNoParamCopy, V>(args, c, s, p, a, grp, scol, swarp);
  }
}

}  // namespace dev

// Phase kernel: one block per chunk. Every phase after GradStats does nothing on a skipped
// step (the flag is the same for every block).
template <int kPhase>
__global__ void __launch_bounds__(kBlockThreads, 2) PhaseKernel(PhaseArgs args) {
  constexpr int kColWarps = dev::HasRowCol(kPhase) ? kWarps : 1;
  __shared__ double scol[kColWarps][kTileCols];
  __shared__ double swarp[kWarps];
  if (kPhase != kGradStats && args.step->skipped) return;
  const Chunk c = args.chunks[blockIdx.x];
  const SliceInfo s = args.slices[c.slice];
  const SlicePointers p = args.ptrs[c.slice];
  DeviceGroup grp{};
  float a = 1.0f;
  if constexpr (kPhase != kGradStats) {
    grp = args.groups[s.group];
    if constexpr (kPhase == kSquares) a = static_cast<float>(args.step->grad_scale);
    if constexpr (kPhase == kMomentum)
      a = static_cast<float>(
          ClipScale(args.sum_sq[c.slice], static_cast<double>(s.numel), grp.clip_threshold) *
          args.step->grad_scale);
  }
  switch (s.grad_dtype) {
    case 0:
      if (p.vec) dev::DispatchParam<kPhase, 0, 4>(args, c, s, p, a, grp, scol, swarp);
      else dev::DispatchParam<kPhase, 0, 1>(args, c, s, p, a, grp, scol, swarp);
      break;
    case 1:
      if (p.vec) dev::DispatchParam<kPhase, 1, 8>(args, c, s, p, a, grp, scol, swarp);
      else dev::DispatchParam<kPhase, 1, 1>(args, c, s, p, a, grp, scol, swarp);
      break;
    default:
      if (p.vec) dev::DispatchParam<kPhase, 2, 8>(args, c, s, p, a, grp, scol, swarp);
      else dev::DispatchParam<kPhase, 2, 1>(args, c, s, p, a, grp, scol, swarp);
      break;
  }
}

// What the reduction kernel completes: `num_stats` statistic entries from the row and column
// partials into `sums`, then (if slice_out) one total per slice from the chunk totals.
struct ReduceArgs {
  const SliceInfo* slices;
  int64_t num_slices;
  const DeviceStep* step;
  bool check_skip;
  const double* row_part;
  const double* col_part;
  const double* chunk_sum;
  int64_t num_stats;
  double* sums;
  double* slice_out;
};

// One thread per statistic entry, then one per slice; each sums its partials in a fixed order.
__global__ void __launch_bounds__(kBlockThreads) ReduceKernel(ReduceArgs a) {
  if (a.check_skip && a.step->skipped) return;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < a.num_stats) {
    const SliceInfo& s = a.slices[FindStatSlice(a.slices, a.num_slices, idx)];
    const int64_t local = idx - s.stats_offset;
    a.sums[idx] = local < s.rows() ? ReduceRowStat(s, local, a.row_part)
                                   : ReduceColStat(s, local - s.rows(), a.col_part);
    return;
  }
  const int64_t si = idx - a.num_stats;
  if (a.slice_out == nullptr || si >= a.num_slices) return;
  const SliceInfo& s = a.slices[si];
  double sum = 0.0;
  for (int64_t k = 0; k < s.num_chunks; ++k) sum += a.chunk_sum[s.first_chunk + k];
  a.slice_out[si] = sum;
}

// One block: out[0] = the sum of in[0, n) (strided per thread, then BlockSum).
__global__ void __launch_bounds__(kBlockThreads) TotalKernel(const double* in, int64_t n,
                                                             double* out) {
  __shared__ double swarp[kWarps];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kBlockThreads) acc += in[i];
  const double t = dev::BlockSum(acc, swarp);
  if (threadIdx.x == 0) *out = t;
}

// One thread: starts a step from the (complete) sum of g^2: the skip flag and grad scale.
__global__ void BeginStepKernel(const double* grad_sum_sq, double max_grad_norm,
                                DeviceStep* step) {
  const double sum_sq = *grad_sum_sq;
  step->grad_sum_sq = sum_sq;
  step->grad_norm = sqrt(sum_sq);
  step->skipped = isfinite(sum_sq) ? 0 : 1;
  step->grad_scale = step->skipped ? 1.0 : GradNormScale(step->grad_norm, max_grad_norm);
  step->min_clip_scale = 1.0;
}

// Up to kGroupsPerLaunch groups' scalars, by value (a graph replays the captured values).
inline constexpr int kGroupsPerLaunch = 16;
struct GroupBatch {
  int32_t first;
  int32_t count;
  DeviceGroup g[kGroupsPerLaunch];
};

__global__ void SetGroupsKernel(GroupBatch batch, DeviceGroup* groups) {
  if (static_cast<int>(threadIdx.x) < batch.count)
    groups[batch.first + threadIdx.x] = batch.g[threadIdx.x];
}

// Which statistics a StatsKernel updates.
enum StatsKind : int { kSecondMoment = 0, kResidual = 1 };

// One block per matrix of a factored slice: the EMAs of its row and column statistics from
// complete sums, then their factors (row factors against the mean in double, as
// CpuCame::ComputeFactors: see the zero-row underflow comment in cpu_came.cc).
template <int kKind>
__global__ void __launch_bounds__(kBlockThreads) StatsKernel(
    const SliceInfo* slices, const StatBlock* blocks, const SlicePointers* ptrs,
    const DeviceGroup* groups, const DeviceStep* step, const double* sums, float* factor) {
  __shared__ double swarp[kWarps];
  __shared__ double smean;
  if (step->skipped) return;
  const StatBlock sb = blocks[blockIdx.x];
  const SliceInfo s = slices[sb.slice];
  const SlicePointers& p = ptrs[sb.slice];
  const DeviceGroup& grp = groups[s.group];
  float* row = kKind == kSecondMoment ? p.exp_avg_sq_row : p.exp_avg_res_row;
  float* col = kKind == kSecondMoment ? p.exp_avg_sq_col : p.exp_avg_res_col;
  const float beta = kKind == kSecondMoment ? grp.k.beta2 : grp.k.beta3;
  const float one_minus = kKind == kSecondMoment ? grp.k.one_minus_beta2 : grp.k.one_minus_beta3;
  // The residual sums already include eps2 per element; their EMA adds no further eps.
  const double scale_sq = kKind == kSecondMoment ? step->grad_scale * step->grad_scale : 1.0;
  const double eps = kKind == kSecondMoment ? grp.eps1 : 0.0;
  const double* row_sum = sums + s.stats_offset;
  const double* col_sum = row_sum + s.rows();
  float* row_f = factor + s.stats_offset;
  float* col_f = row_f + s.rows();
  const int64_t r0 = sb.batch * s.n, r1 = r0 + s.n;
  double part = 0.0;
  for (int64_t i = r0 + threadIdx.x; i < r1; i += kBlockThreads) {
    const float r = EmaOfMean(row[i], row_sum[i], static_cast<double>(s.m), scale_sq, eps, beta,
                              one_minus);
    row[i] = r;
    part += r;
  }
  const double total = dev::BlockSum(part, swarp);
  if (threadIdx.x == 0) smean = total / static_cast<double>(s.n);
  __syncthreads();
  const double mean = smean;
  for (int64_t i = r0 + threadIdx.x; i < r1; i += kBlockThreads)
    row_f[i] = static_cast<float>(RowFactor<double>(row[i], mean));
  const int64_t j0 = sb.batch * s.m, j1 = j0 + s.m;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += kBlockThreads) {
    const float c = EmaOfMean(col[j], col_sum[j], static_cast<double>(s.n), scale_sq, eps, beta,
                              one_minus);
    col[j] = c;
    col_f[j] = ColFactor(c);
  }
}

// One block: the smallest update clip scale over the slices (StepResult::min_clip_scale).
__global__ void __launch_bounds__(kBlockThreads) MinClipKernel(const SliceInfo* slices,
                                                               int64_t num_slices,
                                                               const DeviceGroup* groups,
                                                               const double* sum_sq,
                                                               DeviceStep* step) {
  __shared__ double smin[kBlockThreads];
  if (step->skipped) return;
  double mn = 1.0;
  for (int64_t i = threadIdx.x; i < num_slices; i += kBlockThreads) {
    const double c = ClipScale(sum_sq[i], static_cast<double>(slices[i].numel),
                               groups[slices[i].group].clip_threshold);
    mn = c < mn ? c : mn;
  }
  smin[threadIdx.x] = mn;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int t = 1; t < kBlockThreads; ++t) mn = smin[t] < mn ? smin[t] : mn;
    step->min_clip_scale = mn;
  }
}

}  // namespace came::cuda

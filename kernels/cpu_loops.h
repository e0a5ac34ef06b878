// The innermost CPU loops of the fused CAME step, over one contiguous run of elements that
// lies within one row. They are compiled once per instruction set (generic, AVX2+FMA,
// AVX-512) from the same source, cpu_loops.inc; GetCpuLoops picks the best one this CPU
// runs. All arithmetic is the shared scalar math of came_math.h. Sums are accumulated in a
// fixed order (per SIMD lane, then across lanes; Note [Lane sums] in cpu_loops.inc), so a run
// repeats bit for bit: in double, except the update's sum of squares for the clip (phase 3),
// which uses float lanes flushed into double every 1,024 elements (float accuracy suffices
// for an RMS).
#pragma once

#include <cstdint>

#include "kernels/came_math.h"
#include "kernels/dtype.h"

namespace came::cpu {

constexpr int kNumDTypes = 3;      // indexed by static_cast<int>(DType)
constexpr int kNoParamCopy = 3;    // param index when there is no low-precision copy to write

struct CpuLoops {
  const char* isa;

  // Phase 1, factored: col_acc[j] += g[j]^2; returns the sum of g[j]^2.
  double (*sq_stats[kNumDTypes])(const void* g, int64_t len, double* col_acc);
  // Phase 1, unfactored: returns the sum of g[j]^2.
  double (*sum_sq[kNumDTypes])(const void* g, int64_t len);
  // Phase 2, factored: returns the sum of (g[j] * a * b[j])^2.
  double (*precond_sumsq[kNumDTypes])(const void* g, int64_t len, float a, const float* b);
  // Phase 2, unfactored: v[j] = ema(v[j], (s g[j])^2 + eps1); returns the sum of
  // (s g[j] rsqrt(v[j]))^2.
  double (*second_moment_1d[kNumDTypes])(const void* g, float* v, int64_t len, float s,
                                         const StepScalars<float>& k);
  // Phase 3, factored: u = g[j] * a * b[j]; m[j] = momentum(m[j], u);
  // res_col_acc[j] += residual(u, m[j]); returns the sum of the residuals.
  double (*momentum[kNumDTypes])(const void* g, float* m, int64_t len, float a, const float* b,
                                 double* res_col_acc, const StepScalars<float>& k);
  // Phase 3, unfactored (finishes the tensor): u = a * g[j] * rsqrt(v[j]);
  // m[j] = momentum(m[j], u); master[j] = apply(master[j], m[j]); param[j] = master[j] in the
  // parameter's dtype ([..][kNoParamCopy]: no copy).
  void (*momentum_apply_1d[kNumDTypes][kNumDTypes + 1])(const void* g, const float* v, float* m,
                                                       float* master, void* param, int64_t len,
                                                       float a, const StepScalars<float>& k);
  // Phase 4, factored: master[j] = apply(master[j], m[j] * a * c[j]); param copy as above.
  void (*apply[kNumDTypes + 1])(const float* m, float* master, void* param, int64_t len, float a,
                                const float* c, const StepScalars<float>& k);
};

// Returns the loops for the best instruction set this CPU supports.
const CpuLoops& GetCpuLoops();

// The per-ISA tables (defined in cpu_loops_{generic,avx2,avx512}.cc).
const CpuLoops& GenericLoops();
const CpuLoops& Avx2Loops();
const CpuLoops& Avx512Loops();

}  // namespace came::cpu

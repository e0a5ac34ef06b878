// The small structs that CudaCame keeps in device memory beside the chunk table
// (kernels/cuda/layout.h): each slice's buffers, each group's per-step scalars and the step's
// device-resident scalars (grad norm, skip flag, ...). Plain C++, shared by host and device.
#pragma once

#include <cstdint>

#include "kernels/came_math.h"

namespace came::cuda {

inline constexpr int32_t kNoParamCopy = 3;  // param_dtype when no 16-bit copy is written

// Where slice i's buffers are at this step (device pointers to element `begin` of the slice,
// as TensorSlice's); re-uploaded only when one of them changes.
struct SlicePointers {
  const void* grad = nullptr;
  float* master = nullptr;
  void* param = nullptr;  // copy in param_dtype, or nullptr
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  float* exp_avg_sq_row = nullptr;
  float* exp_avg_sq_col = nullptr;
  float* exp_avg_res_row = nullptr;
  float* exp_avg_res_col = nullptr;
  int32_t param_dtype = kNoParamCopy;  // DType of `param`, kNoParamCopy without one
  int32_t vec = 0;  // 1: 16-byte loads and stores (VectorOk)

  bool operator==(const SlicePointers&) const = default;
};

// One parameter group's scalars for this step, folded on the host (MakeStepScalars).
struct DeviceGroup {
  StepScalars<float> k;
  double eps1;
  double clip_threshold;
};

// The step's scalars that stay on the device between phases (Note [CUDA step state] in
// cuda_came.h).
struct DeviceStep {
  double grad_sum_sq;     // sum of g^2 over every slice (phase 1, or the caller's all-reduce)
  double grad_norm;
  double grad_scale;      // gradient-norm clip factor (1 for none)
  double min_clip_scale;  // smallest update clip scale over the slices (Step only)
  int32_t skipped;        // 1: non-finite gradient; every later kernel does nothing
};

}  // namespace came::cuda

// Test helpers for the CUDA kernels: a set of tensors whose buffers exist twice, on the host
// (for CpuCame) and on the device (for CudaCame), filled with the same values, so one step of
// each can be compared.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cpu_came.h"
#include "kernels/dtype.h"

namespace came::cuda_test {

// Returns whether a CUDA device is present (tests GTEST_SKIP() << "no CUDA device" if not).
bool HasDevice();

struct TensorSpec {
  std::vector<int64_t> shape;
  DType grad_dtype = DType::kFloat32;
  DType param_dtype = DType::kFloat32;  // 16-bit: an fp32 master plus a copy in this dtype
  int group = 0;
};

// How gradients are drawn.
struct GradKind {
  bool huge_range = false;  // each row scaled by 10^k, k uniform in [-15, 15]
  bool zero_row = false;    // row 0 of every factored tensor (element 0 of 1-D ones) is zero
};

// Every buffer of one tensor, as CpuCame's TensorSlice wants them.
struct HostTensor {
  std::vector<uint8_t> grad, param;  // in the tensor's dtypes
  std::vector<float> master, exp_avg, exp_avg_sq, sq_row, sq_col, res_row, res_col;
};

class TwinModel {
 public:
  explicit TwinModel(std::vector<TensorSpec> specs, uint64_t seed);
  ~TwinModel();
  TwinModel(const TwinModel&) = delete;
  TwinModel& operator=(const TwinModel&) = delete;

  const std::vector<TensorSpec>& specs() const { return specs_; }
  // Whole-tensor slices over the host buffers and over the device buffers.
  std::vector<TensorSlice> HostSlices();
  std::vector<TensorSlice> DeviceSlices() const;
  // Draws the next gradients into the host buffers and copies them to the device.
  void NextGradients(const GradKind& kind);
  // Sets one gradient element of tensor t to `v` on both sides.
  void SetGradient(int t, int64_t i, float v);
  // Copies the device buffers back; returns them.
  std::vector<HostTensor> Download() const;
  const std::vector<HostTensor>& host() const { return host_; }
  // Moves tensor t's device gradient to a fresh allocation (torch's set_to_none).
  void MoveDeviceGradient(int t);

 private:
  struct DeviceTensor {
    void* grad = nullptr;
    void* param = nullptr;
    float *master = nullptr, *exp_avg = nullptr, *exp_avg_sq = nullptr, *sq_row = nullptr,
          *sq_col = nullptr, *res_row = nullptr, *res_col = nullptr;
  };
  void Upload(int t);
  std::vector<TensorSpec> specs_;
  std::vector<HostTensor> host_;
  std::vector<DeviceTensor> dev_;
  std::vector<void*> allocations_;
  std::mt19937_64 rng_;
};

// The README's criteria (tests/data/golden/README.md) on float buffers.
double ParamErrorF(const std::vector<float>& got, const std::vector<float>& ref);
double StateErrorF(const std::vector<float>& got, const std::vector<float>& ref);

}  // namespace came::cuda_test

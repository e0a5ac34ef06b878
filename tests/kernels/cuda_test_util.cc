#include "tests/kernels/cuda_test_util.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "gtest/gtest.h"
#include "kernels/cuda/probe.h"
#include "kernels/geometry.h"
#include "tools/replay/case_io.h"

namespace came::cuda_test {
namespace {

void* DeviceAlloc(size_t bytes, std::vector<void*>& owned) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  owned.push_back(p);
  return p;
}

void ToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

template <typename T>
void ToHost(std::vector<T>& dst, const void* src) {
  if (dst.empty()) return;
  const cudaError_t e = cudaMemcpy(dst.data(), src, dst.size() * sizeof(T), cudaMemcpyDeviceToHost);
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
}

std::vector<double> D(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

bool HasDevice() { return cuda::DeviceCount() > 0; }

TwinModel::TwinModel(std::vector<TensorSpec> specs, uint64_t seed)
    : specs_(std::move(specs)), host_(specs_.size()), dev_(specs_.size()), rng_(seed) {
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (size_t t = 0; t < specs_.size(); ++t) {
    const TensorSpec& s = specs_[t];
    const TensorGeometry g = TensorGeometry::FromShape(s.shape);
    HostTensor& h = host_[t];
    h.grad.assign(g.numel * DTypeSize(s.grad_dtype), 0);
    h.master.resize(g.numel);
    for (float& x : h.master) x = normal(rng_);
    if (s.param_dtype != DType::kFloat32) {
      h.param.assign(g.numel * DTypeSize(s.param_dtype), 0);
      for (int64_t i = 0; i < g.numel; ++i) {
        StoreFromFloat(h.param.data(), s.param_dtype, i, h.master[i]);
        h.master[i] = LoadAsFloat(h.param.data(), s.param_dtype, i);
      }
    }
    h.exp_avg.assign(g.numel, 0.0f);
    if (!g.factored) h.exp_avg_sq.assign(g.numel, 0.0f);
    h.sq_row.assign(g.rows(), 0.0f);
    h.sq_col.assign(g.cols(), 0.0f);
    h.res_row.assign(g.rows(), 0.0f);
    h.res_col.assign(g.cols(), 0.0f);
    DeviceTensor& d = dev_[t];
    d.grad = DeviceAlloc(h.grad.size(), allocations_);
    d.param = DeviceAlloc(h.param.size(), allocations_);
    auto f = [&](const std::vector<float>& v) {
      return static_cast<float*>(DeviceAlloc(v.size() * sizeof(float), allocations_));
    };
    d.master = f(h.master);
    d.exp_avg = f(h.exp_avg);
    d.exp_avg_sq = f(h.exp_avg_sq);
    d.sq_row = f(h.sq_row);
    d.sq_col = f(h.sq_col);
    d.res_row = f(h.res_row);
    d.res_col = f(h.res_col);
    Upload(static_cast<int>(t));
  }
}

TwinModel::~TwinModel() {
  cudaDeviceSynchronize();
  for (void* p : allocations_) cudaFree(p);
}

void TwinModel::Upload(int t) {
  const HostTensor& h = host_[t];
  const DeviceTensor& d = dev_[t];
  ToDevice(d.grad, h.grad.data(), h.grad.size());
  ToDevice(d.param, h.param.data(), h.param.size());
  auto f = [](float* dst, const std::vector<float>& v) {
    ToDevice(dst, v.data(), v.size() * sizeof(float));
  };
  f(d.master, h.master);
  f(d.exp_avg, h.exp_avg);
  f(d.exp_avg_sq, h.exp_avg_sq);
  f(d.sq_row, h.sq_row);
  f(d.sq_col, h.sq_col);
  f(d.res_row, h.res_row);
  f(d.res_col, h.res_col);
}

std::vector<TensorSlice> TwinModel::HostSlices() {
  std::vector<TensorSlice> out;
  for (size_t t = 0; t < specs_.size(); ++t) {
    const TensorSpec& s = specs_[t];
    HostTensor& h = host_[t];
    TensorSlice sl;
    sl.geom = TensorGeometry::FromShape(s.shape);
    sl.begin = 0;
    sl.end = sl.geom.numel;
    sl.group = s.group;
    sl.grad = h.grad.data();
    sl.grad_dtype = s.grad_dtype;
    sl.master = h.master.data();
    sl.param = h.param.empty() ? nullptr : h.param.data();
    sl.param_dtype = s.param_dtype;
    sl.exp_avg = h.exp_avg.data();
    sl.exp_avg_sq = h.exp_avg_sq.empty() ? nullptr : h.exp_avg_sq.data();
    sl.exp_avg_sq_row = h.sq_row.empty() ? nullptr : h.sq_row.data();
    sl.exp_avg_sq_col = h.sq_col.empty() ? nullptr : h.sq_col.data();
    sl.exp_avg_res_row = h.res_row.empty() ? nullptr : h.res_row.data();
    sl.exp_avg_res_col = h.res_col.empty() ? nullptr : h.res_col.data();
    out.push_back(sl);
  }
  return out;
}

std::vector<TensorSlice> TwinModel::DeviceSlices() const {
  std::vector<TensorSlice> out;
  for (size_t t = 0; t < specs_.size(); ++t) {
    const TensorSpec& s = specs_[t];
    const DeviceTensor& d = dev_[t];
    TensorSlice sl;
    sl.geom = TensorGeometry::FromShape(s.shape);
    sl.begin = 0;
    sl.end = sl.geom.numel;
    sl.group = s.group;
    sl.grad = d.grad;
    sl.grad_dtype = s.grad_dtype;
    sl.master = d.master;
    sl.param = d.param;
    sl.param_dtype = s.param_dtype;
    sl.exp_avg = d.exp_avg;
    sl.exp_avg_sq = d.exp_avg_sq;
    sl.exp_avg_sq_row = d.sq_row;
    sl.exp_avg_sq_col = d.sq_col;
    sl.exp_avg_res_row = d.res_row;
    sl.exp_avg_res_col = d.res_col;
    out.push_back(sl);
  }
  return out;
}

void TwinModel::NextGradients(const GradKind& kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-15, 15);
  for (size_t t = 0; t < specs_.size(); ++t) {
    const TensorSpec& s = specs_[t];
    const TensorGeometry g = TensorGeometry::FromShape(s.shape);
    HostTensor& h = host_[t];
    const int64_t m = g.m;
    float row_scale = 1.0f;
    for (int64_t i = 0; i < g.numel; ++i) {
      if (i % m == 0) row_scale = kind.huge_range ? std::pow(10.0f, exponent(rng_)) : 1.0f;
      float v = normal(rng_) * row_scale;
      if (kind.zero_row && (g.factored ? (i % (g.n * m)) / m == 0 : i == 0)) v = 0.0f;
      StoreFromFloat(h.grad.data(), s.grad_dtype, i, v);
    }
    ToDevice(dev_[t].grad, h.grad.data(), h.grad.size());
  }
}

void TwinModel::SetGradient(int t, int64_t i, float v) {
  HostTensor& h = host_[t];
  StoreFromFloat(h.grad.data(), specs_[t].grad_dtype, i, v);
  ToDevice(dev_[t].grad, h.grad.data(), h.grad.size());
}

void TwinModel::MoveDeviceGradient(int t) {
  const HostTensor& h = host_[t];
  dev_[t].grad = DeviceAlloc(h.grad.size(), allocations_);
  ToDevice(dev_[t].grad, h.grad.data(), h.grad.size());
}

std::vector<HostTensor> TwinModel::Download() const {
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<HostTensor> out = host_;
  for (size_t t = 0; t < specs_.size(); ++t) {
    HostTensor& h = out[t];
    const DeviceTensor& d = dev_[t];
    ToHost(h.grad, d.grad);
    ToHost(h.param, d.param);
    ToHost(h.master, d.master);
    ToHost(h.exp_avg, d.exp_avg);
    ToHost(h.exp_avg_sq, d.exp_avg_sq);
    ToHost(h.sq_row, d.sq_row);
    ToHost(h.sq_col, d.sq_col);
    ToHost(h.res_row, d.res_row);
    ToHost(h.res_col, d.res_col);
  }
  return out;
}

double ParamErrorF(const std::vector<float>& got, const std::vector<float>& ref) {
  return ParamError(D(got), D(ref));
}

double StateErrorF(const std::vector<float>& got, const std::vector<float>& ref) {
  if (ref.empty()) return 0.0;
  return StateError(D(got), D(ref));
}

}  // namespace came::cuda_test

#include "kernels/cuda/cuda_came.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "kernels/cuda/device_scope.h"
#include "kernels/cuda/phase_kernels.cuh"
#include "kernels/cuda/phase_runner.h"
#include "kernels/dtype.h"

namespace came::cuda {
namespace {

CudaError Internal(const std::string& what, cudaError_t e) {
  return {CudaError::kInternal, what + ": " + cudaGetErrorString(e)};
}


// PhaseRunner's launch: queues a kernel on one stream and keeps the launch's error.
struct CudaLaunch {
  cudaStream_t stream;
  cudaError_t* error;
  template <class Kernel, class... Args>
  bool operator()(unsigned grid, unsigned threads, Kernel kernel, Args... args) const {
    kernel<<<grid, threads, 0, stream>>>(args...);
    *error = cudaGetLastError();
    return *error == cudaSuccess;
  }
};

}  // namespace

CudaCame::CudaCame(Layout layout, int device) : layout_(std::move(layout)), device_(device) {}

CudaCame::~CudaCame() {
  DeviceScope scope(device_);
  if (upload_done_ != nullptr) {
    cudaEventSynchronize(upload_done_);
    cudaEventDestroy(upload_done_);
  }
  if (h_ptrs_ != nullptr) cudaFreeHost(h_ptrs_);
  if (h_step_ != nullptr) cudaFreeHost(h_step_);
  for (void* p : allocations_) cudaFree(p);
}

template <typename T>
CudaError CudaCame::Alloc(T** p, int64_t count) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 1));
  void* raw = nullptr;
  if (cudaError_t e = cudaMalloc(&raw, bytes); e != cudaSuccess)
    return Internal("cudaMalloc of " + std::to_string(bytes) + " bytes", e);
  allocations_.push_back(raw);
  workspace_bytes_ += static_cast<int64_t>(bytes);
  *p = static_cast<T*>(raw);
  return {};
}

std::unique_ptr<CudaCame> CudaCame::Create(std::vector<TensorSlice> slices, int device,
                                           CudaError* error) {
  *error = {};
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    *error = {CudaError::kUnavailable, "no CUDA device is present"};
    return nullptr;
  }
  if (device < 0 || device >= count) {
    *error = {CudaError::kUnavailable, "CUDA device " + std::to_string(device) +
                                           " is not present (this machine has " +
                                           std::to_string(count) + ")"};
    return nullptr;
  }
  std::unique_ptr<CudaCame> c(new CudaCame(BuildLayout(slices), device));
  *error = c->Init(slices);
  if (!error->ok()) return nullptr;
  return c;
}

CudaError CudaCame::Init(std::span<const TensorSlice> slices) {
  DeviceScope scope(device_);
  const Layout& l = layout_;
  const int64_t ns = static_cast<int64_t>(l.slices.size());
  CudaError e;
  if (!(e = Alloc(&d_slices_, ns)).ok() || !(e = Alloc(&d_chunks_, l.chunks.size())).ok() ||
      !(e = Alloc(&d_stat_blocks_, l.stat_blocks.size())).ok() ||
      !(e = Alloc(&d_ptrs_, ns)).ok() || !(e = Alloc(&d_groups_, l.num_groups)).ok() ||
      !(e = Alloc(&d_step_, 1)).ok() || !(e = Alloc(&d_factor_, l.stats_size)).ok() ||
      !(e = Alloc(&d_row_part_, l.row_part_size)).ok() ||
      !(e = Alloc(&d_col_part_, l.col_part_size)).ok() ||
      !(e = Alloc(&d_chunk_sum_, l.chunks.size())).ok() ||
      !(e = Alloc(&d_slice_sum_, ns)).ok() || !(e = Alloc(&d_sums_, l.stats_size)).ok() ||
      !(e = Alloc(&d_sum_sq_, ns)).ok())
    return e;
  if (cudaError_t err = cudaMallocHost(&h_ptrs_, sizeof(SlicePointers) * std::max<int64_t>(ns, 1));
      err != cudaSuccess)
    return Internal("cudaMallocHost", err);
  if (cudaError_t err = cudaMallocHost(&h_step_, sizeof(DeviceStep)); err != cudaSuccess)
    return Internal("cudaMallocHost", err);
  if (cudaError_t err = cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming);
      err != cudaSuccess)
    return Internal("cudaEventCreate", err);
  bound_.resize(ns);
  next_.resize(ns);
  for (int64_t i = 0; i < ns; ++i) bound_[i] = PointersOf(slices[i]);
  auto copy = [](void* dst, const void* src, size_t bytes) -> cudaError_t {
    return bytes == 0 ? cudaSuccess : cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  };
  DeviceStep step{};
  step.grad_scale = 1.0;
  step.min_clip_scale = 1.0;
  cudaError_t err = copy(d_slices_, l.slices.data(), sizeof(SliceInfo) * ns);
  if (err == cudaSuccess) err = copy(d_chunks_, l.chunks.data(), sizeof(Chunk) * l.chunks.size());
  if (err == cudaSuccess)
    err = copy(d_stat_blocks_, l.stat_blocks.data(), sizeof(StatBlock) * l.stat_blocks.size());
  if (err == cudaSuccess) err = copy(d_ptrs_, bound_.data(), sizeof(SlicePointers) * ns);
  if (err == cudaSuccess) err = copy(d_step_, &step, sizeof step);
  if (err == cudaSuccess)
    err = cudaMemset(d_groups_, 0, sizeof(DeviceGroup) * static_cast<size_t>(l.num_groups));
  // A copy from pageable memory may still be in flight when cudaMemcpy returns; the kernels
  // run on other streams.
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  if (err != cudaSuccess) return Internal("uploading the chunk table", err);
  buffers_.layout = &layout_;
  buffers_.slices = d_slices_;
  buffers_.chunks = d_chunks_;
  buffers_.stat_blocks = d_stat_blocks_;
  buffers_.ptrs = d_ptrs_;
  buffers_.groups = d_groups_;
  buffers_.step = d_step_;
  buffers_.factor = d_factor_;
  buffers_.row_part = d_row_part_;
  buffers_.col_part = d_col_part_;
  buffers_.chunk_sum = d_chunk_sum_;
  buffers_.slice_sum = d_slice_sum_;
  return {};
}

CudaError CudaCame::SetBuffers(std::span<const TensorSlice> buffers, cudaStream_t stream) {
  if (static_cast<int64_t>(buffers.size()) != num_slices())
    return {CudaError::kInvalidArgument, "SetBuffers: expected " + std::to_string(num_slices()) +
                                             " slices, got " + std::to_string(buffers.size())};
  bool changed = false;
  for (size_t i = 0; i < buffers.size(); ++i) {
    const SliceInfo& info = layout_.slices[i];
    TensorSlice s = buffers[i];  // the layout's geometry with the caller's buffers
    s.geom.factored = info.factored != 0;
    s.geom.m = info.m;
    s.begin = info.begin;
    s.grad_dtype = static_cast<DType>(info.grad_dtype);
    next_[i] = PointersOf(s);
    changed = changed || !(next_[i] == bound_[i]);
  }
  if (!changed) return {};
  DeviceScope scope(device_);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaError_t e = cudaStreamIsCapturing(stream, &capture); e != cudaSuccess)
    return Internal("cudaStreamIsCapturing", e);
  if (capture != cudaStreamCaptureStatusNone)
    return {CudaError::kFailedPrecondition,
            "tensor buffers moved during CUDA graph capture: run one eager step with these "
            "buffers before capturing"};
  // The previous upload must have read the staging buffer before it is overwritten.
  if (upload_pending_) {
    if (cudaError_t e = cudaEventSynchronize(upload_done_); e != cudaSuccess)
      return Internal("waiting for the previous pointer upload", e);
  }
  std::copy(next_.begin(), next_.end(), h_ptrs_);
  if (cudaError_t e = cudaMemcpyAsync(d_ptrs_, h_ptrs_, sizeof(SlicePointers) * buffers.size(),
                                      cudaMemcpyHostToDevice, stream);
      e != cudaSuccess)
    return Internal("uploading the pointer table", e);
  if (cudaError_t e = cudaEventRecord(upload_done_, stream); e != cudaSuccess)
    return Internal("cudaEventRecord", e);
  upload_pending_ = true;
  bound_ = next_;
  return {};
}

template <class F>
CudaError CudaCame::Run(const char* what, cudaStream_t stream, F&& queue) {
  DeviceScope scope(device_);
  cudaError_t error = cudaSuccess;
  PhaseRunner<CudaLaunch> runner(buffers_, CudaLaunch{stream, &error});
  if (!queue(runner)) return Internal(std::string("launching the kernels of ") + what, error);
  return {};
}

CudaError CudaCame::GradStats(double* sums, double* grad_sum_sq, cudaStream_t stream) {
  return Run("GradStats", stream, [&](auto& r) { return r.GradStats(sums, grad_sum_sq); });
}

CudaError CudaCame::BeginStep(const double* grad_sum_sq, double max_grad_norm,
                              cudaStream_t stream) {
  return Run("BeginStep", stream,
             [&](auto& r) { return r.BeginStep(grad_sum_sq, max_grad_norm); });
}

CudaError CudaCame::UpdateSecondMoments(const double* sums, std::span<const CameHyper> groups,
                                        cudaStream_t stream) {
  if (CudaError e = CheckGroups(groups); !e.ok()) return e;
  return Run("UpdateSecondMoments", stream,
             [&](auto& r) { return r.UpdateSecondMoments(sums, groups); });
}

CudaError CudaCame::UpdateSquares(double* sum_sq, cudaStream_t stream) {
  return Run("UpdateSquares", stream, [&](auto& r) { return r.UpdateSquares(sum_sq); });
}

CudaError CudaCame::Momentum(const double* sum_sq, double* sums, cudaStream_t stream) {
  return Run("Momentum", stream, [&](auto& r) { return r.Momentum(sum_sq, sums); });
}

CudaError CudaCame::UpdateResiduals(const double* sums, cudaStream_t stream) {
  return Run("UpdateResiduals", stream, [&](auto& r) { return r.UpdateResiduals(sums); });
}

CudaError CudaCame::Apply(cudaStream_t stream) {
  return Run("Apply", stream, [&](auto& r) { return r.Apply(); });
}

CudaError CudaCame::Step(std::span<const CameHyper> groups, const StepOptions& options,
                         cudaStream_t stream) {
  if (CudaError e = CheckGroups(groups); !e.ok()) return e;
  CudaError e = Run("Step", stream, [&](auto& r) {
    return r.LocalStep(groups, options.max_grad_norm, d_sums_, d_sum_sq_);
  });
  if (e.ok()) stepped_ = true;
  return e;
}

CudaError CudaCame::CheckGroups(std::span<const CameHyper> groups) const {
  if (static_cast<int64_t>(groups.size()) >= layout_.num_groups) return {};
  return {CudaError::kInvalidArgument, "expected hyperparameters for " +
                                           std::to_string(layout_.num_groups) +
                                           " groups, got " + std::to_string(groups.size())};
}

CudaError CudaCame::ReadResult(StepResult* result, cudaStream_t stream) {
  *result = StepResult{};
  if (!stepped_) return {};
  DeviceScope scope(device_);
  if (cudaError_t e = cudaMemcpyAsync(h_step_, d_step_, sizeof(DeviceStep),
                                      cudaMemcpyDeviceToHost, stream);
      e != cudaSuccess)
    return Internal("reading the step result", e);
  if (cudaError_t e = cudaStreamSynchronize(stream); e != cudaSuccess)
    return Internal("waiting for the step", e);
  result->skipped = h_step_->skipped != 0;
  result->grad_norm = h_step_->grad_norm;
  result->grad_scale = h_step_->grad_scale;
  result->min_clip_scale = h_step_->min_clip_scale;
  return {};
}

}  // namespace came::cuda

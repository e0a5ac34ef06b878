#include "kernels/cuda/cuda_came.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "kernels/cuda/phase_kernels.cuh"
#include "kernels/dtype.h"

namespace came::cuda {
namespace {

CudaError Internal(const std::string& what, cudaError_t e) {
  return {CudaError::kInternal, what + ": " + cudaGetErrorString(e)};
}

// Makes `device` current for the scope of a call and restores the caller's.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device &&
        cudaSetDevice(device) == cudaSuccess)
      switched_ = true;
  }
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool switched_ = false;
};

unsigned Blocks(int64_t threads) {
  return static_cast<unsigned>((threads + kBlockThreads - 1) / kBlockThreads);
}

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
  return {};
}

CudaError CudaCame::Launched(const char* what) {
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess)
    return Internal(std::string("launching ") + what, e);
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

template <int kPhase>
CudaError CudaCame::LaunchPhase(const double* sum_sq, cudaStream_t stream) {
  if (layout_.chunks.empty()) return {};
  PhaseArgs a;
  a.slices = d_slices_;
  a.chunks = d_chunks_;
  a.ptrs = d_ptrs_;
  a.groups = d_groups_;
  a.step = d_step_;
  a.factor = d_factor_;
  a.sum_sq = sum_sq;
  a.row_part = d_row_part_;
  a.col_part = d_col_part_;
  a.chunk_sum = d_chunk_sum_;
  PhaseKernel<kPhase><<<static_cast<unsigned>(layout_.chunks.size()), kBlockThreads, 0, stream>>>(a);
  return Launched("a phase kernel");
}

CudaError CudaCame::Reduce(bool check_skip, int64_t num_stats, double* sums, double* slice_out,
                           cudaStream_t stream) {
  const int64_t threads = num_stats + (slice_out != nullptr ? num_slices() : 0);
  if (threads == 0) return {};
  ReduceArgs a;
  a.slices = d_slices_;
  a.num_slices = num_slices();
  a.step = d_step_;
  a.check_skip = check_skip;
  a.row_part = d_row_part_;
  a.col_part = d_col_part_;
  a.chunk_sum = d_chunk_sum_;
  a.num_stats = num_stats;
  a.sums = sums;
  a.slice_out = slice_out;
  ReduceKernel<<<Blocks(threads), kBlockThreads, 0, stream>>>(a);
  return Launched("the reduction kernel");
}

CudaError CudaCame::GradStats(double* sums, double* grad_sum_sq, cudaStream_t stream) {
  DeviceScope scope(device_);
  CudaError e = LaunchPhase<kGradStats>(nullptr, stream);
  if (e.ok()) e = Reduce(false, stats_size(), sums, d_slice_sum_, stream);
  if (!e.ok()) return e;
  TotalKernel<<<1, kBlockThreads, 0, stream>>>(d_slice_sum_, num_slices(), grad_sum_sq);
  return Launched("the total kernel");
}

CudaError CudaCame::BeginStep(const double* grad_sum_sq, double max_grad_norm,
                              cudaStream_t stream) {
  DeviceScope scope(device_);
  BeginStepKernel<<<1, 1, 0, stream>>>(grad_sum_sq, max_grad_norm, d_step_);
  return Launched("the step kernel");
}

CudaError CudaCame::UpdateSecondMoments(const double* sums, std::span<const CameHyper> groups,
                                        cudaStream_t stream) {
  if (static_cast<int64_t>(groups.size()) < layout_.num_groups)
    return {CudaError::kInvalidArgument, "expected hyperparameters for " +
                                             std::to_string(layout_.num_groups) +
                                             " groups, got " + std::to_string(groups.size())};
  DeviceScope scope(device_);
  for (int first = 0; first < layout_.num_groups; first += kGroupsPerLaunch) {
    GroupBatch batch{};
    batch.first = first;
    batch.count = std::min(kGroupsPerLaunch, layout_.num_groups - first);
    for (int k = 0; k < batch.count; ++k) {
      const CameHyper& h = groups[first + k];
      batch.g[k] = {MakeStepScalars<float>(h), h.eps1, h.clip_threshold};
    }
    SetGroupsKernel<<<1, kGroupsPerLaunch, 0, stream>>>(batch, d_groups_);
    if (CudaError e = Launched("the group kernel"); !e.ok()) return e;
  }
  if (layout_.stat_blocks.empty()) return {};
  StatsKernel<kSecondMoment><<<static_cast<unsigned>(layout_.stat_blocks.size()), kBlockThreads,
                               0, stream>>>(d_slices_, d_stat_blocks_, d_ptrs_, d_groups_,
                                            d_step_, sums, d_factor_);
  return Launched("the statistics kernel");
}

CudaError CudaCame::UpdateSquares(double* sum_sq, cudaStream_t stream) {
  DeviceScope scope(device_);
  CudaError e = LaunchPhase<kSquares>(nullptr, stream);
  if (e.ok()) e = Reduce(true, 0, nullptr, sum_sq, stream);
  return e;
}

CudaError CudaCame::Momentum(const double* sum_sq, double* sums, cudaStream_t stream) {
  DeviceScope scope(device_);
  CudaError e = LaunchPhase<kMomentum>(sum_sq, stream);
  if (e.ok()) e = Reduce(true, stats_size(), sums, nullptr, stream);
  return e;
}

CudaError CudaCame::UpdateResiduals(const double* sums, cudaStream_t stream) {
  if (layout_.stat_blocks.empty()) return {};
  DeviceScope scope(device_);
  StatsKernel<kResidual><<<static_cast<unsigned>(layout_.stat_blocks.size()), kBlockThreads, 0,
                           stream>>>(d_slices_, d_stat_blocks_, d_ptrs_, d_groups_, d_step_, sums,
                                     d_factor_);
  return Launched("the statistics kernel");
}

CudaError CudaCame::Apply(cudaStream_t stream) {
  DeviceScope scope(device_);
  return LaunchPhase<kApply>(nullptr, stream);
}

CudaError CudaCame::Step(std::span<const CameHyper> groups, const StepOptions& options,
                         cudaStream_t stream) {
  DeviceScope scope(device_);
  double* grad_sum_sq = &d_step_->grad_sum_sq;
  CudaError e = GradStats(d_sums_, grad_sum_sq, stream);
  if (e.ok()) e = BeginStep(grad_sum_sq, options.max_grad_norm, stream);
  if (e.ok()) e = UpdateSecondMoments(d_sums_, groups, stream);
  if (e.ok()) e = UpdateSquares(d_sum_sq_, stream);
  if (e.ok()) e = Momentum(d_sum_sq_, d_sums_, stream);
  if (e.ok()) e = UpdateResiduals(d_sums_, stream);
  if (e.ok()) e = Apply(stream);
  if (!e.ok()) return e;
  MinClipKernel<<<1, kBlockThreads, 0, stream>>>(d_slices_, num_slices(), d_groups_, d_sum_sq_,
                                                 d_step_);
  if (e = Launched("the clip kernel"); !e.ok()) return e;
  stepped_ = true;
  return {};
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

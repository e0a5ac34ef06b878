#include "kernels/cuda/cuda_phases.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>

#include "kernels/cuda/device_scope.h"

namespace came::cuda {
namespace {

PhaseStatus FromCuda(const CudaError& e) {
  switch (e.code) {
    case CudaError::kOk:
      return {};
    case CudaError::kInvalidArgument:
      return {PhaseStatus::kInvalidArgument, e.message};
    case CudaError::kFailedPrecondition:
      return {PhaseStatus::kFailedPrecondition, e.message};
    case CudaError::kUnavailable:
      return {PhaseStatus::kUnavailable, e.message};
    case CudaError::kInternal:
      return {PhaseStatus::kInternal, e.message};
  }
  return {PhaseStatus::kInternal, e.message};
}

PhaseStatus Internal(const std::string& what, cudaError_t e) {
  return {PhaseStatus::kInternal, what + ": " + cudaGetErrorString(e)};
}


}  // namespace

CudaPhases::CudaPhases(CudaCame& came, cudaStream_t stream, std::chrono::milliseconds wait_timeout)
    : came_(came), stream_(stream), wait_timeout_(wait_timeout) {}

std::unique_ptr<CudaPhases> CudaPhases::Create(CudaCame& came, cudaStream_t stream,
                                               std::chrono::milliseconds wait_timeout,
                                               CudaError* error) {
  *error = {};
  std::unique_ptr<CudaPhases> p(new CudaPhases(came, stream, wait_timeout));
  DeviceScope scope(came.device());
  const size_t ns = static_cast<size_t>(std::max(came.num_slices(), 1));
  const size_t stats = static_cast<size_t>(std::max<int64_t>(came.stats_size(), 1));
  cudaError_t e = cudaMalloc(&p->d_sums_, sizeof(double) * stats);
  if (e == cudaSuccess) e = cudaMalloc(&p->d_grad_sum_sq_, sizeof(double));
  if (e == cudaSuccess) e = cudaMalloc(&p->d_sum_sq_, sizeof(double) * ns);
  if (e == cudaSuccess) e = cudaMallocHost(&p->h_, sizeof(double) * ns);
  if (e != cudaSuccess) {
    *error = {CudaError::kInternal,
              std::string("allocating the step's statistic buffers: ") + cudaGetErrorString(e)};
    return nullptr;
  }
  return p;
}

CudaPhases::~CudaPhases() {
  DeviceScope scope(came_.device());
  // Work queued on the stream may still read the buffers.
  cudaStreamSynchronize(stream_);
  cudaFree(d_sums_);
  cudaFree(d_grad_sum_sq_);
  cudaFree(d_sum_sq_);
  cudaFreeHost(h_);
}

PhaseStatus CudaPhases::Download(const double* from, int64_t count, const char* what) {
  DeviceScope scope(came_.device());
  if (cudaError_t e = cudaMemcpyAsync(h_, from, sizeof(double) * static_cast<size_t>(count),
                                      cudaMemcpyDeviceToHost, stream_);
      e != cudaSuccess)
    return Internal(std::string("reading ") + what, e);
  const auto deadline = std::chrono::steady_clock::now() + wait_timeout_;
  for (auto pause = std::chrono::microseconds(2);;
       pause = std::min(pause * 2, std::chrono::microseconds(1000))) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaSuccess) return {};
    if (e != cudaErrorNotReady) return Internal(std::string("waiting for ") + what, e);
    if (std::chrono::steady_clock::now() >= deadline)
      return {PhaseStatus::kUnavailable, std::string("the CUDA device did not finish ") + what +
                                             " within " + std::to_string(wait_timeout_.count()) +
                                             " ms"};
    std::this_thread::sleep_for(pause);
  }
}

PhaseStatus CudaPhases::GradStats() {
  return FromCuda(came_.GradStats(d_sums_, d_grad_sum_sq_, stream_));
}

PhaseStatus CudaPhases::BeginStep(double max_grad_norm) {
  max_grad_norm_ = max_grad_norm;
  return FromCuda(came_.BeginStep(d_grad_sum_sq_, max_grad_norm, stream_));
}

PhaseStatus CudaPhases::ReadDecision(StepDecision* decision) {
  decision_ = StepDecision{};
  if (PhaseStatus s = Download(d_grad_sum_sq_, 1, "the sum of g^2"); !s.ok()) return s;
  const double sum_sq = h_[0];
  decision_.grad_norm = std::sqrt(sum_sq);
  decision_.skipped = !std::isfinite(sum_sq);
  if (!decision_.skipped)
    decision_.grad_scale = GradNormScale(decision_.grad_norm, max_grad_norm_);
  *decision = decision_;
  return {};
}

PhaseStatus CudaPhases::UpdateSecondMoments(std::span<const CameHyper> groups) {
  groups_ = groups;
  return FromCuda(came_.UpdateSecondMoments(d_sums_, groups, stream_));
}

PhaseStatus CudaPhases::UpdateSquares() {
  return FromCuda(came_.UpdateSquares(d_sum_sq_, stream_));
}

PhaseStatus CudaPhases::Momentum() { return FromCuda(came_.Momentum(d_sum_sq_, d_sums_, stream_)); }

PhaseStatus CudaPhases::UpdateResiduals() {
  return FromCuda(came_.UpdateResiduals(d_sums_, stream_));
}

PhaseStatus CudaPhases::Apply() { return FromCuda(came_.Apply(stream_)); }

PhaseStatus CudaPhases::Finish(double* min_clip_scale) {
  *min_clip_scale = 1.0;
  const int ns = num_slices();
  if (PhaseStatus s = Download(d_sum_sq_, std::max(ns, 1), "the step"); !s.ok()) return s;
  if (decision_.skipped) return {};
  const Layout& l = came_.layout();
  for (int i = 0; i < ns; ++i) {
    const SliceInfo& s = l.slices[i];
    *min_clip_scale = std::min(*min_clip_scale, ClipScale(h_[i], static_cast<double>(s.numel),
                                                          groups_[s.group].clip_threshold));
  }
  return {};
}

}  // namespace came::cuda

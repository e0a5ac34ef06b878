#include "tools/replay/cuda_trajectory.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu_came.h"
#include "kernels/cuda/cuda_came.h"
#include "kernels/cuda/probe.h"
#include "kernels/geometry.h"

namespace came {
namespace {

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status FromCuda(const cuda::CudaError& e) {
  if (e.ok()) return absl::OkStatus();
  if (e.code == cuda::CudaError::kUnavailable) return absl::UnavailableError(e.message);
  return absl::InternalError(e.message);
}

// A device buffer of floats or raw bytes, freed at scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  absl::Status Alloc(size_t bytes) {
    bytes_ = bytes;
    if (bytes == 0) return absl::OkStatus();
    return Check(cudaMalloc(&p_, bytes), "cudaMalloc");
  }
  // Queues a copy from the host on `stream` (the host memory must stay unchanged until the
  // stream has run it).
  absl::Status Upload(const void* src, cudaStream_t stream) {
    if (bytes_ == 0) return absl::OkStatus();
    return Check(cudaMemcpyAsync(p_, src, bytes_, cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync");
  }
  absl::StatusOr<std::vector<double>> DownloadFloats() const {
    std::vector<float> f(bytes_ / sizeof(float));
    if (bytes_ != 0) {
      if (absl::Status s = Check(cudaMemcpy(f.data(), p_, bytes_, cudaMemcpyDeviceToHost),
                                 "cudaMemcpy");
          !s.ok())
        return s;
    }
    return std::vector<double>(f.begin(), f.end());
  }
  float* f() const { return static_cast<float*>(p_); }
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace

std::string CudaUnavailableReason() {
  return cuda::DeviceCount() == 0 ? "no CUDA device is present" : "";
}

absl::StatusOr<Trajectory> RunCuda(const GoldenCase& c, DType grad_dtype, bool graph) {
  if (std::string why = CudaUnavailableReason(); !why.empty())
    return absl::UnavailableError(why);
  const TensorGeometry geom = TensorGeometry::FromShape(c.shape);
  const int64_t n = geom.numel;
  cudaStream_t stream = nullptr;
  if (absl::Status st = Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                              "cudaStreamCreate");
      !st.ok())
    return st;
  cudaGraph_t captured = nullptr;
  cudaGraphExec_t exec = nullptr;
  auto cleanup = [&] {
    cudaStreamSynchronize(stream);
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (captured != nullptr) cudaGraphDestroy(captured);
    cudaStreamDestroy(stream);
  };
  DeviceBuffer master, grad, exp_avg, exp_avg_sq, sq_row, sq_col, res_row, res_col;
  const size_t f = sizeof(float);
  const std::vector<float> zeros(n + geom.rows() + geom.cols(), 0.0f);
  const std::vector<float> p0(c.param0.begin(), c.param0.end());
  absl::Status status;
  for (auto [buf, count] :
       {std::pair{&master, n}, {&exp_avg, n}, {&exp_avg_sq, geom.factored ? 0 : n},
        {&sq_row, geom.rows()}, {&sq_col, geom.cols()}, {&res_row, geom.rows()},
        {&res_col, geom.cols()}}) {
    if (status.ok()) status = buf->Alloc(f * count);
    if (status.ok()) status = buf->Upload(buf == &master ? p0.data() : zeros.data(), stream);
  }
  if (status.ok()) status = grad.Alloc(DTypeSize(grad_dtype) * n);
  if (status.ok()) status = Check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (!status.ok()) {
    cleanup();
    return status;
  }

  TensorSlice s;
  s.geom = geom;
  s.begin = 0;
  s.end = n;
  s.grad = grad.get();
  s.grad_dtype = grad_dtype;
  s.master = master.f();
  s.exp_avg = exp_avg.f();
  if (geom.factored) {
    s.exp_avg_sq_row = sq_row.f();
    s.exp_avg_sq_col = sq_col.f();
    s.exp_avg_res_row = res_row.f();
    s.exp_avg_res_col = res_col.f();
  } else {
    s.exp_avg_sq = exp_avg_sq.f();
  }
  cuda::CudaError error;
  std::unique_ptr<cuda::CudaCame> came = cuda::CudaCame::Create({s}, 0, &error);
  if (came == nullptr) {
    cleanup();
    return FromCuda(error);
  }
  const CameHyper groups[1] = {c.hyper};
  std::vector<uint8_t> host_grad(DTypeSize(grad_dtype) * n);
  Trajectory out;
  for (int k = 0; k < c.steps && status.ok(); ++k) {
    for (int64_t i = 0; i < n; ++i)
      StoreFromFloat(host_grad.data(), grad_dtype, i, static_cast<float>(c.grads[k][i]));
    // Ordered before the step on the stream; host_grad is rewritten only after ReadResult
    // waited for the stream.
    if (status = grad.Upload(host_grad.data(), stream); !status.ok()) break;
    if (status = FromCuda(came->SetBuffers({&s, 1}, stream)); !status.ok()) break;
    if (graph && k >= 1) {
      if (exec == nullptr) {
        status = Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                       "cudaStreamBeginCapture");
        if (!status.ok()) break;
        const cuda::CudaError e = came->Step(groups, StepOptions{}, stream);
        const cudaError_t end = cudaStreamEndCapture(stream, &captured);
        if (status = FromCuda(e); !status.ok()) break;
        if (status = Check(end, "cudaStreamEndCapture"); !status.ok()) break;
        if (status = Check(cudaGraphInstantiate(&exec, captured, 0), "cudaGraphInstantiate");
            !status.ok())
          break;
      }
      if (status = Check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); !status.ok()) break;
    } else if (status = FromCuda(came->Step(groups, StepOptions{}, stream)); !status.ok()) {
      break;
    }
    StepResult r;
    if (status = FromCuda(came->ReadResult(&r, stream)); !status.ok()) break;
    out.skipped.push_back(r.skipped);
    auto p = master.DownloadFloats();
    if (!p.ok()) {
      status = p.status();
      break;
    }
    out.params.push_back(*std::move(p));
  }
  cleanup();
  if (!status.ok()) return status;
  auto put = [&](const char* name, const DeviceBuffer& b) -> absl::Status {
    auto v = b.DownloadFloats();
    if (!v.ok()) return v.status();
    out.state[name] = *std::move(v);
    return absl::OkStatus();
  };
  if (absl::Status st = put("exp_avg", exp_avg); !st.ok()) return st;
  if (geom.factored) {
    for (auto [name, b] : {std::pair{"exp_avg_sq_row", &sq_row}, {"exp_avg_sq_col", &sq_col},
                           {"exp_avg_res_row", &res_row}, {"exp_avg_res_col", &res_col}})
      if (absl::Status st = put(name, *b); !st.ok()) return st;
  } else if (absl::Status st = put("exp_avg_sq", exp_avg_sq); !st.ok()) {
    return st;
  }
  return out;
}

}  // namespace came

// The C ABI (came_capi.h): checks every argument, keeps the thread's last error and hands
// valid calls to a backend (backend.h). No C++ exception leaves this file.
#include "kernels/capi/came_capi.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/capi/backend.h"
#include "kernels/cpu_loops.h"
#include "kernels/geometry.h"
#include "kernels/hyper_check.h"

namespace came::capi {
namespace {

thread_local std::string last_error;

// A handle's first word, so that a pointer that is not an optimizer is refused instead of
// dereferenced further.
constexpr uint64_t kMagic = 0x43414d454f505431ull;  // "CAMEOPT1"

struct Optimizer {
  uint64_t magic = kMagic;
  int32_t device = -1;
  std::vector<came_tensor_desc> tensors;
  int32_t num_groups_needed = 0;  // 1 + the largest group index
  std::unique_ptr<Backend> backend;
};

int32_t Fail(int32_t code, std::string message) {
  last_error = std::move(message);
  return code;
}
int32_t Fail(const Error& e) { return Fail(e.code, e.message); }

std::string TensorPrefix(int64_t i) { return "tensor " + std::to_string(i) + ": "; }

bool ValidDType(int32_t t) { return t == CAME_FLOAT32 || t == CAME_BFLOAT16 || t == CAME_FLOAT16; }

std::span<const int64_t> Shape(const came_tensor_desc& d) {
  return {d.shape, static_cast<size_t>(d.ndim)};
}

// Returns "" when a descriptor is usable, else what is wrong with it.
std::string DescError(const came_tensor_desc& d) {
  if (d.ndim < 0 || d.ndim > CAME_MAX_DIMS)
    return "ndim must be in [0, " + std::to_string(CAME_MAX_DIMS) + "], got " +
           std::to_string(d.ndim);
  int64_t numel = 1;
  for (int k = 0; k < d.ndim; ++k) {
    if (d.shape[k] <= 0)
      return "every dim must be > 0, got shape " + ShapeString(Shape(d));
    if (numel > std::numeric_limits<int64_t>::max() / 8 / d.shape[k])
      return "shape " + ShapeString(Shape(d)) + " has too many elements";
    numel *= d.shape[k];
  }
  if (!ValidDType(d.param_dtype))
    return "param_dtype must be CAME_FLOAT32, CAME_BFLOAT16 or CAME_FLOAT16, got " +
           std::to_string(d.param_dtype);
  if (!ValidDType(d.grad_dtype))
    return "grad_dtype must be CAME_FLOAT32, CAME_BFLOAT16 or CAME_FLOAT16, got " +
           std::to_string(d.grad_dtype);
  if (d.group < 0) return "group must be >= 0, got " + std::to_string(d.group);
  return "";
}

// Returns "" when a tensor's pointers match its kind (came_tensor_ptrs), else what is wrong.
std::string PtrsError(const came_tensor_desc& d, const came_tensor_ptrs& p) {
  if (p.param == nullptr) return "param is NULL";
  if (p.grad == nullptr) return "grad is NULL";
  if (p.exp_avg == nullptr) return "exp_avg is NULL";
  if (d.param_dtype == CAME_FLOAT32 && p.master != nullptr)
    return "master must be NULL for a float32 parameter (it is updated in place)";
  if (d.param_dtype != CAME_FLOAT32 && p.master == nullptr)
    return "master is NULL (a bfloat16/float16 parameter needs its float32 master copy)";
  const bool factored = d.ndim >= 2;
  if (factored) {
    if (p.exp_avg_sq != nullptr) return "exp_avg_sq must be NULL for a factored tensor";
    if (p.exp_avg_sq_row == nullptr) return "exp_avg_sq_row is NULL";
    if (p.exp_avg_sq_col == nullptr) return "exp_avg_sq_col is NULL";
    if (p.exp_avg_res_row == nullptr) return "exp_avg_res_row is NULL";
    if (p.exp_avg_res_col == nullptr) return "exp_avg_res_col is NULL";
  } else {
    if (p.exp_avg_sq == nullptr) return "exp_avg_sq is NULL";
    if (p.exp_avg_sq_row != nullptr || p.exp_avg_sq_col != nullptr ||
        p.exp_avg_res_row != nullptr || p.exp_avg_res_col != nullptr)
      return "row/column statistics must be NULL for an unfactored (ndim <= 1) tensor";
  }
  return "";
}

Optimizer* AsOptimizer(void* handle) {
  auto* o = static_cast<Optimizer*>(handle);
  return (o != nullptr && o->magic == kMagic) ? o : nullptr;
}

int32_t Create(int32_t device, const came_tensor_desc* tensors, int64_t num_tensors,
               int32_t num_threads, void** out_optimizer) {
  if (out_optimizer == nullptr) return Fail(CAME_INVALID_ARGUMENT, "out_optimizer is NULL");
  if (num_tensors < 0)
    return Fail(CAME_INVALID_ARGUMENT,
                "num_tensors must be >= 0, got " + std::to_string(num_tensors));
  if (num_tensors > 0 && tensors == nullptr)
    return Fail(CAME_INVALID_ARGUMENT, "tensors is NULL");
  if (device < -1)
    return Fail(CAME_INVALID_ARGUMENT,
                "device must be -1 (CPU) or a CUDA ordinal, got " + std::to_string(device));
  auto opt = std::make_unique<Optimizer>();
  opt->device = device;
  opt->tensors.assign(tensors, tensors + num_tensors);
  for (int64_t i = 0; i < num_tensors; ++i) {
    const std::string e = DescError(opt->tensors[i]);
    if (!e.empty()) return Fail(CAME_INVALID_ARGUMENT, TensorPrefix(i) + e);
    opt->num_groups_needed = std::max(opt->num_groups_needed, opt->tensors[i].group + 1);
  }
  Error error;
  if (device == -1) {
    opt->backend = CreateCpuBackend(opt->tensors, num_threads, &error);
  } else {
    const int32_t count = CudaDeviceCount();
    if (std::string_view(CudaBuildInfo()) != "none" && device >= count)
      return Fail(CAME_UNAVAILABLE, "CUDA device " + std::to_string(device) +
                                        " is not present (this machine has " +
                                        std::to_string(count) + ")");
    opt->backend = CreateCudaBackend(device, opt->tensors, &error);
  }
  if (opt->backend == nullptr)
    return Fail(error.ok() ? Error{CAME_INTERNAL, "backend creation failed"} : error);
  *out_optimizer = opt.release();
  return CAME_OK;
}

int32_t Step(void* handle, const came_tensor_ptrs* ptrs, const came_hyper* groups,
             int32_t num_groups, void* stream, came_step_result* result) {
  Optimizer* opt = AsOptimizer(handle);
  if (opt == nullptr) return Fail(CAME_INVALID_ARGUMENT, "optimizer is NULL or not an optimizer");
  const int64_t n = static_cast<int64_t>(opt->tensors.size());
  if (n > 0 && ptrs == nullptr) return Fail(CAME_INVALID_ARGUMENT, "ptrs is NULL");
  if (num_groups < opt->num_groups_needed)
    return Fail(CAME_INVALID_ARGUMENT,
                "num_groups must be > every tensor's group: need " +
                    std::to_string(opt->num_groups_needed) + ", got " +
                    std::to_string(num_groups));
  if (num_groups > 0 && groups == nullptr) return Fail(CAME_INVALID_ARGUMENT, "groups is NULL");
  for (int32_t k = 0; k < num_groups; ++k) {
    const std::string e = HyperError(ToCameHyper(groups[k]));
    if (!e.empty()) return Fail(CAME_INVALID_ARGUMENT, "group " + std::to_string(k) + ": " + e);
  }
  for (int64_t i = 0; i < n; ++i) {
    const std::string e = PtrsError(opt->tensors[i], ptrs[i]);
    if (!e.empty()) return Fail(CAME_INVALID_ARGUMENT, TensorPrefix(i) + e);
  }
  if (opt->device >= 0 && result != nullptr)
    return Fail(CAME_INVALID_ARGUMENT,
                "result must be NULL for a CUDA optimizer (use came_optimizer_last_result)");
  const Error e = opt->backend->Step({ptrs, static_cast<size_t>(n)},
                                     {groups, static_cast<size_t>(num_groups)}, stream, result);
  return e.ok() ? CAME_OK : Fail(e);
}

// Runs fn and turns an escaping exception (std::bad_alloc above all) into CAME_INTERNAL.
template <typename Fn>
int32_t Guard(Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Fail(CAME_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return Fail(CAME_INTERNAL, std::string("internal error: ") + e.what());
  }
}

}  // namespace
}  // namespace came::capi

using came::capi::Fail;
using came::capi::Guard;

extern "C" {

int32_t came_abi_version(void) { return CAME_ABI_VERSION; }

const char* came_build_info(void) {
  static const std::string info = std::string("cpu=") + came::cpu::GetCpuLoops().isa +
                                  " cuda=" + came::capi::CudaBuildInfo();
  return info.c_str();
}

const char* came_last_error(void) { return came::capi::last_error.c_str(); }

int32_t came_cuda_device_count(void) { return came::capi::CudaDeviceCount(); }

int32_t came_optimizer_create(int32_t device, const came_tensor_desc* tensors,
                              int64_t num_tensors, int32_t num_threads, void** out_optimizer) {
  return Guard(
      [&] { return came::capi::Create(device, tensors, num_tensors, num_threads, out_optimizer); });
}

void came_optimizer_destroy(void* optimizer) {
  auto* opt = came::capi::AsOptimizer(optimizer);
  if (opt == nullptr) return;
  opt->magic = 0;
  delete opt;
}

int32_t came_optimizer_step(void* optimizer, const came_tensor_ptrs* ptrs,
                            const came_hyper* groups, int32_t num_groups, void* stream,
                            came_step_result* result) {
  return Guard(
      [&] { return came::capi::Step(optimizer, ptrs, groups, num_groups, stream, result); });
}

int32_t came_optimizer_last_result(void* optimizer, came_step_result* result) {
  return Guard([&]() -> int32_t {
    auto* opt = came::capi::AsOptimizer(optimizer);
    if (opt == nullptr)
      return Fail(CAME_INVALID_ARGUMENT, "optimizer is NULL or not an optimizer");
    if (result == nullptr) return Fail(CAME_INVALID_ARGUMENT, "result is NULL");
    const came::capi::Error e = opt->backend->LastResult(result);
    return e.ok() ? CAME_OK : Fail(e);
  });
}

}  // extern "C"

// The TensorSlices that the backends of the C ABI run their phases over (Note [Phases] in
// kernels/cpu_came.h): one whole-tensor slice per came_tensor_desc, pointed at each step's
// came_tensor_ptrs. Header-only, so the CPU and CUDA backends share it wherever they link.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "kernels/capi/came_capi.h"
#include "kernels/cpu_came.h"
#include "kernels/dtype.h"
#include "kernels/geometry.h"

namespace came::capi {

// Returns one whole-tensor slice per (validated) descriptor, with no buffers bound yet.
inline std::vector<TensorSlice> WholeTensorSlices(std::span<const came_tensor_desc> tensors) {
  std::vector<TensorSlice> slices;
  slices.reserve(tensors.size());
  for (const came_tensor_desc& d : tensors) {
    TensorSlice s;
    s.geom = TensorGeometry::FromShape({d.shape, static_cast<size_t>(d.ndim)});
    s.begin = 0;
    s.end = s.geom.numel;
    s.group = d.group;
    s.grad_dtype = static_cast<DType>(d.grad_dtype);
    s.param_dtype = static_cast<DType>(d.param_dtype);
    slices.push_back(s);
  }
  return slices;
}

// Points `s` at these (validated) buffers: a float32 parameter is its own master (no copy to
// refresh), a 16-bit one is refreshed from its master.
inline void BindBuffers(const came_tensor_desc& d, const came_tensor_ptrs& p, TensorSlice& s) {
  s.grad = p.grad;
  if (d.param_dtype == CAME_FLOAT32) {
    s.master = static_cast<float*>(p.param);
    s.param = nullptr;
  } else {
    s.master = p.master;
    s.param = p.param;
  }
  s.exp_avg = p.exp_avg;
  s.exp_avg_sq = p.exp_avg_sq;
  s.exp_avg_sq_row = p.exp_avg_sq_row;
  s.exp_avg_sq_col = p.exp_avg_sq_col;
  s.exp_avg_res_row = p.exp_avg_res_row;
  s.exp_avg_res_col = p.exp_avg_res_col;
}

}  // namespace came::capi

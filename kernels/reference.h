// The double-precision reference implementation of CAME: the oracle for every fast path.
// Written literally from the algorithm (docs/design.md, "The algorithm"), one tensor at a time,
// with no fusion and no cleverness; it calls the shared scalar math in came_math.h with
// T = double.
#pragma once

#include <span>
#include <vector>

#include "kernels/came_math.h"
#include "kernels/geometry.h"

namespace came {

// CAME's state for one tensor in double precision. Factored tensors use exp_avg and the four
// row/column vectors; unfactored ones use exp_avg and exp_avg_sq.
struct ReferenceState {
  std::vector<double> exp_avg;
  std::vector<double> exp_avg_sq;       // unfactored only
  std::vector<double> exp_avg_sq_row;   // factored only: [batch..., n]
  std::vector<double> exp_avg_sq_col;   // factored only: [batch..., m]
  std::vector<double> exp_avg_res_row;  // factored only
  std::vector<double> exp_avg_res_col;  // factored only

  // Returns zero-initialised state for a tensor of this geometry.
  static ReferenceState Zeros(const TensorGeometry& geom);
};

// What one reference step saw (for tests and diagnostics).
struct ReferenceStepInfo {
  double update_rms = 0.0;  // RMS of the preconditioned update before clipping
  double clip_scale = 1.0;  // 1 / max(1, update_rms / clip_threshold)
};

// Applies one CAME step to `param` (numel elements) with gradient `grad`, in place.
// `grad_scale` multiplies the gradient first (global gradient-norm clipping); 1 for none.
ReferenceStepInfo ReferenceStep(const TensorGeometry& geom, const CameHyper& hyper,
                                std::span<double> param, std::span<const double> grad,
                                ReferenceState& state, double grad_scale = 1.0);

}  // namespace came

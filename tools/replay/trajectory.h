// Runs a golden case's inputs through one implementation and returns the trajectory it
// produces (parameters after every step, state after the last), in double for comparison.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu_loops.h"
#include "kernels/dtype.h"
#include "tools/replay/case_io.h"

namespace came {

struct Trajectory {
  std::vector<std::vector<double>> params;            // after each step
  std::map<std::string, std::vector<double>> state;   // after the last step
  std::vector<bool> skipped;  // per step: the kernel skipped it (non-finite gradient)

  // Returns whether every parameter and state value is finite.
  bool finite() const;
};

// Runs the double-precision reference.
Trajectory RunReference(const GoldenCase& c);

// Runs the fused CPU kernels in float32 on `threads` threads, with gradients given to the
// kernel in `grad_dtype` (rounded from the case's values).
// `loops` picks an instruction set's loops (null: the best this CPU runs).
Trajectory RunCpu(const GoldenCase& c, DType grad_dtype = DType::kFloat32, int threads = 2,
                  const cpu::CpuLoops* loops = nullptr);

// Returns a copy of the case whose gradients are rounded to `t` and back (exact for
// float32-representable inputs when t is float32).
GoldenCase RoundGradients(const GoldenCase& c, DType t);

// Returns the case's inputs with `t` as its trajectory: the --out file of came-replay.
GoldenCase WithTrajectory(const GoldenCase& inputs, const Trajectory& t);

// Per-step and final-state errors of `got` against the case's stored trajectory.
struct TrajectoryErrors {
  std::vector<double> param;                 // ParamError per step
  std::map<std::string, double> state;       // StateError per state tensor
  double max_param() const;
  double max_state() const;
};
TrajectoryErrors CompareTrajectory(const GoldenCase& c, const Trajectory& got);

}  // namespace came

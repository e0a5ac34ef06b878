// The expected result of training TestModel: the double reference on the mean gradient.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "kernels/reference.h"
#include "tests/runtime/test_model.h"

namespace came::testing {

// Learning rates per step, as a scheduler would set them (warm-up then constant).
inline std::vector<double> StepLr(int step) {
  const double f = step < 4 ? 0.25 * step : 1.0;
  const auto groups = TestGroups();
  return {groups[0].lr * f, groups[1].lr * f};
}

struct ReferenceRun {
  std::vector<std::vector<double>> params;
  std::vector<ReferenceState> states;
};

// Runs the reference over steps 1..steps on MeanGrad(world, ...), leaving out `skipped`.
inline ReferenceRun RunReferenceModel(int world, int steps, const std::set<int>& skipped = {}) {
  const auto specs = TestModel();
  const auto groups = TestGroups();
  ReferenceRun run;
  run.params = InitialParams(specs);
  for (const auto& s : specs)
    run.states.push_back(ReferenceState::Zeros(TensorGeometry::FromShape(s.shape)));
  for (int step = 1; step <= steps; ++step) {
    if (skipped.count(step)) continue;
    const auto lr = StepLr(step);
    for (size_t t = 0; t < specs.size(); ++t) {
      const TensorGeometry g = TensorGeometry::FromShape(specs[t].shape);
      std::vector<double> grad(g.numel);
      for (int64_t i = 0; i < g.numel; ++i) grad[i] = MeanGrad(world, step, t, i);
      CameHyper h = groups[specs[t].group];
      h.lr = lr[specs[t].group];
      ReferenceStep(g, h, run.params[t], grad, run.states[t]);
    }
  }
  return run;
}

// Returns the state by the golden format's names.
inline std::map<std::string, std::vector<double>> NamedState(const ReferenceState& s) {
  std::map<std::string, std::vector<double>> m;
  m["exp_avg"] = s.exp_avg;
  if (!s.exp_avg_sq.empty()) m["exp_avg_sq"] = s.exp_avg_sq;
  if (!s.exp_avg_sq_row.empty()) {
    m["exp_avg_sq_row"] = s.exp_avg_sq_row;
    m["exp_avg_sq_col"] = s.exp_avg_sq_col;
    m["exp_avg_res_row"] = s.exp_avg_res_row;
    m["exp_avg_res_col"] = s.exp_avg_res_col;
  }
  return m;
}

}  // namespace came::testing

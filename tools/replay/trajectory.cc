#include "tools/replay/trajectory.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu_came.h"
#include "kernels/reference.h"

namespace came {

Trajectory RunReference(const GoldenCase& c) {
  const TensorGeometry geom = TensorGeometry::FromShape(c.shape);
  ReferenceState st = ReferenceState::Zeros(geom);
  std::vector<double> p = c.param0;
  Trajectory out;
  for (int k = 0; k < c.steps; ++k) {
    ReferenceStep(geom, c.hyper, p, c.grads[k], st);
    out.params.push_back(p);
    out.skipped.push_back(false);
  }
  out.state["exp_avg"] = st.exp_avg;
  if (geom.factored) {
    out.state["exp_avg_sq_row"] = st.exp_avg_sq_row;
    out.state["exp_avg_sq_col"] = st.exp_avg_sq_col;
    out.state["exp_avg_res_row"] = st.exp_avg_res_row;
    out.state["exp_avg_res_col"] = st.exp_avg_res_col;
  } else {
    out.state["exp_avg_sq"] = st.exp_avg_sq;
  }
  return out;
}

namespace {

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

Trajectory RunCpu(const GoldenCase& c, DType grad_dtype, int threads, const cpu::CpuLoops* loops) {
  const TensorGeometry geom = TensorGeometry::FromShape(c.shape);
  const int64_t n = geom.numel;
  std::vector<float> master(c.param0.begin(), c.param0.end());
  std::vector<uint8_t> grad(n * DTypeSize(grad_dtype));
  std::vector<float> exp_avg(n, 0.0f), exp_avg_sq(geom.factored ? 0 : n, 0.0f);
  std::vector<float> sq_row(geom.rows(), 0.0f), sq_col(geom.cols(), 0.0f);
  std::vector<float> res_row(geom.rows(), 0.0f), res_col(geom.cols(), 0.0f);

  TensorSlice s;
  s.geom = geom;
  s.begin = 0;
  s.end = n;
  s.grad = grad.data();
  s.grad_dtype = grad_dtype;
  s.master = master.data();
  s.exp_avg = exp_avg.data();
  if (geom.factored) {
    s.exp_avg_sq_row = sq_row.data();
    s.exp_avg_sq_col = sq_col.data();
    s.exp_avg_res_row = res_row.data();
    s.exp_avg_res_col = res_col.data();
  } else {
    s.exp_avg_sq = exp_avg_sq.data();
  }
  CpuCame cpu({s}, threads, loops);
  LocalStepper stepper(cpu);
  const CameHyper groups[1] = {c.hyper};

  Trajectory out;
  for (int k = 0; k < c.steps; ++k) {
    for (int64_t i = 0; i < n; ++i)
      StoreFromFloat(grad.data(), grad_dtype, i, static_cast<float>(c.grads[k][i]));
    out.skipped.push_back(stepper.Step(groups, StepOptions{}).skipped);
    out.params.push_back(ToDouble(master));
  }
  out.state["exp_avg"] = ToDouble(exp_avg);
  if (geom.factored) {
    out.state["exp_avg_sq_row"] = ToDouble(sq_row);
    out.state["exp_avg_sq_col"] = ToDouble(sq_col);
    out.state["exp_avg_res_row"] = ToDouble(res_row);
    out.state["exp_avg_res_col"] = ToDouble(res_col);
  } else {
    out.state["exp_avg_sq"] = ToDouble(exp_avg_sq);
  }
  return out;
}

bool Trajectory::finite() const {
  auto all_finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
  };
  for (const auto& p : params)
    if (!all_finite(p)) return false;
  for (const auto& [name, s] : state)
    if (!all_finite(s)) return false;
  return true;
}

GoldenCase RoundGradients(const GoldenCase& c, DType t) {
  GoldenCase out = c;
  std::vector<uint8_t> buf(DTypeSize(t));
  for (auto& g : out.grads)
    for (double& x : g) {
      StoreFromFloat(buf.data(), t, 0, static_cast<float>(x));
      x = LoadAsFloat(buf.data(), t, 0);
    }
  return out;
}

GoldenCase WithTrajectory(const GoldenCase& inputs, const Trajectory& t) {
  GoldenCase out = inputs;
  out.params = t.params;
  out.state = t.state;
  out.state_shapes = StateShapes(inputs.shape);
  return out;
}

namespace {

// Returns the larger error, NaN when either is NaN.
double MaxError(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return NAN;
  return std::max(a, b);
}

}  // namespace

double TrajectoryErrors::max_param() const {
  double m = 0.0;
  for (double e : param) m = MaxError(m, e);
  return m;
}

double TrajectoryErrors::max_state() const {
  double m = 0.0;
  for (const auto& [name, e] : state) m = MaxError(m, e);
  return m;
}

TrajectoryErrors CompareTrajectory(const GoldenCase& c, const Trajectory& got) {
  TrajectoryErrors e;
  for (size_t k = 0; k < c.params.size() && k < got.params.size(); ++k)
    e.param.push_back(ParamError(got.params[k], c.params[k]));
  for (const auto& [name, ref] : c.state) {
    auto it = got.state.find(name);
    e.state[name] = it == got.state.end() ? INFINITY : StateError(it->second, ref);
  }
  return e;
}

}  // namespace came

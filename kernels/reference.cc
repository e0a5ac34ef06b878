#include "kernels/reference.h"

#include <cmath>

namespace came {
namespace {

// Returns, for each row of a [rows, m] view, the mean of x over the row.
std::vector<double> RowMeans(const std::vector<double>& x, int64_t rows, int64_t m) {
  std::vector<double> out(rows, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    double s = 0.0;
    for (int64_t j = 0; j < m; ++j) s += x[i * m + j];
    out[i] = s / static_cast<double>(m);
  }
  return out;
}

// Returns, for each [n, m] matrix of a batch, the mean of x over n (one value per column).
std::vector<double> ColMeans(const std::vector<double>& x, const TensorGeometry& g) {
  std::vector<double> out(g.batch * g.m, 0.0);
  for (int64_t b = 0; b < g.batch; ++b)
    for (int64_t j = 0; j < g.m; ++j) {
      double s = 0.0;
      for (int64_t i = 0; i < g.n; ++i) s += x[(b * g.n + i) * g.m + j];
      out[b * g.m + j] = s / static_cast<double>(g.n);
    }
  return out;
}

// Updates a factored statistic (row and column EMAs) with the row and column means of x,
// then returns its rsqrt(row / mean(row))[i] * rsqrt(col)[j] for every element.
std::vector<double> UpdateFactored(const std::vector<double>& x, const TensorGeometry& g,
                                   double beta, double one_minus_beta, std::vector<double>& row,
                                   std::vector<double>& col);

// Returns rsqrt(row / mean(row over n))[i] * rsqrt(col)[j] for every element: the
// approximation of 1/sqrt(E[x]) from a factored statistic.
std::vector<double> FactoredRsqrt(const std::vector<double>& row, const std::vector<double>& col,
                                  const TensorGeometry& g) {
  std::vector<double> out(g.numel);
  for (int64_t b = 0; b < g.batch; ++b) {
    double mean_row = 0.0;
    for (int64_t i = 0; i < g.n; ++i) mean_row += row[b * g.n + i];
    mean_row /= static_cast<double>(g.n);
    for (int64_t i = 0; i < g.n; ++i) {
      const double rf = RowFactor(row[b * g.n + i], mean_row);
      for (int64_t j = 0; j < g.m; ++j)
        out[(b * g.n + i) * g.m + j] = rf * ColFactor(col[b * g.m + j]);
    }
  }
  return out;
}

std::vector<double> UpdateFactored(const std::vector<double>& x, const TensorGeometry& g,
                                   double beta, double one_minus_beta, std::vector<double>& row,
                                   std::vector<double>& col) {
  const std::vector<double> row_mean = RowMeans(x, g.rows(), g.m);
  const std::vector<double> col_mean = ColMeans(x, g);
  for (int64_t i = 0; i < g.rows(); ++i) row[i] = Ema(row[i], row_mean[i], beta, one_minus_beta);
  for (int64_t j = 0; j < g.cols(); ++j) col[j] = Ema(col[j], col_mean[j], beta, one_minus_beta);
  return FactoredRsqrt(row, col, g);
}

}  // namespace

ReferenceState ReferenceState::Zeros(const TensorGeometry& geom) {
  ReferenceState s;
  s.exp_avg.assign(geom.numel, 0.0);
  if (geom.factored) {
    s.exp_avg_sq_row.assign(geom.rows(), 0.0);
    s.exp_avg_sq_col.assign(geom.cols(), 0.0);
    s.exp_avg_res_row.assign(geom.rows(), 0.0);
    s.exp_avg_res_col.assign(geom.cols(), 0.0);
  } else {
    s.exp_avg_sq.assign(geom.numel, 0.0);
  }
  return s;
}

ReferenceStepInfo ReferenceStep(const TensorGeometry& g, const CameHyper& hyper,
                                std::span<double> param, std::span<const double> grad,
                                ReferenceState& st, double grad_scale) {
  const StepScalars<double> s = MakeStepScalars<double>(hyper);
  const int64_t numel = g.numel;
  std::vector<double> gs(numel), sq(numel), u(numel);
  for (int64_t k = 0; k < numel; ++k) {
    gs[k] = grad[k] * grad_scale;
    sq[k] = SquarePlusEps(gs[k], s.eps1);
  }

  // Second moment and the preconditioned update u.
  if (g.factored) {
    const std::vector<double> pre = UpdateFactored(sq, g, s.beta2, s.one_minus_beta2,
                                                   st.exp_avg_sq_row, st.exp_avg_sq_col);
    for (int64_t k = 0; k < numel; ++k) u[k] = gs[k] * pre[k];
  } else {
    for (int64_t k = 0; k < numel; ++k) {
      st.exp_avg_sq[k] = Ema(st.exp_avg_sq[k], sq[k], s.beta2, s.one_minus_beta2);
      u[k] = gs[k] * Rsqrt(st.exp_avg_sq[k]);
    }
  }

  // Clip by the RMS of the whole tensor.
  double sum_sq = 0.0;
  for (int64_t k = 0; k < numel; ++k) sum_sq += u[k] * u[k];
  ReferenceStepInfo info;
  info.update_rms = std::sqrt(sum_sq / static_cast<double>(numel));
  info.clip_scale = ClipScale(sum_sq, static_cast<double>(numel), hyper.clip_threshold);
  for (int64_t k = 0; k < numel; ++k) u[k] *= info.clip_scale;

  // Momentum, then the confidence-weighted update.
  for (int64_t k = 0; k < numel; ++k) st.exp_avg[k] = Momentum(st.exp_avg[k], u[k], s);
  std::vector<double> upd(numel);
  if (g.factored) {
    std::vector<double> res(numel);
    for (int64_t k = 0; k < numel; ++k) res[k] = Residual(u[k], st.exp_avg[k], s.eps2);
    const std::vector<double> conf = UpdateFactored(res, g, s.beta3, s.one_minus_beta3,
                                                    st.exp_avg_res_row, st.exp_avg_res_col);
    for (int64_t k = 0; k < numel; ++k) upd[k] = conf[k] * st.exp_avg[k];
  } else {
    upd = st.exp_avg;  // a copy: the momentum itself is never touched by the update
  }

  for (int64_t k = 0; k < numel; ++k) param[k] = ApplyUpdate(param[k], upd[k], s);
  return info;
}

}  // namespace came

// CAME's scalar math, shared by every implementation: the double-precision reference, the
// fused CPU kernels and the CUDA kernels. Each function works on values in registers; the
// implementations differ only in how they load, store and reduce (Note [One place for the
// math]).
//
// Note [One place for the math]
// The per-step scalars (betas, eps, lr, weight decay) are folded once on the host into a
// StepScalars struct (MakeStepScalars) and passed by value to every backend, so CPU and CUDA
// cannot drift. The functions below are templates over the math type T (float for the fast
// paths, double for the reference) and are the only place where an update rule is written.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CAME_HD __host__ __device__ __forceinline__
#else
#define CAME_HD inline
#endif

namespace came {

// CAME's hyperparameters for one parameter group. Defaults are those of the reference
// implementation (came-pytorch 0.1.3); lr has no default there and must be set.
struct CameHyper {
  double lr = 0.0;
  double eps1 = 1e-30;  // added to grad^2 before the factored reduction
  double eps2 = 1e-16;  // added to the squared residual
  double clip_threshold = 1.0;
  double beta1 = 0.9;     // momentum
  double beta2 = 0.999;   // second moment
  double beta3 = 0.9999;  // residual (confidence)
  double weight_decay = 0.0;
};

// The per-step scalars of one parameter group in the math type T, folded on the host.
template <typename T>
struct StepScalars {
  T lr;
  T beta1, one_minus_beta1;
  T beta2, one_minus_beta2;
  T beta3, one_minus_beta3;
  T eps1, eps2;
  T clip_threshold;
  T neg_decay;  // -weight_decay * lr: p += neg_decay * p (decoupled, before the update)
  bool decay;   // weight_decay != 0
};

// Folds a group's hyperparameters into the scalars one step uses.
template <typename T>
StepScalars<T> MakeStepScalars(const CameHyper& h) {
  StepScalars<T> s;
  s.lr = static_cast<T>(h.lr);
  s.beta1 = static_cast<T>(h.beta1);
  s.one_minus_beta1 = static_cast<T>(1.0 - h.beta1);
  s.beta2 = static_cast<T>(h.beta2);
  s.one_minus_beta2 = static_cast<T>(1.0 - h.beta2);
  s.beta3 = static_cast<T>(h.beta3);
  s.one_minus_beta3 = static_cast<T>(1.0 - h.beta3);
  s.eps1 = static_cast<T>(h.eps1);
  s.eps2 = static_cast<T>(h.eps2);
  s.clip_threshold = static_cast<T>(h.clip_threshold);
  s.neg_decay = static_cast<T>(-h.weight_decay * h.lr);
  s.decay = h.weight_decay != 0.0;
  return s;
}

// Returns 1/sqrt(x).
CAME_HD float Rsqrt(float x) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(x);
#else
  return 1.0f / std::sqrt(x);
#endif
}
CAME_HD double Rsqrt(double x) { return 1.0 / sqrt(x); }

// Returns the exponential moving average beta * state + (1 - beta) * value.
template <typename T>
CAME_HD T Ema(T state, T value, T beta, T one_minus_beta) {
  return beta * state + one_minus_beta * value;
}

// Returns a factored statistic's new value from the sum of its `count` inputs; the eps that
// the reference adds to every element before the mean is added to the mean instead
// (sum(x + e) / n == sum(x) / n + e). `scale_sq` is the square of a global gradient scale.
template <typename T>
CAME_HD T EmaOfMean(T state, double sum, double count, double scale_sq, double eps, T beta,
                    T one_minus_beta) {
  const T mean = static_cast<T>(scale_sq * sum / count + eps);
  return Ema<T>(state, mean, beta, one_minus_beta);
}

// Returns the squared gradient plus eps1, the input of the second-moment statistics.
template <typename T>
CAME_HD T SquarePlusEps(T g, T eps) {
  return g * g + eps;
}

// Returns the row factor rsqrt(r / mean(r)) of a factored second moment (or residual).
template <typename T>
CAME_HD T RowFactor(T r, T mean_r) {
  return Rsqrt(r / mean_r);
}

// Returns the column factor rsqrt(c).
template <typename T>
CAME_HD T ColFactor(T c) {
  return Rsqrt(c);
}

// Returns the scale that clips an update of RMS sqrt(sum_sq / numel) to clip_threshold:
// 1 / max(1, rms / d).
CAME_HD double ClipScale(double sum_sq, double numel, double clip_threshold) {
  const double ratio = sqrt(sum_sq / numel) / clip_threshold;
  return ratio > 1.0 ? 1.0 / ratio : 1.0;
}

// Returns the gradient scale of clip_grad_norm_: min(1, max_norm / (norm + 1e-6)), or 1 when
// max_norm <= 0.
CAME_HD double GradNormScale(double grad_norm, double max_grad_norm) {
  if (max_grad_norm <= 0.0) return 1.0;
  const double coef = max_grad_norm / (grad_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

// Returns the new momentum b1 * m + (1 - b1) * u.
template <typename T>
CAME_HD T Momentum(T m, T u, const StepScalars<T>& s) {
  return Ema<T>(m, u, s.beta1, s.one_minus_beta1);
}

// Returns the squared residual (u - m)^2 + eps2 with the NEW momentum m.
template <typename T>
CAME_HD T Residual(T u, T m, T eps2) {
  const T d = u - m;
  return d * d + eps2;
}

// Returns the parameter after decoupled weight decay and the update `upd`:
// p + (-wd*lr) * p, then minus lr * upd.
template <typename T>
CAME_HD T ApplyUpdate(T p, T upd, const StepScalars<T>& s) {
  if (s.decay) p = p + s.neg_decay * p;
  return p - s.lr * upd;
}

}  // namespace came

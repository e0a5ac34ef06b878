#include "kernels/hyper_check.h"

#include <cmath>
#include <sstream>

namespace came {
namespace {

std::string Got(const char* name, double v) {
  std::ostringstream out;
  out.precision(17);
  out << ", got " << name << "=" << v;
  return out.str();
}

}  // namespace

std::string HyperError(const CameHyper& h) {
  const struct {
    const char* name;
    double value;
  } fields[] = {{"lr", h.lr},       {"eps1", h.eps1},   {"eps2", h.eps2},
                {"clip_threshold", h.clip_threshold}, {"beta1", h.beta1},
                {"beta2", h.beta2}, {"beta3", h.beta3}, {"weight_decay", h.weight_decay}};
  for (const auto& f : fields)
    if (!std::isfinite(f.value)) return "hyperparameters must be finite" + Got(f.name, f.value);
  if (h.lr < 0) return "lr must be >= 0" + Got("lr", h.lr);
  if (!(h.eps1 > 0)) return "eps must be > 0" + Got("eps1", h.eps1);
  if (!(h.eps2 > 0)) return "eps must be > 0" + Got("eps2", h.eps2);
  if (!(h.clip_threshold > 0))
    return "clip_threshold must be > 0" + Got("clip_threshold", h.clip_threshold);
  const struct {
    const char* name;
    double value;
  } betas[] = {{"beta1", h.beta1}, {"beta2", h.beta2}, {"beta3", h.beta3}};
  for (const auto& b : betas)
    if (b.value < 0 || b.value >= 1) return "betas must be in [0, 1)" + Got(b.name, b.value);
  if (h.weight_decay < 0) return "weight_decay must be >= 0" + Got("weight_decay", h.weight_decay);
  return "";
}

}  // namespace came

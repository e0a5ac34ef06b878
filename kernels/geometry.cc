#include "kernels/geometry.h"

#include <optional>

#include "kernels/dtype.h"

namespace came {

TensorGeometry TensorGeometry::FromShape(std::span<const int64_t> shape) {
  TensorGeometry g;
  g.numel = 1;
  for (int64_t d : shape) g.numel *= d;
  g.factored = shape.size() >= 2;
  if (g.factored) {
    g.m = shape[shape.size() - 1];
    g.n = shape[shape.size() - 2];
    g.batch = g.numel / (g.n * g.m);
  } else {
    g.batch = 1;
    g.n = 1;
    g.m = g.numel;
  }
  return g;
}

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::optional<DType> ParseDType(std::string_view name) {
  if (name == "float32" || name == "fp32" || name == "float") return DType::kFloat32;
  if (name == "bfloat16" || name == "bf16") return DType::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return DType::kFloat16;
  return std::nullopt;
}

}  // namespace came

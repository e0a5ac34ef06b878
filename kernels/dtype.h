// Element types of parameters and gradients, and branch-free conversions between float and
// the 16-bit formats. The conversions are plain integer and float arithmetic so that the
// CPU loops vectorise them and CUDA code can call them too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "kernels/came_math.h"

namespace came {

enum class DType : uint8_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Returns the size of one element in bytes.
constexpr size_t DTypeSize(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Returns the canonical name ("float32", "bfloat16", "float16").
constexpr std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

// Parses a dtype name; accepts the torch spellings too ("fp32", "bf16", "half", ...).
std::optional<DType> ParseDType(std::string_view name);

CAME_HD uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
CAME_HD float BitsFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// Converts bfloat16 bits to float (exact).
CAME_HD float BFloat16ToFloat(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

// Converts float to bfloat16 bits, rounding to nearest even; NaN stays NaN.
CAME_HD uint16_t FloatToBFloat16(float f) {
  const uint32_t u = FloatBits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(is_nan ? ((u >> 16) | 0x40u) : rounded);
}

// Converts IEEE half bits to float (exact), without branches on the value.
CAME_HD float HalfToFloat(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal numbers and inf/NaN: move the exponent and mantissa into place and rescale.
  const float normalized = BitsFloat((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormal numbers: build 0.5 + m * 2^-24 and subtract the 0.5.
  const float denormalized = BitsFloat((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits =
      two_w < (1u << 27) ? FloatBits(denormalized) : FloatBits(normalized);
  return BitsFloat(sign | bits);
}

// Converts float to IEEE half bits, rounding to nearest even; overflow becomes inf, NaN stays
// NaN.
CAME_HD uint16_t FloatToHalf(float f) {
  const uint32_t w = FloatBits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;  // saturates large values to inf
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = BitsFloat((bias >> 1) + 0x07800000u) + base;  // rounds the mantissa in the FPU
  const uint32_t bits = FloatBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// Loads element i of a buffer of dtype t as float.
CAME_HD float LoadAsFloat(const void* data, DType t, size_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(data)[i];
    case DType::kBFloat16: return BFloat16ToFloat(static_cast<const uint16_t*>(data)[i]);
    case DType::kFloat16: return HalfToFloat(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0f;
}

// Stores a float as element i of a buffer of dtype t.
CAME_HD void StoreFromFloat(void* data, DType t, size_t i, float v) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(data)[i] = v; break;
    case DType::kBFloat16: static_cast<uint16_t*>(data)[i] = FloatToBFloat16(v); break;
    case DType::kFloat16: static_cast<uint16_t*>(data)[i] = FloatToHalf(v); break;
  }
}

}  // namespace came

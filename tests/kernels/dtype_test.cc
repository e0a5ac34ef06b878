// The 16-bit conversions of kernels/dtype.h against plain scalar conversions written here
// from the IEEE definitions (in double arithmetic, exact for these formats): exhaustive over
// every half and bfloat16 bit pattern for the widening, and over every rounding boundary
// plus a few million random floats for the narrowing.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace came {
namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Returns the value of IEEE binary16 bits, by the definition.
double HalfValue(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const double s = sign ? -1.0 : 1.0;
  if (exp == 0x1F) return mant ? std::numeric_limits<double>::quiet_NaN() : s * INFINITY;
  if (exp == 0) return s * std::ldexp(mant, -24);
  return s * std::ldexp(1024 + mant, exp - 25);
}

// Rounds a finite x to nearest even on a grid with `mant_bits` stored mantissa bits and
// minimum normal exponent `emin`, or returns +-inf at or beyond `overflow` (the first value
// that rounds to infinity: max + half an ulp, ties go to even = inf).
double RoundToFormat(double x, int mant_bits, int emin, double overflow) {
  if (x == 0) return x;
  int e;
  std::frexp(std::fabs(x), &e);  // |x| = f * 2^e, f in [0.5, 1)
  const int exponent = std::max(e - 1, emin);
  const double ulp = std::ldexp(1.0, exponent - mant_bits);
  const double r = std::nearbyint(x / ulp) * ulp;  // exact: x is a float, ulp a power of 2
  if (std::fabs(r) >= overflow) return std::copysign(INFINITY, x);
  return r;
}

// Returns the half bits of a value exactly representable in binary16 (or +-inf).
uint16_t HalfBitsOf(double r) {
  const uint16_t sign = std::signbit(r) ? 0x8000 : 0;
  const double a = std::fabs(r);
  if (std::isinf(a)) return sign | 0x7C00;
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(a * std::ldexp(1.0, 24));
  int e;
  const double f = std::frexp(a, &e);  // a = f * 2^e
  const int mant = static_cast<int>(f * 2048) - 1024;
  return sign | static_cast<uint16_t>(((e - 1 + 15) << 10) | mant);
}

// The reference narrowing conversions; NaN becomes a quiet NaN of the same sign.
uint16_t RefFloatToHalf(float f) {
  if (std::isnan(f)) return (std::signbit(f) ? 0x8000 : 0) | 0x7E00;
  const double max_plus_half_ulp = 65504.0 + 16.0;
  return HalfBitsOf(RoundToFormat(f, 10, -14, max_plus_half_ulp));
}
uint16_t RefFloatToBFloat16(float f) {
  if (std::isnan(f)) return static_cast<uint16_t>((Bits(f) >> 16) | 0x40);
  const double max_plus_half_ulp = std::ldexp(255.0 + 0.5, 127 - 7);  // (2 - 2^-7 + 2^-8) 2^127
  const double r = RoundToFormat(f, 7, -126, max_plus_half_ulp);
  const uint32_t u = Bits(static_cast<float>(r));
  EXPECT_EQ(u & 0xFFFF, 0u) << "not a bfloat16 value: " << r;
  return static_cast<uint16_t>(u >> 16);
}

TEST(DTypeTest, HalfToFloatIsExactForEveryBitPattern) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    const double want = HalfValue(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
      // The payload survives (the quiet bit may be set).
      EXPECT_EQ((Bits(got) >> 13) & 0x1FF, h & 0x1FF) << std::hex << h;
      continue;
    }
    ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
    ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;  // -0 stays -0
  }
}

TEST(DTypeTest, BFloat16ToFloatIsExactForEveryBitPattern) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float got = BFloat16ToFloat(static_cast<uint16_t>(h));
    ASSERT_EQ(Bits(got), h << 16) << std::hex << h;
  }
}

// Every float that straddles a rounding boundary of a 16-bit format: for each 16-bit value,
// the float itself, the midpoint to the next value, and the floats just around both.
std::vector<float> BoundaryFloats(bool half) {
  std::vector<float> out;
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float v = half ? HalfToFloat(static_cast<uint16_t>(h))
                         : BFloat16ToFloat(static_cast<uint16_t>(h));
    if (!std::isfinite(v)) continue;
    const float next = half ? HalfToFloat(static_cast<uint16_t>(h + 1))
                            : BFloat16ToFloat(static_cast<uint16_t>(h + 1));
    // The midpoint toward the next larger magnitude (for the largest finite value: the
    // overflow boundary, max + half an ulp).
    double mid;
    if (std::isfinite(next) && std::signbit(next) == std::signbit(v) && h != 0x7FFF && h != 0xFFFF)
      mid = (static_cast<double>(v) + next) / 2;
    else
      mid = static_cast<double>(v) * (half ? (65504.0 + 16.0) / 65504.0 : 1.0 + 1.0 / 512);
    for (double c : {static_cast<double>(v), mid}) {
      const float f = static_cast<float>(c);
      if (static_cast<double>(f) != c) continue;  // a midpoint below float's subnormals
      const uint32_t b = Bits(f);
      for (uint32_t d : {0u, 1u, 2u}) {
        out.push_back(FromBits(b + d));
        if (b >= d) out.push_back(FromBits(b - d));
      }
    }
  }
  return out;
}

std::vector<float> SpecialFloats() {
  const float inf = std::numeric_limits<float>::infinity();
  return {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
          -std::numeric_limits<float>::quiet_NaN(), FromBits(0x7F800001),  // signalling NaN
          FromBits(0xFFC01234), std::numeric_limits<float>::max(),
          std::numeric_limits<float>::lowest(), std::numeric_limits<float>::min(),
          std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
          65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e10f, -1e10f, 5.96e-8f, 2.98e-8f,
          2.9802322e-08f, 1e-30f};
}

std::vector<float> RandomFloats(size_t count, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::vector<float> out(count);
  for (size_t i = 0; i < count; ++i) {
    // Half uniform bit patterns (every exponent), half values near the 16-bit range.
    out[i] = i % 2 ? FromBits(rng())
                   : std::ldexp(std::uniform_real_distribution<float>(-1, 1)(rng),
                                static_cast<int>(rng() % 48) - 30);
  }
  return out;
}

template <typename Fn, typename Ref>
void ExpectSameBits(const std::vector<float>& inputs, Fn fn, Ref ref, const char* what) {
  int failures = 0;
  for (float f : inputs) {
    const uint16_t got = fn(f), want = ref(f);
    if (got != want && ++failures <= 10)
      ADD_FAILURE() << what << "(" << f << " = 0x" << std::hex << Bits(f) << ") = 0x" << got
                    << ", want 0x" << want;
  }
  EXPECT_EQ(failures, 0) << what << " of " << inputs.size() << " inputs";
}

TEST(DTypeTest, FloatToHalfRoundsToNearestEven) {
  ExpectSameBits(BoundaryFloats(true), FloatToHalf, RefFloatToHalf, "FloatToHalf");
  ExpectSameBits(SpecialFloats(), FloatToHalf, RefFloatToHalf, "FloatToHalf");
  ExpectSameBits(RandomFloats(3'000'000, 1), FloatToHalf, RefFloatToHalf, "FloatToHalf");
}

TEST(DTypeTest, FloatToBFloat16RoundsToNearestEven) {
  ExpectSameBits(BoundaryFloats(false), FloatToBFloat16, RefFloatToBFloat16, "FloatToBFloat16");
  ExpectSameBits(SpecialFloats(), FloatToBFloat16, RefFloatToBFloat16, "FloatToBFloat16");
  ExpectSameBits(RandomFloats(3'000'000, 2), FloatToBFloat16, RefFloatToBFloat16,
                 "FloatToBFloat16");
}

TEST(DTypeTest, NarrowingSpotChecks) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // the tie goes to even: infinity
  EXPECT_EQ(FloatToHalf(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);   // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);   // tie to even: zero
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);   // 1.5 ulp: tie to even, 2
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even: 1
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie to even: up
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);
  EXPECT_EQ(FloatToBFloat16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(FromBits(0x7F800001)))));
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(FromBits(0x7F800001)))));
}

TEST(DTypeTest, LoadAndStoreRoundTrip) {
  for (DType t : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    std::vector<uint8_t> buf(4 * DTypeSize(t));
    const float values[] = {1.5f, -0.25f, 3.0f, 1024.0f};  // exact in every dtype
    for (int i = 0; i < 4; ++i) StoreFromFloat(buf.data(), t, i, values[i]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(LoadAsFloat(buf.data(), t, i), values[i]) << i;
  }
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
}

TEST(DTypeTest, ParseDTypeNames) {
  const std::pair<const char*, DType> kNames[] = {
      {"float32", DType::kFloat32}, {"fp32", DType::kFloat32},   {"float", DType::kFloat32},
      {"bfloat16", DType::kBFloat16}, {"bf16", DType::kBFloat16}, {"float16", DType::kFloat16},
      {"fp16", DType::kFloat16},    {"half", DType::kFloat16}};
  for (const auto& [name, t] : kNames) {
    const auto got = ParseDType(name);
    ASSERT_TRUE(got.has_value()) << name;
    EXPECT_EQ(*got, t) << name;
  }
  for (DType t : {DType::kFloat32, DType::kBFloat16, DType::kFloat16})
    EXPECT_EQ(ParseDType(DTypeName(t)), t) << DTypeName(t);
  for (const char* bad : {"", "Float32", "FP16", "float64", "int8", "bfloat", " fp32", "fp32 "})
    EXPECT_FALSE(ParseDType(bad).has_value()) << "\"" << bad << "\"";
}

}  // namespace
}  // namespace came

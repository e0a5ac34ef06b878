#include "runtime/comm/host_reduce.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"

namespace came::comm {
namespace {

// Wraps on overflow for the integer types instead of invoking undefined behaviour.
template <typename T>
T Add(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}

// divisor > 1 divides each sum (the last hop of an average), in the same pass.
template <typename T>
void ReduceTyped(T* out, const T* a, const T* b, size_t n, bool max, int divisor) {
  if (max) {
    for (size_t i = 0; i < n; ++i) out[i] = std::max(a[i], b[i]);
  } else if (divisor == 1) {
    for (size_t i = 0; i < n; ++i) out[i] = Add(a[i], b[i]);
  } else {
    const T d = static_cast<T>(divisor);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(Add(a[i], b[i]) / d);
  }
}

// 16-bit values are added in float; an average's sum is divided before it is rounded back.
template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void Reduce16(uint16_t* out, const uint16_t* a, const uint16_t* b, size_t n, bool max,
              int divisor) {
  const float d = static_cast<float>(divisor);
  for (size_t i = 0; i < n; ++i) {
    const float x = Load(a[i]);
    const float y = Load(b[i]);
    out[i] = Store(max ? std::max(x, y) : divisor == 1 ? x + y : (x + y) / d);
  }
}

template <typename T>
void DivideTyped(T* buf, size_t n, int divisor) {
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<T>(buf[i] / static_cast<T>(divisor));
}

template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void Divide16(uint16_t* buf, size_t n, int divisor) {
  const float d = static_cast<float>(divisor);
  for (size_t i = 0; i < n; ++i) buf[i] = Store(Load(buf[i]) / d);
}

}  // namespace

absl::Status CheckReduceOp(ElemType type, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMax:
    case ReduceOp::kAvg: break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown reduce op ", static_cast<int>(op)));
  }
  if (ElemSize(type) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown element type ", static_cast<int>(type)));
  }
  return absl::OkStatus();
}

void ReduceElements(void* out, const void* a, const void* b, size_t count, ElemType type,
                    ReduceOp op, int divisor) {
  const bool max = op == ReduceOp::kMax;
  switch (type) {
    case ElemType::kFloat32:
      return ReduceTyped(static_cast<float*>(out), static_cast<const float*>(a),
                         static_cast<const float*>(b), count, max, divisor);
    case ElemType::kFloat64:
      return ReduceTyped(static_cast<double*>(out), static_cast<const double*>(a),
                         static_cast<const double*>(b), count, max, divisor);
    case ElemType::kFloat16:
      return Reduce16<HalfToFloat, FloatToHalf>(static_cast<uint16_t*>(out),
                                                static_cast<const uint16_t*>(a),
                                                static_cast<const uint16_t*>(b), count, max, divisor);
    case ElemType::kBFloat16:
      return Reduce16<BFloat16ToFloat, FloatToBFloat16>(
          static_cast<uint16_t*>(out), static_cast<const uint16_t*>(a),
          static_cast<const uint16_t*>(b), count, max, divisor);
    case ElemType::kInt32:
      return ReduceTyped(static_cast<int32_t*>(out), static_cast<const int32_t*>(a),
                         static_cast<const int32_t*>(b), count, max, divisor);
    case ElemType::kInt64:
      return ReduceTyped(static_cast<int64_t*>(out), static_cast<const int64_t*>(a),
                         static_cast<const int64_t*>(b), count, max, divisor);
    case ElemType::kUInt8:
      return ReduceTyped(static_cast<uint8_t*>(out), static_cast<const uint8_t*>(a),
                         static_cast<const uint8_t*>(b), count, max, divisor);
  }
}

void DivideInPlace(void* buf, size_t count, ElemType type, int divisor) {
  switch (type) {
    case ElemType::kFloat32: return DivideTyped(static_cast<float*>(buf), count, divisor);
    case ElemType::kFloat64: return DivideTyped(static_cast<double*>(buf), count, divisor);
    case ElemType::kFloat16:
      return Divide16<HalfToFloat, FloatToHalf>(static_cast<uint16_t*>(buf), count, divisor);
    case ElemType::kBFloat16:
      return Divide16<BFloat16ToFloat, FloatToBFloat16>(static_cast<uint16_t*>(buf), count,
                                                        divisor);
    case ElemType::kInt32: return DivideTyped(static_cast<int32_t*>(buf), count, divisor);
    case ElemType::kInt64: return DivideTyped(static_cast<int64_t*>(buf), count, divisor);
    case ElemType::kUInt8: return DivideTyped(static_cast<uint8_t*>(buf), count, divisor);
  }
}

}  // namespace came::comm

// Element types a tensor can hold, and the 16-bit float formats checkpoints use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace g4 {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, I64, U8, Bool, I16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool is_floating(DType t);

// bfloat16 storage; conversion from float rounds to nearest even (as torch does).
struct bf16 {
  uint16_t bits = 0;
  static bf16 from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays NaN
      r.bits = static_cast<uint16_t>((u >> 16) | 0x40u);
      return r;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = static_cast<uint16_t>(u >> 16);
    return r;
  }
  float to_float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// IEEE half precision, load-only (some checkpoints ship f16).
struct f16 {
  uint16_t bits = 0;
  float to_float() const;
  static f16 from_float(float f);
};

// Maps a C++ element type to its DType tag.
template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::BF16; };
template <> struct DTypeOf<f16> { static constexpr DType value = DType::F16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };

}  // namespace g4

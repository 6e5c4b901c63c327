#include "core/random.h"

#include <cmath>

#include "core/device_memory.h"
#include "core/philox.h"

namespace g4 {

namespace {
// Streams keep the three generators from reusing each other's numbers for the same seed.
constexpr uint64_t kNormalStream = 0, kUniformStream = 1, kIntStream = 2;

template <class Draw>
Tensor fill_float(const Shape& shape, DType dtype, const char* what, Draw draw) {
  G4_CHECK(dtype == DType::F32 || dtype == DType::F64, what, ": dtype ", dtype_name(dtype),
           " not supported (f32 or f64)");
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  if (dtype == DType::F32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(draw(i));
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = draw(i);
  }
  return t;
}
}  // namespace

Tensor randn(const Shape& shape, uint64_t seed, DType dtype, double std) {
  return fill_float(shape, dtype, "randn", [&](int64_t i) {
    return std * static_cast<double>(philox_normal(seed, kNormalStream, static_cast<uint64_t>(i)));
  });
}

Tensor rand_uniform(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype) {
  return fill_float(shape, dtype, "rand_uniform", [&](int64_t i) {
    return lo + (hi - lo) * static_cast<double>(philox_uniform(seed, kUniformStream, static_cast<uint64_t>(i)));
  });
}

Tensor randint(const Shape& shape, uint64_t seed, int64_t lo, int64_t hi, DType dtype) {
  G4_CHECK(hi > lo, "randint: empty range [", lo, ", ", hi, ")");
  G4_CHECK(dtype == DType::I32 || dtype == DType::I64, "randint: dtype ", dtype_name(dtype),
           " not supported (i32 or i64)");
  Tensor t = Tensor::empty(shape, dtype);
  const uint64_t range = static_cast<uint64_t>(hi - lo);
  for (int64_t i = 0; i < t.numel(); ++i) {
    // Two 32-bit draws make a 64-bit one; the modulo bias is irrelevant for test-sized ranges.
    const Philox4 r = philox4x32(seed, static_cast<uint64_t>(i), kIntStream);
    const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    const int64_t v = lo + static_cast<int64_t>(bits % range);
    if (dtype == DType::I32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
    } else {
      t.data<int64_t>()[i] = v;
    }
  }
  return t;
}

}  // namespace g4

namespace g4 {

void fill_philox_normal(Tensor& t, uint64_t seed, uint64_t stream, double std) {
  G4_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64 || t.dtype() == DType::BF16,
           "fill_philox_normal: ", t.describe(), " is not f32, f64 or bf16");
  if (t.device() == Device::CUDA) {
#ifdef G4_WITH_CUDA
    detail::device_fill_philox_normal(t, seed, stream, std);
#endif
    return;
  }
  // Each value is rounded to f32 first, then to the tensor's dtype: the same numbers as a model
  // initialised in f32 and converted. Element i depends on i alone (a counter-based generator), so
  // the threads split the range without changing a bit (billions of weights: minutes on one core).
  const int64_t n = t.numel();
  const auto fill = [&](auto* p, auto convert) {
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 16))
    for (int64_t i = 0; i < n; ++i)
      p[i] = convert(static_cast<float>(std * philox_normal(seed, stream, static_cast<uint64_t>(i))));
  };
  switch (t.dtype()) {
    case DType::F32: fill(t.data<float>(), [](float v) { return v; }); break;
    case DType::F64: fill(t.data<double>(), [](float v) { return static_cast<double>(v); }); break;
    default: fill(t.data<bf16>(), [](float v) { return bf16::from_float(v); }); break;
  }
}

}  // namespace g4

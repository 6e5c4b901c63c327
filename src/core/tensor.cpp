#include "core/tensor.h"

#include "core/device_memory.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace g4 {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t normalize_dim(const char* op, const Shape& shape, int64_t dim) {
  const int64_t rank = static_cast<int64_t>(shape.size());
  const int64_t d = dim < 0 ? dim + rank : dim;
  G4_CHECK(d >= 0 && d < rank, op, ": dimension ", dim, " out of range for shape ", shape_str(shape));
  return d;
}

int64_t outer_size(const Shape& s, int64_t d) {
  int64_t n = 1;
  for (int64_t i = 0; i < d; ++i) n *= s[i];
  return n;
}
int64_t inner_size(const Shape& s, int64_t d) {
  int64_t n = 1;
  for (size_t i = static_cast<size_t>(d) + 1; i < s.size(); ++i) n *= s[i];
  return n;
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
std::atomic<int64_t> g_current{0}, g_peak{0};

// 64-byte alignment suits AVX-512 loads and BLAS.
std::shared_ptr<void> cpu_alloc(size_t bytes) {
  const size_t rounded = ((bytes + 63) / 64) * 64;
  const size_t size = rounded == 0 ? 64 : rounded;
  void* p = std::aligned_alloc(64, size);
  G4_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  const int64_t now = g_current.fetch_add(static_cast<int64_t>(size)) + static_cast<int64_t>(size);
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return std::shared_ptr<void>(p, [size](void* q) {
    std::free(q);
    g_current.fetch_sub(static_cast<int64_t>(size));
  });
}

std::shared_ptr<void> device_storage(size_t bytes) {
#ifdef G4_WITH_CUDA
  return detail::device_alloc(bytes);
#else
  (void)bytes;
  G4_FAIL("this build of g4 has no CUDA backend (built without nvcc): cannot create a GPU tensor");
#endif
}

// Copies between any devices; compiled to plain memcpy without the CUDA backend (where no tensor
// can live on a GPU).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
#ifdef G4_WITH_CUDA
  if (dst_device == Device::CUDA || src_device == Device::CUDA) {
    detail::device_copy(dst, dst_device, src, src_device, bytes);
    return;
  }
#endif
  (void)dst_device;
  (void)src_device;
  if (bytes) std::memcpy(dst, src, bytes);
}
}  // namespace

MemoryStats host_memory_stats() { return MemoryStats{g_current.load(), g_peak.load()}; }
void reset_host_memory_peak() { g_peak.store(g_current.load()); }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) G4_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = device == Device::CUDA ? device_storage(t.nbytes()) : cpu_alloc(t.nbytes());
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::CUDA) {
#ifdef G4_WITH_CUDA
    detail::device_zero(t.raw(), t.nbytes());
#endif
  } else {
    std::memset(t.raw(), 0, t.nbytes());
  }
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype);
  t.fill(value);
  return device == Device::CPU ? t : t.to(device);
}

Tensor Tensor::wrap(std::shared_ptr<void> owner, void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  // Alias the owner's control block but point at `data`.
  t.storage_ = std::shared_ptr<void>(owner, data);
  return t;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  if (d < 0) d += n;
  G4_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for tensor ", describe());
  return shape_[static_cast<size_t>(d)];
}

void Tensor::check_type(DType want) const {
  G4_CHECK(defined(), "use of an undefined tensor");
  const bool ok = dtype_ == want || (want == DType::U8 && dtype_ == DType::Bool);
  G4_CHECK(ok, "tensor has dtype ", dtype_name(dtype_), ", accessed as ", dtype_name(want));
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      G4_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    G4_CHECK(known > 0 && numel() % known == 0, "reshape of ", describe(), " to ", shape_str(shape));
    s[static_cast<size_t>(infer)] = numel() / known;
  }
  G4_CHECK(shape_numel(s) == numel(), "reshape of ", describe(), " to ", shape_str(shape), ": element counts differ");
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice0(int64_t start, int64_t length) const {
  G4_CHECK(dim() >= 1, "slice0 of a scalar");
  G4_CHECK(start >= 0 && length >= 0 && start + length <= shape_[0], "slice0 [", start, ", ", start + length,
           ") out of range for ", describe());
  Tensor t = *this;
  const int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  t.offset_ += static_cast<size_t>(start * row) * dtype_size(dtype_);
  t.shape_[0] = length;
  return t;
}

Tensor Tensor::select0(int64_t index) const {
  Tensor t = slice0(index, 1);
  t.shape_.erase(t.shape_.begin());
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  copy_bytes(t.raw(), device_, raw(), device_, nbytes());
  return t;
}

Tensor Tensor::to(Device device) const {
  G4_CHECK(defined(), "to(): undefined tensor");
  Tensor t = empty(shape_, dtype_, device);
  copy_bytes(t.raw(), device, raw(), device_, nbytes());
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  G4_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from: ", src.describe(), " into ", describe());
  copy_bytes(raw(), device_, src.raw(), src.device_, nbytes());
}

double element_as_double(const Tensor& t, int64_t i) {
  G4_CHECK(t.device() == Device::CPU, "reading elements of ", t.describe(), " on the GPU: copy it to the CPU first");
  const void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::BF16: return static_cast<const bf16*>(p)[i].to_float();
    case DType::F16: return static_cast<const f16*>(p)[i].to_float();
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::I16: return static_cast<const int16_t*>(p)[i];
    case DType::U8:
    case DType::Bool: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

int64_t element_as_int(const Tensor& t, int64_t i) {
  G4_CHECK(t.device() == Device::CPU, "reading elements of ", t.describe(), " on the GPU: copy it to the CPU first");
  switch (t.dtype()) {
    case DType::I32: return static_cast<const int32_t*>(t.raw())[i];
    case DType::I64: return static_cast<const int64_t*>(t.raw())[i];
    case DType::U8:
    case DType::Bool: return static_cast<const uint8_t*>(t.raw())[i];
    default: return static_cast<int64_t>(element_as_double(t, i));
  }
}

namespace {
void set_element(Tensor& t, int64_t i, double v) {
  void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::BF16: static_cast<bf16*>(p)[i] = bf16::from_float(static_cast<float>(v)); break;
    case DType::F16: static_cast<f16*>(p)[i] = f16::from_float(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::I16: static_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case DType::U8:
    case DType::Bool: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
  }
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  G4_CHECK(defined(), "to(): undefined tensor");
  if (dtype == dtype_) return clone();
  Tensor t = empty(shape_, dtype, device_);
  if (device_ == Device::CUDA) {
#ifdef G4_WITH_CUDA
    detail::device_convert(*this, t);
#endif
    return t;
  }
  const int64_t n = numel();
  if (dtype_ == DType::I64 && dtype == DType::I32) {
    const int64_t* s = data<int64_t>();
    int32_t* d = t.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<int32_t>(s[i]);
  } else if (dtype_ == DType::BF16 && dtype == DType::F32) {
    const bf16* s = data<bf16>();
    float* d = t.data<float>();
    for (int64_t i = 0; i < n; ++i) d[i] = s[i].to_float();
  } else if (dtype_ == DType::F32 && dtype == DType::BF16) {
    const float* s = data<float>();
    bf16* d = t.data<bf16>();
    for (int64_t i = 0; i < n; ++i) d[i] = bf16::from_float(s[i]);
  } else if (!is_floating(dtype_) && !is_floating(dtype)) {
    for (int64_t i = 0; i < n; ++i) set_element(t, i, static_cast<double>(element_as_int(*this, i)));
  } else {
    for (int64_t i = 0; i < n; ++i) set_element(t, i, element_as_double(*this, i));
  }
  return t;
}

void Tensor::fill(double value) {
  if (device_ == Device::CUDA) {
    Tensor host = empty(shape_, dtype_);
    host.fill(value);
    copy_from(host);
    return;
  }
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) set_element(*this, i, value);
}

double Tensor::item() const {
  G4_CHECK(numel() == 1, "item() of ", describe(), ": needs exactly one element");
  if (device_ == Device::CUDA) return element_as_double(to(Device::CPU), 0);
  return element_as_double(*this, 0);
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + (device_ == Device::CUDA ? "@cuda" : "");
}

}  // namespace g4

#ifndef G4_WITH_CUDA
// Without the CUDA backend there is no GPU: nothing to count, wait for or release.
namespace g4 {
bool cuda_available() { return false; }
std::string cuda_device_name() { return {}; }
int cuda_device_count() { return 0; }
void select_cuda_device(int device) {
  G4_FAIL("select_cuda_device(", device, "): this g4 was built without the CUDA backend");
}
DeviceMemoryStats device_memory_stats() { return {}; }
int64_t device_free_bytes() { return 0; }
void reset_device_memory_peak() {}
void device_synchronize() {}
void release_cached_device_memory() {}
void run_side_by_side(const std::function<void()>& side, const std::function<void()>& main) {
  side();
  main();
}
}  // namespace g4
#endif

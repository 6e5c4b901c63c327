// Tensor: a shape, a dtype, a device and contiguous storage shared between cheap views.
// Views (reshape, slicing along the first dimension) alias the storage; everything that
// would need strides (transposes, narrowing inner dimensions) is an op that copies.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace g4 {

enum class Device : uint8_t { CPU, CUDA };

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);
// `dim` counted from the end when negative; out of range is an error naming `op` and the shape.
int64_t normalize_dim(const char* op, const Shape& shape, int64_t dim);
// Elements before / after dimension d (a [outer, s[d], inner] view of the shape).
int64_t outer_size(const Shape& s, int64_t d);
int64_t inner_size(const Shape& s, int64_t d);

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::CPU);
  // Wraps memory owned elsewhere (an mmap'ed file); `owner` keeps it alive.
  static Tensor wrap(std::shared_ptr<void> owner, void* data, const Shape& shape, DType dtype,
                     Device device = Device::CPU);
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape) {
    G4_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
             " values for shape ", shape_str(shape));
    Tensor t = empty(shape, DTypeOf<T>::value);
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::CPU) {
    return full({}, value, dtype, device);
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() { return static_cast<char*>(storage_.get()) + offset_; }
  const void* raw() const { return static_cast<const char*>(storage_.get()) + offset_; }
  template <class T>
  T* data() {
    check_type(DTypeOf<T>::value);
    return static_cast<T*>(raw());
  }
  template <class T>
  const T* data() const {
    check_type(DTypeOf<T>::value);
    return static_cast<const T*>(raw());
  }

  // Views sharing storage.
  Tensor reshape(const Shape& shape) const;  // one dimension may be -1
  Tensor slice0(int64_t start, int64_t length) const;  // rows [start, start+length) of dim 0
  Tensor select0(int64_t index) const;  // row `index` of dim 0, that dimension dropped

  // Copies.
  Tensor clone() const;
  Tensor to(DType dtype) const;  // converts (f32<->f64<->bf16, f16->f32, ints<->floats), same device
  Tensor to(Device device) const;  // copies to the CPU or the GPU
  void copy_from(const Tensor& src);  // same shape and dtype, any devices
  void fill(double value);

  double item() const;  // value of a one-element tensor, as double
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_; }
  std::string describe() const;  // "f32[2, 3]", "bf16[4, 8]@cuda"

 private:
  void check_type(DType want) const;
  std::shared_ptr<void> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

// Host memory held by tensors (bytes): now and the peak since the last reset. Used to report
// what activation recompute saves.
struct MemoryStats {
  int64_t current = 0;
  int64_t peak = 0;
};
MemoryStats host_memory_stats();
void reset_host_memory_peak();

// Reads any numeric tensor element as double / int64 (slow; for tests, checks and small tensors).
double element_as_double(const Tensor& t, int64_t flat_index);
int64_t element_as_int(const Tensor& t, int64_t flat_index);

}  // namespace g4

// safetensors checkpoints: zero-copy reads from mmap'ed files (single file or sharded with
// model.safetensors.index.json) and atomic, optionally sharded, writes.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace g4::io {

struct TensorInfo {
  std::string name;
  DType dtype;  // what get() returns (I8/I16/U16 widen to I32, U32 to I64)
  Shape shape;
  std::string file;  // path of the file that holds it
  std::string stored_dtype;  // the dtype as spelled in the file: "BF16", "F8_E4M3", ...
  bool supported = true;  // false: a valid safetensors dtype g4 cannot hold; get() errors
};

// A checkpoint opened for reading: one .safetensors file, or a directory holding either
// model.safetensors or model.safetensors.index.json + shards (model.safetensors wins when both
// exist, as in transformers). Every header is validated on open (offsets in range and
// consistent with dtype x shape, known dtype, no overlaps), so a truncated or corrupt file
// fails here with the file and key named.
class SafetensorsReader {
 public:
  static SafetensorsReader open(const std::string& path);  // file or directory

  std::vector<std::string> names() const;  // sorted
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // error names the key and the checkpoint
  // Zero-copy view of the stored tensor in its stored dtype (F64/F32/BF16/F16/I64/I32/U8/BOOL).
  // Copies instead where a view is impossible: I8/I16/U16 widen to I32 and U32 to I64, and
  // data not aligned to its element size in the file is copied to aligned memory. Views are
  // copy-on-write private mappings: writing into one never changes the file.
  Tensor get(const std::string& name) const;
  // Whether get_f32 takes infinities. A NaN is damage in any tensor, and so is an infinity in a
  // weight; but a clipped linear's bounds are ±inf where it does not clip (transformers' initial
  // buffers, which it saves as they are).
  enum class Infinities { kRefused, kAllowed };
  // The tensor converted to f32 (a copy), checked against an expected shape, a floating-point stored
  // dtype and finite values (see Infinities); a mismatch is an error naming the key, the expected
  // and the actual value.
  Tensor get_f32(const std::string& name, const Shape& expected_shape,
                 Infinities infinities = Infinities::kRefused) const;
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
  std::string path_;
  std::map<std::string, std::string> metadata_;
};

// Writes a checkpoint into `dir`: model.safetensors when everything fits in max_shard_bytes,
// else model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json. Each file is
// written to a temporary name and renamed, so a crash never leaves a half-written checkpoint
// under the final name. Tensors are written in the order added; names must be unique.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::string dir, size_t max_shard_bytes = size_t(5) << 30);
  void add(const std::string& name, const Tensor& tensor);  // CPU tensor, any dtype; copied later
  void set_metadata(const std::string& key, const std::string& value);
  void finish();  // writes all files; returns after the final rename

 private:
  std::string dir_;
  size_t max_shard_bytes_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes one .safetensors file (atomically) with these tensors. Adds {"format": "pt"} to the
// metadata unless it names a format: transformers refuses safetensors files without one.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace g4::io

// safetensors reading (mmap, validated headers, sharded checkpoints) and atomic writing.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, name: {"dtype": D, "shape": [...], "data_offsets": [b, e]}, ...}
// then the data buffer; offsets are relative to the buffer start (byte 8 + N).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "io/json_input.h"

namespace g4::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// ---------------------------------------------------------------------------------------------
// Dtypes. `bytes` is the stored element size; `as` is what get() hands out; `widen` marks the
// integer types g4 has no tag for, which get() copies into the next wider tag it has.
struct StoredDType {
  const char* name;
  size_t bytes;
  bool supported;
  DType as;
  bool widen;
};

constexpr StoredDType kStoredDTypes[] = {
    {"F64", 8, true, DType::F64, false},
    {"F32", 4, true, DType::F32, false},
    {"BF16", 2, true, DType::BF16, false},
    {"F16", 2, true, DType::F16, false},
    {"I64", 8, true, DType::I64, false},
    {"I32", 4, true, DType::I32, false},
    {"U8", 1, true, DType::U8, false},
    {"BOOL", 1, true, DType::Bool, false},
    {"I16", 2, true, DType::I32, true},
    {"I8", 1, true, DType::I32, true},
    {"U16", 2, true, DType::I32, true},
    {"U32", 4, true, DType::I64, true},
    // Valid in the format, but nothing g4 can represent without losing information.
    {"U64", 8, false, DType::U8, false},
    {"F8_E4M3", 1, false, DType::U8, false},
    {"F8_E5M2", 1, false, DType::U8, false},
    {"F8_E8M0", 1, false, DType::U8, false},
    {"C64", 8, false, DType::U8, false},
};

const StoredDType* find_stored_dtype(const std::string& name) {
  for (const auto& d : kStoredDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::U8:
      return "U8";
    case DType::Bool:
      return "BOOL";
    case DType::I16:
      return "I16";
  }
  G4_FAIL("no safetensors dtype for tag ", static_cast<int>(t));
}

// ---------------------------------------------------------------------------------------------
// A whole file mapped privately. PROT_WRITE on a MAP_PRIVATE mapping of a read-only descriptor
// is copy-on-write: a caller that writes into a tensor view gets its own page instead of a
// segfault, and the file on disk never changes.
struct MappedFile {
  std::string path;
  const char* base = nullptr;
  size_t size = 0;

  explicit MappedFile(std::string p) : path(std::move(p)) {
    // Non-blocking: a FIFO in place of the file must be refused, not wait for a writer.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    G4_CHECK(fd >= 0, "cannot open safetensors file ", path, ": ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      G4_FAIL("safetensors path ", path, " is not a regular file",
              S_ISDIR(st.st_mode) ? " (it is a directory)" : " (a FIFO, socket or device?)");
    }
    size = static_cast<size_t>(st.st_size);
    if (size > 0) {  // mmap of length 0 fails; the header check below reports such files
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      G4_CHECK(p != MAP_FAILED, "cannot mmap ", path, ": ", std::strerror(err));
      base = static_cast<const char*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (base) ::munmap(const_cast<char*>(base), size);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
};

struct Entry {
  TensorInfo info;
  const StoredDType* stored = nullptr;
  size_t offset = 0;  // absolute byte offset in the file
  size_t nbytes = 0;
  std::shared_ptr<MappedFile> file;
};

// Multiplies dims with an overflow check; the header is untrusted.
int64_t checked_numel(const Shape& shape, size_t elem, const std::string& key, const std::string& file) {
  uint64_t n = 1;
  const uint64_t limit = std::numeric_limits<int64_t>::max() / elem;
  for (int64_t d : shape) {
    G4_CHECK(d == 0 || n <= limit / static_cast<uint64_t>(d), "tensor '", key, "' in ", file, ": shape ",
             shape_str(shape), " is too large");
    n *= static_cast<uint64_t>(d);
  }
  return static_cast<int64_t>(n);
}

// Reads one header entry; every way it can be malformed is an error naming file and key.
Entry parse_entry(const std::string& key, const json& v, size_t buffer_size, const std::string& file) {
  const std::string where = detail::concat("tensor '", key, "' in ", file);
  G4_CHECK(v.is_object(), where, ": header entry is not an object");
  for (const char* field : {"dtype", "shape", "data_offsets"})
    G4_CHECK(v.contains(field), where, ": header entry has no '", field, "'");

  Entry e;
  e.info.name = key;
  e.info.file = file;
  G4_CHECK(v["dtype"].is_string(), where, ": 'dtype' is not a string");
  e.info.stored_dtype = v["dtype"].get<std::string>();
  e.stored = find_stored_dtype(e.info.stored_dtype);
  G4_CHECK(e.stored != nullptr, "unsupported dtype ", e.info.stored_dtype, " for key ", key, " in file ", file);
  e.info.dtype = e.stored->as;
  e.info.supported = e.stored->supported;

  const json& shape = v["shape"];
  G4_CHECK(shape.is_array(), where, ": 'shape' is not a list");
  for (const json& d : shape) {
    G4_CHECK(d.is_number_integer(), where, ": shape ", shape.dump(), " has a non-integer dimension");
    G4_CHECK(d.get<int64_t>() >= 0, where, ": shape ", shape.dump(), " has a negative dimension");
    e.info.shape.push_back(d.get<int64_t>());
  }

  const json& off = v["data_offsets"];
  G4_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
           ": 'data_offsets' must be two non-negative integers, got ", off.dump());
  const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  G4_CHECK(begin <= end, where, ": data_offsets [", begin, ", ", end, "] end before they begin");
  G4_CHECK(end <= buffer_size, where, ": data_offsets [", begin, ", ", end, "] out of range of the data buffer (",
           buffer_size, " bytes; file truncated?)");
  const int64_t numel = checked_numel(e.info.shape, e.stored->bytes, key, file);
  const uint64_t want = static_cast<uint64_t>(numel) * e.stored->bytes;
  G4_CHECK(end - begin == want, where, ": data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
           e.info.stored_dtype, shape_str(e.info.shape), " needs ", want);
  e.nbytes = static_cast<size_t>(want);
  e.offset = static_cast<size_t>(begin);  // made absolute by the caller
  return e;
}

// Maps a file and validates its header; entries are added to `out` (duplicates are errors).
void read_file_header(const std::string& path, std::map<std::string, Entry>& out,
                      std::map<std::string, std::string>& metadata) {
  auto file = std::make_shared<MappedFile>(path);
  G4_CHECK(file->size >= 8, "safetensors file ", path, " is too short (", file->size,
           " bytes) to hold the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file->base[i]);
  G4_CHECK(n <= file->size - 8, "safetensors file ", path, ": header length ", n, " is larger than the ",
           file->size - 8, " bytes after the length field (file truncated or not safetensors)");

  const json header = parse_json(std::string_view(file->base + 8, static_cast<size_t>(n)),
                                 "safetensors file " + path + ": header", kMaxSafetensorsHeaderBytes);
  G4_CHECK(header.is_object(), "safetensors file ", path, ": header is not a JSON object");

  const size_t data_start = 8 + static_cast<size_t>(n);
  const size_t buffer_size = file->size - data_start;
  std::vector<const Entry*> in_file;
  for (const auto& [key, v] : header.items()) {
    if (key == "__metadata__") {
      if (v.is_null()) continue;
      G4_CHECK(v.is_object(), "safetensors file ", path, ": __metadata__ is not an object");
      for (const auto& [mk, mv] : v.items()) {
        G4_CHECK(mv.is_string(), "safetensors file ", path, ": __metadata__ value for '", mk, "' is not a string");
        metadata.emplace(mk, mv.get<std::string>());  // first file wins in a sharded checkpoint
      }
      continue;
    }
    Entry e = parse_entry(key, v, buffer_size, path);
    e.offset += data_start;
    e.file = file;
    auto [it, inserted] = out.emplace(key, std::move(e));
    G4_CHECK(inserted, "tensor '", key, "' appears both in ", it->second.info.file, " and in ", path);
    in_file.push_back(&it->second);
  }

  // As the safetensors library requires: the tensors' data lie end to end from the start of the data
  // buffer to the end of the file. A gap or an overlap means a corrupt (or crafted) header; bytes after
  // the last tensor, a file appended to or a header that lost entries.
  std::sort(in_file.begin(), in_file.end(), [](const Entry* a, const Entry* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  size_t expected = data_start;
  const Entry* prev = nullptr;
  for (const Entry* e : in_file) {
    G4_CHECK(e->offset >= expected, "safetensors file ", path, ": data of tensors '", prev ? prev->info.name : "",
             "' and '", e->info.name, "' overlap");
    G4_CHECK(e->offset == expected, "safetensors file ", path, ": ", e->offset - expected,
             " bytes of the data buffer before tensor '", e->info.name, "' belong to no tensor (corrupt header)");
    expected = e->offset + e->nbytes;
    prev = e;
  }
  G4_CHECK(expected == file->size, "safetensors file ", path, ": ", file->size - expected, " bytes after ",
           prev ? "the data of tensor '" + prev->info.name + "'" : std::string("the header"),
           " belong to no tensor (the file was appended to, or its header lost entries)");
}

void read_index(const std::string& dir, std::map<std::string, Entry>& out,
                std::map<std::string, std::string>& metadata) {
  const std::string index_path = (fs::path(dir) / kIndexFile).string();
  const json index = read_json_file(index_path, "index", kMaxIndexBytes);
  G4_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), "index ", index_path,
           " has no 'weight_map' object");
  const json& weight_map = index["weight_map"];

  // Open each shard once, in the order the index first names it.
  std::vector<std::string> shards;
  for (const auto& [key, v] : weight_map.items()) {
    G4_CHECK(v.is_string(), "index ", index_path, ": weight_map entry for '", key, "' is not a file name");
    const std::string shard = v.get<std::string>();
    // Shards live in the model directory: an entry must not lead the reader elsewhere. (Symlinks
    // inside the directory are fine; the Hugging Face cache links every shard to a blob.)
    const fs::path rel(shard);
    G4_CHECK(!shard.empty() && rel.is_relative() && !rel.has_root_name(), "index ", index_path,
             ": weight_map entry for '", key, "' is '", shard,
             "'; shard names must be relative to the model directory");
    for (const fs::path& part : rel)
      G4_CHECK(part != "..", "index ", index_path, ": weight_map entry for '", key, "' is '", shard,
               "', which leads outside the model directory ('..' is not allowed)");
    if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
  }
  for (const std::string& shard : shards) {
    const std::string shard_path = (fs::path(dir) / shard).string();
    // The error_code form: a name the system refuses (too long, a loop of links) is a reason, not a throw.
    std::error_code ec;
    const bool regular = fs::is_regular_file(shard_path, ec);
    G4_CHECK(regular, "shard ", shard, " listed in ", index_path, " is missing (", shard_path,
             ec ? "; " + ec.message() : std::string(), ")");
    read_file_header(shard_path, out, metadata);
  }
  for (const auto& [key, v] : weight_map.items()) {
    const std::string shard_path = (fs::path(dir) / v.get<std::string>()).string();
    auto it = out.find(key);
    G4_CHECK(it != out.end() && it->second.info.file == shard_path, "index ", index_path, " maps key '", key, "' to ",
             shard_path, ", but that shard does not contain it");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reader

struct SafetensorsReader::Impl {
  std::map<std::string, Entry> entries;
};

SafetensorsReader SafetensorsReader::open(const std::string& path) {
  SafetensorsReader r;
  r.impl_ = std::make_shared<Impl>();
  r.path_ = path;
  if (fs::is_directory(path)) {
    // Same preference as transformers: a single model.safetensors wins over an index.
    if (fs::exists(fs::path(path) / kSingleFile)) {
      read_file_header((fs::path(path) / kSingleFile).string(), r.impl_->entries, r.metadata_);
    } else if (fs::exists(fs::path(path) / kIndexFile)) {
      read_index(path, r.impl_->entries, r.metadata_);
    } else {
      G4_FAIL("checkpoint directory ", path, " has neither ", kSingleFile, " nor ", kIndexFile);
    }
  } else {
    G4_CHECK(fs::exists(path), "checkpoint ", path, " does not exist");
    read_file_header(path, r.impl_->entries, r.metadata_);
  }
  return r;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->entries.size());
  for (const auto& kv : impl_->entries) out.push_back(kv.first);  // std::map: already sorted
  return out;
}

bool SafetensorsReader::has(const std::string& name) const {
  return impl_->entries.count(name) != 0;
}

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  auto it = impl_->entries.find(name);
  G4_CHECK(it != impl_->entries.end(), "tensor '", name, "' not found in checkpoint ", path_, " (",
           impl_->entries.size(), " tensors)");
  return it->second.info;
}

namespace {
template <class From, class To>
void widen_copy(const char* src, To* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    From v;
    std::memcpy(&v, src + i * sizeof(From), sizeof(From));
    dst[i] = static_cast<To>(v);
  }
}
}  // namespace

Tensor SafetensorsReader::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const Entry& e = impl_->entries.at(name);
  G4_CHECK(ti.supported, "unsupported dtype ", ti.stored_dtype, " for key ", name, " in file ", ti.file);
  const char* src = e.file->base ? e.file->base + e.offset : nullptr;
  const int64_t n = shape_numel(ti.shape);

  if (e.stored->widen) {
    Tensor t = Tensor::empty(ti.shape, ti.dtype);
    const std::string& s = ti.stored_dtype;
    if (s == "I8") widen_copy<int8_t>(src, t.data<int32_t>(), n);
    if (s == "I16") widen_copy<int16_t>(src, t.data<int32_t>(), n);
    if (s == "U16") widen_copy<uint16_t>(src, t.data<int32_t>(), n);
    if (s == "U32") widen_copy<uint32_t>(src, t.data<int64_t>(), n);
    return t;
  }
  // A view needs natural alignment (vectorised kernels may assume it); the header length
  // decides it, and writers that do not pad leave data misaligned, so copy those.
  if (e.nbytes == 0 || reinterpret_cast<uintptr_t>(src) % e.stored->bytes != 0) {
    Tensor t = Tensor::empty(ti.shape, ti.dtype);
    if (e.nbytes) std::memcpy(t.raw(), src, e.nbytes);
    return t;
  }
  return Tensor::wrap(std::shared_ptr<void>(e.file, const_cast<char*>(e.file->base)), const_cast<char*>(src), ti.shape,
                      ti.dtype);
}

Tensor SafetensorsReader::get_f32(const std::string& name, const Shape& expected_shape, Infinities infinities) const {
  const TensorInfo& ti = info(name);
  G4_CHECK(ti.shape == expected_shape, "tensor '", name, "' in ", ti.file, " has shape ", shape_str(ti.shape),
           ", expected ", shape_str(expected_shape));
  // Integers or booleans converted to weights would load silently as garbage.
  G4_CHECK(is_floating(ti.dtype) || !ti.supported, "tensor '", name, "' in ", ti.file, " is stored as ",
           ti.stored_dtype, ", expected a floating-point dtype (F32, BF16, F16 or F64)");
  Tensor t = get(name).to(DType::F32);
  // A NaN or an infinity in a weight is damage, and not always visible downstream: an infinite final
  // norm weight gives infinite logits, which the final softcap turns into finite garbage.
  const float* p = t.data<float>();
  const int64_t n = t.numel();
  const bool infinity_allowed = infinities == Infinities::kAllowed;
  int64_t first = n;
#pragma omp parallel for reduction(min : first) schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i)
    if ((infinity_allowed ? std::isnan(p[i]) : !std::isfinite(p[i])) && i < first) first = i;
  G4_CHECK(first == n, "tensor '", name, "' in ", ti.file, " holds ", std::isnan(p[first]) ? "a NaN" : "an infinity",
           " (element ", first, " of ", n, "): the checkpoint is damaged");
  return t;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

// Writes `bytes` to `path` via a temporary file in the same directory and a rename, so readers
// see the old file or the complete new one, never a prefix (through a symlink, as write_file_atomic).
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path) : path_(atomic_write_target(path)) {
    tmp_ = path_ + ".tmp." + std::to_string(::getpid());
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    G4_CHECK(fd_ >= 0, "cannot create ", tmp_, ": ", std::strerror(errno));
  }
  ~AtomicFile() {  // reached with fd_ open only when writing failed
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min(n, size_t(1) << 30));
      if (w < 0 && errno == EINTR) continue;
      G4_CHECK(w > 0, "writing ", tmp_, " failed: ", std::strerror(errno));
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  void commit() {
    G4_CHECK(::fsync(fd_) == 0, "fsync of ", tmp_, " failed: ", std::strerror(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0 || ::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp_.c_str());
      G4_FAIL("cannot move ", tmp_, " to ", path_, ": ", std::strerror(err));
    }
    sync_to_disk(parent_folder(path_));  // the rename too
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

void check_writable(const std::string& name, const Tensor& t) {
  G4_CHECK(!name.empty() && name != "__metadata__", "cannot save a tensor named '", name, "'");
  G4_CHECK(t.defined(), "cannot save undefined tensor '", name, "'");
  G4_CHECK(t.device() == Device::CPU, "cannot save tensor '", name, "': it is not on the CPU");
}

}  // namespace

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in data order, which makes files easy to inspect.
  nlohmann::ordered_json header;
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  if (!meta.contains("format")) meta["format"] = "pt";
  header["__metadata__"] = meta;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    check_writable(name, t);
    G4_CHECK(!header.contains(name), "tensor '", name, "' is saved twice in ", path);
    header[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text = header.dump();
  // Pad with spaces (valid JSON whitespace) so the data starts 8-aligned, as HF's writer does.
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');

  const fs::path parent = fs::path(path).parent_path();
  make_directories(parent.string(), "save_safetensors: the folder of " + path + ":");
  AtomicFile out(path);
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (const auto& [name, t] : tensors) out.write(t.raw(), t.nbytes());
  out.commit();
}

SafetensorsWriter::SafetensorsWriter(std::string dir, size_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  G4_CHECK(max_shard_bytes_ > 0, "SafetensorsWriter: max_shard_bytes must be positive");
}

void SafetensorsWriter::add(const std::string& name, const Tensor& tensor) {
  check_writable(name, tensor);
  for (const auto& kv : tensors_)
    G4_CHECK(kv.first != name, "tensor '", name, "' added twice to the checkpoint for ", dir_);
  tensors_.emplace_back(name, tensor);
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

void SafetensorsWriter::finish() {
  // Greedy packing in insertion order; a tensor larger than the limit gets a shard to itself.
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  size_t shard_bytes = 0, total = 0;
  for (const auto& kv : tensors_) {
    const size_t b = kv.second.nbytes();
    if (!shards.back().empty() && shard_bytes + b > max_shard_bytes_) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(kv);
    shard_bytes += b;
    total += b;
  }
  make_directories(dir_, "SafetensorsWriter:");
  const fs::path dir(dir_);

  if (shards.size() == 1) {
    save_safetensors((dir / kSingleFile).string(), shards[0], metadata_);
    std::error_code ec;  // a stale index from an earlier sharded save would only mislead
    fs::remove(dir / kIndexFile, ec);
    return;
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    save_safetensors((dir / name).string(), shards[i], metadata_);
    for (const auto& kv : shards[i]) weight_map[kv.first] = name;
  }
  // The index goes last: until it is renamed into place the directory does not claim shards
  // that are not all written yet.
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  const std::string text = index.dump(2) + "\n";
  AtomicFile out((dir / kIndexFile).string());
  out.write(text.data(), text.size());
  out.commit();
  // Loaders (ours and transformers) prefer model.safetensors over the index, so a stale one
  // from an earlier unsharded save would hide the checkpoint just written.
  std::error_code ec;
  fs::remove(dir / kSingleFile, ec);
}

}  // namespace g4::io

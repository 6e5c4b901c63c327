#include "train/optimizer_state.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "io/json_input.h"
#include "parallel/device_mesh.h"
#include "train/checkpoint.h"

namespace g4::train {

namespace fs = std::filesystem;

OptimizerStateReader::OptimizerStateReader(const std::string& checkpoint_dir, int64_t saved_ranks, int64_t rank,
                                           int64_t world_size)
    : dir_(checkpoint_dir), saved_ranks_(saved_ranks) {
  const fs::path d(checkpoint_dir);
  if (fs::exists(d / "optimizer.safetensors")) {
    single_ = (d / "optimizer.safetensors").string();
    return;
  }
  const fs::path first = d / optimizer_shard_name(0, saved_ranks);
  G4_CHECK(fs::exists(first), "checkpoint ", checkpoint_dir, " has neither optimizer.safetensors nor ",
           first.filename().string());
  const io::SafetensorsReader& f0 = file(0);
  const auto it = f0.metadata().find(kOptimizerMetadataKey);
  if (it == f0.metadata().end()) {
    // Per-rank moments without a layout (expert parallelism without fsdp): only this rank's own
    // file fits this rank.
    G4_CHECK(saved_ranks == world_size, "checkpoint ", checkpoint_dir, " holds optimizer state sharded over ",
             saved_ranks, " ranks, but this run has ", world_size, "; resume with ", saved_ranks, " ranks");
    single_ = (d / optimizer_shard_name(rank, world_size)).string();
    G4_CHECK(fs::exists(single_), "checkpoint ", checkpoint_dir, " has no ", fs::path(single_).filename().string());
    return;
  }
  const std::string what = first.string();
  const std::string where = what + ": metadata '" + kOptimizerMetadataKey + "'";
  meta_ = io::parse_json(it->second, where, io::kMaxSafetensorsHeaderBytes);
  // Every field read below and in experts() is reached here first, so a malformed layout is
  // reported once, naming the file, instead of as a library exception later.
  try {
    io::json_int(meta_.at("experts"), "num_experts", where);
    const std::string format = io::json_string(meta_, "format", where);
    G4_CHECK(format == kShardedOptimizerFormat || format == kShardedOptimizerFormatV1, what, ": optimizer format '",
             format, "', expected '", kShardedOptimizerFormat, "' (or '", kShardedOptimizerFormatV1, "')");
    const nlohmann::json& mesh = meta_.at("mesh");
    mesh_ = parallel::MeshShape{static_cast<int>(io::json_int(mesh, "dp", where + " mesh")),
                                static_cast<int>(io::json_int(mesh, "ep", where + " mesh")),
                                static_cast<int>(io::json_int(mesh, "cp", where + " mesh"))};
    G4_CHECK(mesh_.world_size() == saved_ranks, what, ": the optimizer was saved on mesh ", mesh_.str(), " (",
             mesh_.world_size(), " ranks), but trainer_state.json says ", saved_ranks, " ranks");
    flat_ = parallel::FlatLayout::from_json(meta_.at("flat"), what);
    G4_CHECK(flat_.shards == mesh_.dp_shard, what, ": the flat layout has ", flat_.shards, " shards but dp is ",
             mesh_.dp_shard);
    if (meta_.at("experts").contains("flat")) {
      expert_flat_ = parallel::FlatLayout::from_json(meta_.at("experts").at("flat"), what + " (experts)");
      G4_CHECK(expert_flat_->shards == mesh_.dp_shard, what, ": the experts' flat layout has ", expert_flat_->shards,
               " shards but dp is ", mesh_.dp_shard);
      parallel::expert_range(meta_.at("experts").at("num_experts").get<int64_t>(), 0, mesh_.ep, what);
    }
  } catch (const nlohmann::json::exception& e) {
    G4_FAIL(where, " is malformed (", io::json_error_text(e), ")");
  }
}

const io::SafetensorsReader& OptimizerStateReader::file(int64_t rank) const {
  auto& f = files_[rank];
  if (!f) {
    const fs::path p = fs::path(dir_) / optimizer_shard_name(rank, saved_ranks_);
    G4_CHECK(fs::exists(p), "checkpoint ", dir_, " has no ", p.filename().string());
    f = std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(p.string()));
  }
  return *f;
}

Tensor OptimizerStateReader::whole(const io::SafetensorsReader& f, const std::string& tensor) const {
  G4_CHECK(f.has(tensor), "optimizer state ", f.path(), " has no '", tensor, "'");
  G4_CHECK(is_floating(f.info(tensor).dtype), "optimizer state '", tensor, "' in ", f.info(tensor).file,
           " is stored as ", f.info(tensor).stored_dtype, ", expected a floating-point dtype");
  return f.get(tensor);
}

Tensor OptimizerStateReader::read_flat(const parallel::FlatLayout& layout, const std::string& tensor, int ep,
                                       int64_t flat_begin, int64_t count) const {
  // Flat positions [flat_begin, + count), which may cross the saved shards (and units).
  Tensor out;
  const int64_t S = layout.shard_size();
  for (int64_t at = flat_begin, end = flat_begin + count; at < end;) {
    const parallel::FlatLayout::Location where = layout.locate(at);
    const int64_t stop = std::min(end, at + where.run);
    const Tensor shard = whole(file(mesh_.rank_of({static_cast<int>(where.shard), ep, 0})), tensor);
    G4_CHECK(shard.dim() == 1 && shard.size(0) == S, "optimizer shard ", where.shard, " '", tensor, "' is ",
             shard.describe(), ", expected ", S, " elements");
    if (!out.defined()) out = Tensor::empty({count}, shard.dtype());
    const size_t es = dtype_size(out.dtype());
    std::memcpy(static_cast<char*>(out.raw()) + static_cast<size_t>(at - flat_begin) * es,
                static_cast<const char*>(shard.raw()) + static_cast<size_t>(where.index) * es,
                static_cast<size_t>(stop - at) * es);
    at = stop;
  }
  return out;
}

Tensor OptimizerStateReader::replicated(const std::string& kind, const std::string& name, int64_t begin,
                                        int64_t count) const {
  if (!sharded()) {
    if (!files_.count(-1)) files_[-1] = std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(single_));
    const Tensor t = whole(*files_[-1], kind + "." + name);
    G4_CHECK(begin >= 0 && begin + count <= t.numel(), "optimizer state '", kind, ".", name, "' is ", t.describe(),
             "; elements [", begin, ", ", begin + count, ") were asked for");
    return t.reshape({-1}).slice0(begin, count).clone();
  }
  const parallel::FlatParam* p = flat_.find(name);
  G4_CHECK(p, "checkpoint ", dir_, ": the sharded optimizer state has no parameter ", name,
           " (was it frozen or an expert when the checkpoint was written?)");
  G4_CHECK(begin >= 0 && begin + count <= p->numel, "optimizer state of ", name, " has ", p->numel,
           " elements; elements [", begin, ", ", begin + count, ") were asked for");
  Tensor out = read_flat(flat_, "flat." + kind, 0, p->offset + begin, count);
  if (!out.defined()) out = Tensor::empty({0}, DType::F32);
  return out;
}

Tensor OptimizerStateReader::experts(const std::string& kind, const std::string& name, int64_t first,
                                     int64_t count) const {
  const std::string key = kind + "." + name;
  if (!sharded()) {
    if (!files_.count(-1)) files_[-1] = std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(single_));
    const Tensor t = whole(*files_[-1], key);
    // optimizer.safetensors holds every expert; a per-rank file holds exactly this rank's slice.
    if (t.size(0) == count) return t.clone();
    G4_CHECK(first >= 0 && first + count <= t.size(0), "optimizer state '", key, "' is ", t.describe(),
             "; experts [", first, ", ", first + count, ") were asked for");
    return t.slice0(first, count).clone();
  }
  const int64_t E = meta_.at("experts").at("num_experts").get<int64_t>();
  const int64_t per = E / mesh_.ep;
  G4_CHECK(first >= 0 && first + count <= E, "optimizer state '", key, "' has ", E, " experts; [", first, ", ",
           first + count, ") were asked for");
  if (expert_flat_) {
    // Each saved EP rank's slice is a flat buffer sharded over the saved dp ranks.
    const parallel::FlatParam* p = expert_flat_->find(name);
    G4_CHECK(p, "checkpoint ", dir_, ": the sharded optimizer state has no expert parameter ", name);
    G4_CHECK(p->shape.size() >= 1 && p->shape[0] == per, "checkpoint ", dir_, ": expert parameter ", name, " is ",
             shape_str(p->shape), " per EP rank, expected ", per, " experts");
    const int64_t row = p->numel / per;
    Shape s = p->shape;
    s[0] = count;
    Tensor out;
    for (int64_t e = first; e < first + count;) {
      const int64_t owner = e / per, stop = std::min(first + count, (owner + 1) * per);
      const Tensor part = read_flat(*expert_flat_, "experts." + kind, static_cast<int>(owner),
                                    p->offset + (e - owner * per) * row, (stop - e) * row);
      if (!out.defined()) out = Tensor::empty(s, part.dtype());
      std::memcpy(static_cast<char*>(out.raw()) + static_cast<size_t>((e - first) * row) * dtype_size(out.dtype()),
                  part.raw(), part.nbytes());
      e = stop;
    }
    return out;
  }
  Tensor out;
  for (int64_t e = first; e < first + count;) {
    const int64_t owner = e / per, stop = std::min(first + count, (owner + 1) * per);
    const Tensor slice = whole(file(mesh_.rank_of({0, static_cast<int>(owner), 0})), key);
    G4_CHECK(slice.size(0) == per, "optimizer state '", key, "' of ep rank ", owner, " is ", slice.describe(),
             ", expected ", per, " experts");
    const Tensor rows = slice.slice0(e - owner * per, stop - e);
    if (!out.defined()) {
      Shape s = slice.shape();
      s[0] = count;
      out = Tensor::empty(s, slice.dtype());
    }
    std::memcpy(static_cast<char*>(out.raw()) + static_cast<size_t>(e - first) * (out.nbytes() / count),
                rows.raw(), rows.nbytes());
    e = stop;
  }
  return out;
}

}  // namespace g4::train

#include "parallel/fsdp.h"

#include <algorithm>
#include <cstring>

#include "autograd/variable.h"

namespace g4::parallel {

FlatLayout FlatLayout::build(const model::ParamStore& params, const std::vector<std::string>& names, int64_t shards) {
  G4_CHECK(shards >= 1, "FlatLayout: shards must be >= 1, got ", shards);
  FlatLayout l;
  l.shards = shards;
  for (const std::string& n : names) {
    const Shape& s = params.at(n).value().shape();
    l.params.push_back({n, s, l.numel, shape_numel(s)});
    l.numel += shape_numel(s);
  }
  // At least one element per shard, so every shard is a real tensor even with nothing to train.
  l.padded = std::max<int64_t>(1, (l.numel + shards - 1) / shards) * shards;
  return l;
}

const FlatParam* FlatLayout::find(const std::string& name) const {
  for (const FlatParam& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

nlohmann::json FlatLayout::to_json() const {
  nlohmann::json ps = nlohmann::json::array();
  for (const FlatParam& p : params) ps.push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
  return {{"numel", numel}, {"padded", padded}, {"shards", shards}, {"params", ps}};
}

FlatLayout FlatLayout::from_json(const nlohmann::json& j, const std::string& what) {
  FlatLayout l;
  try {
    l.numel = j.at("numel").get<int64_t>();
    l.padded = j.at("padded").get<int64_t>();
    l.shards = j.at("shards").get<int64_t>();
    for (const auto& p : j.at("params")) {
      FlatParam f{p.at("name").get<std::string>(), p.at("shape").get<Shape>(), p.at("offset").get<int64_t>(), 0};
      f.numel = shape_numel(f.shape);
      l.params.push_back(std::move(f));
    }
  } catch (const nlohmann::json::exception& e) {
    G4_FAIL(what, ": the flat parameter layout is malformed: ", e.what());
  }
  G4_CHECK(l.shards >= 1 && l.padded % l.shards == 0 && l.padded >= l.numel, what, ": the flat layout pads ",
           l.numel, " elements to ", l.padded, ", which does not split into ", l.shards, " shards");
  for (const FlatParam& p : l.params)
    G4_CHECK(p.offset >= 0 && p.offset + p.numel <= l.numel, what, ": flat parameter ", p.name, " at ", p.offset,
             " (", p.numel, " elements) lies outside the ", l.numel, " elements of the buffer");
  return l;
}

ShardedParameters::ShardedParameters(model::ParamStore& params, std::vector<std::string> names, DeviceMesh& mesh)
    : params_(params), mesh_(mesh) {
  DType dtype = DType::F32;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    G4_CHECK(!model::is_expert_parameter(n), "ShardedParameters: ", n,
             " is an expert parameter; experts are split by expert parallelism, not flat-sharded");
    const Tensor& v = params.at(n).value();
    G4_CHECK(v.dtype() == DType::F32 || v.dtype() == DType::F64, "ShardedParameters: parameter ", n, " is ",
             v.describe(), "; the sharded master weights are f32 (or f64)");
    if (i == 0) dtype = v.dtype();
    G4_CHECK(v.dtype() == dtype, "ShardedParameters: parameter ", n, " is ", v.describe(), " but ", names[0],
             " is ", dtype_name(dtype), "; one flat buffer holds one dtype");
  }
  layout_ = FlatLayout::build(params, names, mesh.dp_group().size());
  shard_begin_ = mesh.dp_group().rank() * layout_.shard_size();
  master_ = Tensor::zeros({layout_.shard_size()}, dtype);
  reload_master();
  // The parameters start gathered: their current values are the whole model. Point them at one
  // flat buffer so that release() frees one allocation.
  full_ = gather_flat(master_);
  for (const FlatParam& p : layout_.params)
    params_.at(p.name).mutable_value() = full_.slice0(p.offset, p.numel).reshape(p.shape);
}

void ShardedParameters::reload_master() {
  G4_CHECK(layout_.params.empty() || params_.at(layout_.params.front().name).value().defined(),
           "ShardedParameters::reload_master: the parameters are released; gather() them first");
  const int64_t begin = shard_begin_, end = shard_begin_ + layout_.shard_size();
  const size_t es = dtype_size(master_.dtype());
  for (const FlatParam& p : layout_.params) {
    const int64_t a = std::max(begin, p.offset), b = std::min(end, p.offset + p.numel);
    if (a >= b) continue;
    const Tensor& v = params_.at(p.name).value();
    G4_CHECK(v.dtype() == master_.dtype() && v.numel() == p.numel, "ShardedParameters: parameter ", p.name, " is ",
             v.describe(), ", expected ", dtype_name(master_.dtype()), shape_str(p.shape));
    std::memcpy(static_cast<char*>(master_.raw()) + static_cast<size_t>(a - begin) * es,
                static_cast<const char*>(v.raw()) + static_cast<size_t>(a - p.offset) * es,
                static_cast<size_t>(b - a) * es);
  }
}

Tensor ShardedParameters::gather_flat(const Tensor& shard) {
  G4_CHECK(shard.dim() == 1 && shard.size(0) == layout_.shard_size(), "ShardedParameters::gather_flat: got ",
           shard.describe(), ", expected a shard of ", layout_.shard_size(), " elements");
  Tensor out = Tensor::empty({layout_.padded}, shard.dtype());
  mesh_.dp_group().all_gather(shard, out);
  return out;
}

void ShardedParameters::gather() {
  if (gathered()) return;
  full_ = gather_flat(master_);
  for (const FlatParam& p : layout_.params)
    params_.at(p.name).mutable_value() = full_.slice0(p.offset, p.numel).reshape(p.shape);
}

void ShardedParameters::release() {
  for (const FlatParam& p : layout_.params) params_.at(p.name).mutable_value() = Tensor();
  full_ = Tensor();
}

void ShardedParameters::reduce_scatter_gradients() {
  Tensor flat = Tensor::zeros({layout_.padded}, master_.dtype());
  for (const FlatParam& p : layout_.params) {
    ag::Var& v = params_.at(p.name);
    if (!v.grad().defined()) continue;
    G4_CHECK(v.grad().dtype() == master_.dtype() && v.grad().numel() == p.numel, "reduce_scatter_gradients: ",
             p.name, " has gradient ", v.grad().describe(), ", expected ", dtype_name(master_.dtype()),
             shape_str(p.shape));
    std::memcpy(static_cast<char*>(flat.raw()) + static_cast<size_t>(p.offset) * dtype_size(flat.dtype()),
                v.grad().raw(), v.grad().nbytes());
    v.zero_grad();  // the whole gradient is not kept: the slice below replaces it
  }
  grad_ = Tensor::empty({layout_.shard_size()}, master_.dtype());
  mesh_.dp_group().reduce_scatter(flat, grad_, ReduceOp::Sum);
  flat = Tensor();
  // Ranks with the same dp coordinate hold the same slice but trained on different tokens.
  if (mesh_.ep_group().size() > 1) mesh_.ep_group().all_reduce(grad_, ReduceOp::Sum);
  if (mesh_.cp_group().size() > 1) mesh_.cp_group().all_reduce(grad_, ReduceOp::Sum);
}

}  // namespace g4::parallel

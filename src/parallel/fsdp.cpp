#include "parallel/fsdp.h"

#include <algorithm>
#include <map>

#include "autograd/variable.h"
#include "io/json_input.h"
#include "ops/elementwise.h"
#include "ops/optim.h"

namespace g4::parallel {

FlatLayout FlatLayout::build(const model::ParamStore& params, const std::vector<std::string>& names, int64_t shards) {
  return build_units(params, {names}, shards);
}

FlatLayout FlatLayout::build_units(const model::ParamStore& params, const std::vector<std::vector<std::string>>& units,
                                   int64_t shards, int64_t align) {
  G4_CHECK(shards >= 1, "FlatLayout: shards must be >= 1, got ", shards);
  G4_CHECK(align >= 1, "FlatLayout: align must be >= 1, got ", align);
  const auto round_up = [](int64_t x, int64_t m) { return (x + m - 1) / m * m; };
  FlatLayout l;
  l.shards = shards;
  for (const std::vector<std::string>& names : units.empty() ? std::vector<std::vector<std::string>>(1) : units) {
    FlatUnit u{l.padded, 0};
    int64_t n = 0;
    for (const std::string& name : names) {
      const Shape& s = params.at(name).value().shape();
      n = round_up(n, align);
      l.params.push_back({name, s, u.begin + n, shape_numel(s)});
      n += shape_numel(s);
      l.numel += shape_numel(s);
    }
    // At least one element per shard, so every shard is a real tensor even with nothing to train.
    u.padded = std::max<int64_t>(1, (n + shards * align - 1) / (shards * align)) * shards * align;
    l.padded += u.padded;
    l.units.push_back(u);
  }
  return l;
}

const FlatParam* FlatLayout::find(const std::string& name) const {
  for (const FlatParam& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

FlatLayout::Location FlatLayout::locate(int64_t i) const {
  G4_CHECK(i >= 0 && i < padded, "FlatLayout::locate: element ", i, " is outside the ", padded, " flat elements");
  // The last unit starting at or before i.
  auto it = std::upper_bound(units.begin(), units.end(), i, [](int64_t x, const FlatUnit& u) { return x < u.begin; });
  const FlatUnit& u = *(it - 1);
  const int64_t us = u.padded / shards, k = i - u.begin;
  return {k / us, u.begin / shards + k % us, us - k % us};
}

nlohmann::json FlatLayout::to_json() const {
  nlohmann::json ps = nlohmann::json::array(), us = nlohmann::json::array();
  for (const FlatParam& p : params) ps.push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
  for (const FlatUnit& u : units) us.push_back({{"begin", u.begin}, {"padded", u.padded}});
  return {{"numel", numel}, {"padded", padded}, {"shards", shards}, {"units", us}, {"params", ps}};
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
    if (j.contains("units")) {
      for (const auto& u : j.at("units")) l.units.push_back({u.at("begin").get<int64_t>(), u.at("padded").get<int64_t>()});
    } else {
      l.units.push_back({0, l.padded});  // format 1: one buffer
    }
  } catch (const nlohmann::json::exception& e) {
    G4_FAIL(what, ": the flat parameter layout is malformed: ", io::json_error_text(e));
  }
  G4_CHECK(l.shards >= 1 && l.padded % l.shards == 0 && l.padded >= l.numel, what, ": the flat layout pads ",
           l.numel, " elements to ", l.padded, ", which does not split into ", l.shards, " shards");
  int64_t at = 0;
  for (const FlatUnit& u : l.units) {
    G4_CHECK(u.begin == at && u.padded > 0 && u.padded % l.shards == 0, what, ": flat unit [", u.begin, ", ",
             u.begin + u.padded, ") does not follow at ", at, " or does not split into ", l.shards, " shards");
    at += u.padded;
  }
  G4_CHECK(at == l.padded, what, ": the flat units cover ", at, " elements, the layout ", l.padded);
  for (const FlatParam& p : l.params) {
    G4_CHECK(p.offset >= 0 && p.offset + p.numel <= l.padded, what, ": flat parameter ", p.name, " at ", p.offset, " (", p.numel,
             " elements) lies outside the ", l.padded, " elements of the buffer");
    if (p.numel > 0) {
      // Wholly inside one unit.
      const auto it = std::upper_bound(l.units.begin(), l.units.end(), p.offset,
                                       [](int64_t x, const FlatUnit& u) { return x < u.begin; });
      G4_CHECK(p.offset + p.numel <= (it - 1)->begin + (it - 1)->padded, what, ": flat parameter ", p.name, " at ",
               p.offset, " crosses the end of its unit");
    }
  }
  return l;
}

// --- ShardedParameters ------------------------------------------------------------------------

struct ShardedParameters::Unit {
  std::vector<size_t> params;  // indices into layout_.params
  Tensor whole;                // [padded] while whole or arriving
  CollectiveHandle arriving;   // its gather, until ensure() waits for it
  bool views = false;          // the parameters' values point into `whole`
  int64_t owner = -1;          // the block that reads it first (-1: none)
};

struct ShardedParameters::PendingReduce {
  size_t unit = 0;
  Tensor out;
  CollectiveHandle handle;
};

ShardedParameters::ShardedParameters(model::ParamStore& params, std::vector<std::string> names, DeviceMesh& mesh,
                                     const std::vector<std::vector<std::string>>& blocks, Kind kind,
                                     const model::ParamStore* master_source, bool master_remainders)
    : params_(params), mesh_(mesh), kind_(kind) {
  DType dtype = DType::F32;
  Device device = mesh.dp_group().device();
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    if (kind == Kind::Replicated)
      G4_CHECK(!model::split_by_expert(params.kind(n)), "ShardedParameters: ", n,
               " is an expert parameter; experts are split by expert parallelism and sharded on their own "
               "(Kind::Experts), not with the replicated parameters");
    else
      G4_CHECK(model::split_by_expert(params.kind(n)), "ShardedParameters: ", n,
               " is not an expert parameter, but these sharded parameters are the experts");
    const Tensor& v = params.at(n).value();
    G4_CHECK(v.dtype() == DType::F32 || v.dtype() == DType::F64 || v.dtype() == DType::BF16,
             "ShardedParameters: parameter ", n, " is ", v.describe(),
             "; sharded parameters are f32 or f64 (their own masters) or bf16 compute copies (f32 masters)");
    if (i == 0) dtype = v.dtype();
    G4_CHECK(v.dtype() == dtype, "ShardedParameters: parameter ", n, " is ", v.describe(), " but ", names[0],
             " is ", dtype_name(dtype), "; one flat buffer holds one dtype");
    // The gathers and reduce-scatters run over the dp group on its device.
    G4_CHECK(v.device() == device, "ShardedParameters: parameter ", n, " is ", v.describe(), ", but the dp group ("
             , mesh.dp_group().backend(), ") moves ", device == Device::CPU ? "CPU" : "CUDA",
             " tensors; CUDA parameters need a CUDA communicator (NCCL, or host-staged MPI for ranks sharing a GPU)");
  }
  compute_dtype_ = dtype;
  // Units: the parameters each block reads first, in `names` order; blocks without new ones add
  // no unit (a frozen layer costs no collective). Names no block reads form a last unit.
  std::map<std::string, size_t> first_block;
  for (size_t b = 0; b < blocks.size(); ++b)
    for (const std::string& n : blocks[b]) first_block.emplace(n, b);
  std::vector<std::vector<std::string>> per_block(blocks.size() + 1);
  for (const std::string& n : names) {
    const auto it = first_block.find(n);
    per_block[it == first_block.end() ? blocks.size() : it->second].push_back(n);
  }
  std::vector<std::vector<std::string>> unit_names;
  std::map<std::string, size_t> unit_of;
  for (const auto& ns : per_block) {
    if (ns.empty()) continue;
    for (const std::string& n : ns) unit_of[n] = unit_names.size();
    unit_names.push_back(ns);
  }
  // On the GPU each parameter starts 256 bytes into a bf16 unit (128 elements) or more: the
  // alignment of a fresh device allocation, which kernels with 16-byte vector loads and cuBLASLt's
  // fastest algorithms rely on.
  layout_ = FlatLayout::build_units(params, unit_names, mesh.dp_group().size(), device == Device::CPU ? 1 : 128);
  units_.resize(layout_.units.size());
  for (size_t i = 0, u = 0; i < layout_.params.size(); ++i) {
    const FlatParam& p = layout_.params[i];
    while (p.offset >= layout_.units[u].begin + layout_.units[u].padded) ++u;
    units_[u].params.push_back(i);
  }
  for (const auto& reads : blocks) {
    std::vector<size_t> us;
    for (const std::string& n : reads) {
      const auto it = unit_of.find(n);
      if (it != unit_of.end() && std::find(us.begin(), us.end(), it->second) == us.end()) us.push_back(it->second);
    }
    std::sort(us.begin(), us.end());
    for (size_t u : us)
      if (units_[u].owner < 0) units_[u].owner = static_cast<int64_t>(block_units_.size());
    block_units_.push_back(std::move(us));
  }
  // bf16 compute copies train through f32 masters (or their remainders); the gathers move the bf16 copies.
  state_dtype_ = dtype == DType::BF16 ? DType::F32 : dtype;
  device_ = device;
  if (dtype == DType::BF16 && master_remainders)
    remainder_ = Tensor::zeros({layout_.shard_size()}, DType::I16, device);
  else
    master_ = Tensor::zeros({layout_.shard_size()}, state_dtype_, device);
  if (dtype == DType::BF16) compute_ = Tensor::zeros({layout_.shard_size()}, dtype, device);
  load_master(master_source ? *master_source : params);
  // The parameters start whole (their current values are the model); from now on they are views
  // of the units' buffers, so that freeing a unit frees one allocation.
  self_ = std::make_shared<ShardedParameters*>(this);
  gather();
}

ShardedParameters::~ShardedParameters() {
  *self_ = nullptr;  // hooks still installed in a model now refuse to run
}

void ShardedParameters::load_master(const model::ParamStore& source) {
  const int64_t d = mesh_.dp_group().rank();
  // With remainders the masters are assembled here, then split into the compute copy and remainders.
  Tensor master = remainder_.defined() ? Tensor::zeros({layout_.shard_size()}, state_dtype_, device_) : master_;
  layout_.for_each_owned(d, [&](const FlatParam& p, int64_t first, int64_t count, int64_t local) {
    G4_CHECK(source.has(p.name), "ShardedParameters::load_master: the source has no parameter ", p.name);
    const Tensor& v = source.at(p.name).value();
    G4_CHECK(v.defined(), "ShardedParameters::load_master: ", p.name, " is released; gather() the parameters first");
    G4_CHECK(v.numel() == p.numel && is_floating(v.dtype()), "ShardedParameters: parameter ", p.name, " is ",
             v.describe(), ", expected a floating-point tensor of shape ", shape_str(p.shape));
    // Tensor copies, not host memcpy: either side may be on the GPU.
    const Tensor part = v.reshape({-1}).slice0(first - p.offset, count);
    master.slice0(local, count).copy_from(part.dtype() == state_dtype_ ? part : part.to(state_dtype_));
  });
  if (remainder_.defined()) {
    const ops::SplitMaster split = ops::split_master(master.to(Device::CPU));
    compute_.copy_from(split.param);
    remainder_.copy_from(split.remainder);
  } else if (compute_.defined()) {
    // Rounded on the device from the masters, as the optimizer's update rewrites it.
    compute_.copy_from(master_.to(compute_.dtype()));
  }
}

Tensor ShardedParameters::master_values() const {
  if (!remainder_.defined()) return master_;
  return ops::join_master(compute_.to(Device::CPU), remainder_.to(Device::CPU)).to(device_);
}

Tensor ShardedParameters::gather_flat(const Tensor& shard) {
  const int64_t S = layout_.shard_size(), D = layout_.shards;
  G4_CHECK(shard.dim() == 1 && shard.size(0) == S, "ShardedParameters::gather_flat: got ", shard.describe(),
           ", expected a shard of ", S, " elements");
  Tensor ranks = Tensor::empty({D * S}, shard.dtype(), shard.device());
  mesh_.dp_group().all_gather(shard, ranks);
  // Rank-major (each rank's slices of every unit) to flat order (each unit's slices in rank order).
  Tensor out = Tensor::empty({layout_.padded}, shard.dtype(), shard.device());
  for (size_t u = 0; u < layout_.units.size(); ++u) {
    const int64_t us = layout_.unit_shard_size(u), local = layout_.units[u].begin / D;
    for (int64_t d = 0; d < D; ++d)
      out.slice0(layout_.units[u].begin + d * us, us).copy_from(ranks.slice0(d * S + local, us));
  }
  return out;
}

void ShardedParameters::prefetch(size_t u) {
  Unit& unit = units_[u];
  if (unit.whole.defined()) return;
  unit.whole = Tensor::empty({layout_.units[u].padded}, compute_dtype_, device_);
  unit.arriving = mesh_.dp_group().all_gather_async(gathered_piece(u), unit.whole);
  whole_now_ += layout_.units[u].padded;
  whole_peak_ = std::max(whole_peak_, whole_now_);
}

void ShardedParameters::ensure(size_t u) {
  Unit& unit = units_[u];
  prefetch(u);
  if (unit.arriving) {
    unit.arriving->wait();
    unit.arriving.reset();
  }
  if (unit.views) return;
  const int64_t begin = layout_.units[u].begin;
  for (size_t i : unit.params) {
    const FlatParam& p = layout_.params[i];
    params_.at(p.name).mutable_value() = unit.whole.slice0(p.offset - begin, p.numel).reshape(p.shape);
  }
  unit.views = true;
}

void ShardedParameters::free_unit(size_t u) {
  Unit& unit = units_[u];
  if (!unit.whole.defined()) return;
  unit.arriving.reset();  // waits for a gather nobody used
  for (size_t i : unit.params) params_.at(layout_.params[i].name).mutable_value() = Tensor();
  unit.whole = Tensor();
  unit.views = false;
  whole_now_ -= layout_.units[u].padded;
}

void ShardedParameters::gather() {
  if (pinned_) return;
  // Every unit's gather in flight at once, then waited for in order.
  for (size_t u = 0; u < units_.size(); ++u) prefetch(u);
  for (size_t u = 0; u < units_.size(); ++u) ensure(u);
  pinned_ = true;
}

void ShardedParameters::release() {
  for (size_t u = 0; u < units_.size(); ++u) free_unit(u);
  pinned_ = false;
}

void ShardedParameters::begin_block(int64_t b, int64_t next) {
  if (pinned_) return;
  G4_CHECK(b >= 0 && b < num_blocks(), "ShardedParameters: block ", b, " of ", num_blocks());
  for (size_t u : block_units_[static_cast<size_t>(b)]) ensure(u);
  if (next >= 0 && next < num_blocks())
    for (size_t u : block_units_[static_cast<size_t>(next)]) prefetch(u);
}

void ShardedParameters::end_block(int64_t b, int64_t keep) {
  if (pinned_) return;
  const std::vector<size_t>* kept = keep >= 0 && keep < num_blocks() ? &block_units_[static_cast<size_t>(keep)] : nullptr;
  for (size_t u : block_units_[static_cast<size_t>(b)])
    if (!kept || std::find(kept->begin(), kept->end(), u) == kept->end()) free_unit(u);
}

void ShardedParameters::finish_reduce_scatter() {
  if (!reducing_) return;
  reducing_->handle->wait();
  if (!grad_.defined()) grad_ = Tensor::zeros({layout_.shard_size()}, state_dtype_, device_);
  Tensor piece = grad_.slice0(layout_.units[reducing_->unit].begin / layout_.shards, layout_.unit_shard_size(reducing_->unit));
  ops::add_(piece, reducing_->out);
  reducing_.reset();
}

void ShardedParameters::reduce_scatter_unit(size_t u) {
  finish_reduce_scatter();  // one in flight: its buffer is the only whole gradient kept
  const FlatUnit& fu = layout_.units[u];
  // Gradients travel in the masters' precision (f32 for bf16 compute copies, whose gradients
  // accumulate in f32 already).
  Tensor flat = Tensor::zeros({fu.padded}, state_dtype_, device_);
  for (size_t i : units_[u].params) {
    const FlatParam& p = layout_.params[i];
    ag::Var& v = params_.at(p.name);
    if (!v.grad().defined()) continue;
    const Tensor& g = v.grad();
    G4_CHECK((g.dtype() == state_dtype_ || g.dtype() == compute_dtype_) && g.numel() == p.numel &&
                 g.device() == device_,
             "reduce_scatter_gradients: ", p.name, " has gradient ", g.describe(), ", expected ",
             dtype_name(state_dtype_), shape_str(p.shape));
    flat.slice0(p.offset - fu.begin, p.numel)
        .copy_from((g.dtype() == state_dtype_ ? g : g.to(state_dtype_)).reshape({-1}));
    v.zero_grad();  // the whole gradient is not kept: the slice replaces it
  }
  auto r = std::make_unique<PendingReduce>();
  r->unit = u;
  r->out = Tensor::empty({layout_.unit_shard_size(u)}, state_dtype_, device_);
  r->handle = mesh_.dp_group().reduce_scatter_async(flat, r->out, ReduceOp::Sum);
  reducing_ = std::move(r);
}

void ShardedParameters::reduce_scatter_block(int64_t b, int64_t keep) {
  if (pinned_) return;
  // A unit is reduce-scattered once, after the backward of the block that owns it (the first to
  // read it, so the last in backward). A unit read by later blocks too (the tied embedding, read
  // by the LM head) keeps its whole gradient until then, so the contributions add up on the
  // whole tensor in the same order as on one rank.
  for (size_t u : block_units_[static_cast<size_t>(b)])
    if (units_[u].owner == b) reduce_scatter_unit(u);
  end_block(b, keep);
}

void ShardedParameters::reduce_scatter_gradients() {
  if (pinned_) {
    // A forward on the whole model: no block reduce-scattered anything yet.
    for (size_t u = 0; u < units_.size(); ++u) reduce_scatter_unit(u);
  } else {
    for (const FlatParam& p : layout_.params)
      G4_CHECK(!params_.at(p.name).grad().defined(), "reduce_scatter_gradients: ", p.name,
               " still has a whole gradient although the model's block hooks reduce-scatter every block; was the "
               "forward run on the gathered model, released before backward?");
  }
  finish_reduce_scatter();
  if (!grad_.defined()) grad_ = Tensor::zeros({layout_.shard_size()}, state_dtype_, device_);
  // Ranks with the same dp coordinate hold the same slice but trained on different tokens; for
  // experts, the ep peers hold other experts, whose gradients already include this rank's tokens.
  if (kind_ == Kind::Replicated && mesh_.ep_group().size() > 1) mesh_.ep_group().all_reduce(grad_, ReduceOp::Sum);
  if (mesh_.cp_group().size() > 1) mesh_.cp_group().all_reduce(grad_, ReduceOp::Sum);
}

// --- The model's hooks ------------------------------------------------------------------------

namespace {

// Drives every family of sharded parameters (replicated, experts) through the same calls, in
// the same order on every rank.
class ShardedParameterHooks final : public model::ParameterHooks {
 public:
  using Handle = std::shared_ptr<ShardedParameters*>;
  explicit ShardedParameterHooks(std::vector<Handle> s) : s_(std::move(s)) {}

  void enter(int64_t b) override {
    if (all_gathered()) return;
    for (const Handle& h : s_) {
      ShardedParameters& s = get(h);
      s.begin_block(b, b + 1 < s.num_blocks() ? b + 1 : -1);
    }
    // Runs in backward after the block's own nodes: its gradients are complete.
    if (ag::grad_enabled())
      ag::record_collective({}, [s = s_, b] {
        for (const Handle& h : s) get(h).reduce_scatter_block(b, b - 1);
      });
  }

  void exit(int64_t b) override {
    if (all_gathered()) return;
    const bool last = b + 1 == get(s_.front()).num_blocks();
    if (ag::grad_enabled()) {
      // Runs in backward before the block's own nodes (and before its recomputation).
      ag::record_collective({}, [s = s_, b] {
        for (const Handle& h : s) get(h).begin_block(b, b - 1);
      });
      if (last) return;  // backward starts with this block: keep it whole
    }
    for (const Handle& h : s_) get(h).end_block(b, last ? -1 : b + 1);
  }

  bool whole() const override { return all_gathered(); }

 private:
  static ShardedParameters& get(const Handle& s) {
    G4_CHECK(*s, "the model's sharded parameters (enable_sharded_parameters) were destroyed; its parameters "
             "exist only as views of them");
    return **s;
  }
  bool all_gathered() const {
    for (const Handle& h : s_)
      if (!get(h).gathered()) return false;
    return true;
  }
  std::vector<Handle> s_;
};

}  // namespace

void enable_sharded_parameters(model::Gemma4& model, const std::vector<ShardedParameters*>& shards) {
  const int64_t blocks = static_cast<int64_t>(model.parameter_blocks().size());
  G4_CHECK(!shards.empty(), "enable_sharded_parameters: no sharded parameters given");
  std::vector<ShardedParameterHooks::Handle> handles;
  for (ShardedParameters* s : shards) {
    G4_CHECK(s->num_blocks() == blocks, "enable_sharded_parameters: the sharded parameters were built for ",
             s->num_blocks(), " blocks, the model runs ", blocks, "; build them with the model's parameter_blocks()");
    handles.push_back(s->self_);
  }
  model.set_parameter_hooks(std::make_shared<ShardedParameterHooks>(std::move(handles)));
}

}  // namespace g4::parallel

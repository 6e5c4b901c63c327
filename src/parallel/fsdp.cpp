#include "parallel/fsdp.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "autograd/variable.h"
#include "io/json_input.h"
#include "ops/elementwise.h"

namespace g4::parallel {

FlatLayout FlatLayout::build(const model::ParamStore& params, const std::vector<std::string>& names, int64_t shards) {
  return build_units(params, {names}, shards);
}

FlatLayout FlatLayout::build_units(const model::ParamStore& params, const std::vector<std::vector<std::string>>& units,
                             int64_t shards) {
  G4_CHECK(shards >= 1, "FlatLayout: shards must be >= 1, got ", shards);
  FlatLayout l;
  l.shards = shards;
  for (const std::vector<std::string>& names : units.empty() ? std::vector<std::vector<std::string>>(1) : units) {
    FlatUnit u{l.padded, 0};
    int64_t n = 0;
    for (const std::string& name : names) {
      const Shape& s = params.at(name).value().shape();
      l.params.push_back({name, s, u.begin + n, shape_numel(s)});
      n += shape_numel(s);
    }
    l.numel += n;
    // At least one element per shard, so every shard is a real tensor even with nothing to train.
    u.padded = std::max<int64_t>(1, (n + shards - 1) / shards) * shards;
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
                                     const std::vector<std::vector<std::string>>& blocks, Kind kind)
    : params_(params), mesh_(mesh), kind_(kind) {
  DType dtype = DType::F32;
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
    G4_CHECK(v.dtype() == DType::F32 || v.dtype() == DType::F64, "ShardedParameters: parameter ", n, " is ",
             v.describe(), "; the sharded master weights are f32 (or f64)");
    if (i == 0) dtype = v.dtype();
    G4_CHECK(v.dtype() == dtype, "ShardedParameters: parameter ", n, " is ", v.describe(), " but ", names[0],
             " is ", dtype_name(dtype), "; one flat buffer holds one dtype");
  }
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
  layout_ = FlatLayout::build_units(params, unit_names, mesh.dp_group().size());
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
  master_ = Tensor::zeros({layout_.shard_size()}, dtype);
  reload_master();
  // The parameters start whole (their current values are the model); from now on they are views
  // of the units' buffers, so that freeing a unit frees one allocation.
  self_ = std::make_shared<ShardedParameters*>(this);
  gather();
}

ShardedParameters::~ShardedParameters() {
  *self_ = nullptr;  // hooks still installed in a model now refuse to run
}

void ShardedParameters::reload_master() {
  const int64_t d = mesh_.dp_group().rank();
  const size_t es = dtype_size(master_.dtype());
  layout_.for_each_owned(d, [&](const FlatParam& p, int64_t first, int64_t count, int64_t local) {
    const Tensor& v = params_.at(p.name).value();
    G4_CHECK(v.defined(), "ShardedParameters::reload_master: ", p.name, " is released; gather() the parameters first");
    G4_CHECK(v.dtype() == master_.dtype() && v.numel() == p.numel, "ShardedParameters: parameter ", p.name, " is ",
             v.describe(), ", expected ", dtype_name(master_.dtype()), shape_str(p.shape));
    std::memcpy(static_cast<char*>(master_.raw()) + static_cast<size_t>(local) * es,
                static_cast<const char*>(v.raw()) + static_cast<size_t>(first - p.offset) * es,
                static_cast<size_t>(count) * es);
  });
}

Tensor ShardedParameters::gather_flat(const Tensor& shard) {
  const int64_t S = layout_.shard_size(), D = layout_.shards;
  G4_CHECK(shard.dim() == 1 && shard.size(0) == S, "ShardedParameters::gather_flat: got ", shard.describe(),
           ", expected a shard of ", S, " elements");
  Tensor ranks = Tensor::empty({D * S}, shard.dtype());
  mesh_.dp_group().all_gather(shard, ranks);
  // Rank-major (each rank's slices of every unit) to flat order (each unit's slices in rank order).
  Tensor out = Tensor::empty({layout_.padded}, shard.dtype());
  const size_t es = dtype_size(shard.dtype());
  for (size_t u = 0; u < layout_.units.size(); ++u) {
    const int64_t us = layout_.unit_shard_size(u), local = layout_.units[u].begin / D;
    for (int64_t d = 0; d < D; ++d)
      std::memcpy(static_cast<char*>(out.raw()) + static_cast<size_t>(layout_.units[u].begin + d * us) * es,
                  static_cast<const char*>(ranks.raw()) + static_cast<size_t>(d * S + local) * es,
                  static_cast<size_t>(us) * es);
  }
  return out;
}

void ShardedParameters::prefetch(size_t u) {
  Unit& unit = units_[u];
  if (unit.whole.defined()) return;
  unit.whole = Tensor::empty({layout_.units[u].padded}, master_.dtype());
  unit.arriving = mesh_.dp_group().all_gather_async(master_piece(u), unit.whole);
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
  if (!grad_.defined()) grad_ = Tensor::zeros({layout_.shard_size()}, master_.dtype());
  Tensor piece = grad_.slice0(layout_.units[reducing_->unit].begin / layout_.shards, layout_.unit_shard_size(reducing_->unit));
  ops::add_(piece, reducing_->out);
  reducing_.reset();
}

void ShardedParameters::reduce_scatter_unit(size_t u) {
  finish_reduce_scatter();  // one in flight: its buffer is the only whole gradient kept
  const FlatUnit& fu = layout_.units[u];
  Tensor flat = Tensor::zeros({fu.padded}, master_.dtype());
  for (size_t i : units_[u].params) {
    const FlatParam& p = layout_.params[i];
    ag::Var& v = params_.at(p.name);
    if (!v.grad().defined()) continue;
    G4_CHECK(v.grad().dtype() == master_.dtype() && v.grad().numel() == p.numel, "reduce_scatter_gradients: ",
             p.name, " has gradient ", v.grad().describe(), ", expected ", dtype_name(master_.dtype()),
             shape_str(p.shape));
    std::memcpy(static_cast<char*>(flat.raw()) + static_cast<size_t>(p.offset - fu.begin) * dtype_size(flat.dtype()),
                v.grad().raw(), v.grad().nbytes());
    v.zero_grad();  // the whole gradient is not kept: the slice replaces it
  }
  auto r = std::make_unique<PendingReduce>();
  r->unit = u;
  r->out = Tensor::empty({layout_.unit_shard_size(u)}, master_.dtype());
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
  if (!grad_.defined()) grad_ = Tensor::zeros({layout_.shard_size()}, master_.dtype());
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

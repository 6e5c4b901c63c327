#include "train/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "ops/elementwise.h"
#include "ops/optim.h"
#include "parallel/data_parallel.h"

namespace g4::train {

ShardedAdamW::ShardedAdamW(model::ParamStore& params, parallel::DeviceMesh& mesh,
                           const std::vector<std::string>& trainable, const std::set<std::string>& no_decay,
                           AdamWOptions options, const model::ParamStore* master_source)
    : params_(params), mesh_(mesh), opt_(options) {
  init(trainable, no_decay, {}, master_source);
}

ShardedAdamW::ShardedAdamW(model::Gemma4& model, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
                           const std::set<std::string>& no_decay, AdamWOptions options,
                           const model::ParamStore* master_source)
    : params_(model.params()), mesh_(mesh), opt_(options) {
  init(trainable, no_decay, model.parameter_blocks(), master_source);
  std::vector<parallel::ShardedParameters*> families{flat_.shards.get()};
  if (experts_.shards) families.push_back(experts_.shards.get());
  parallel::enable_sharded_parameters(model, families);
}

void ShardedAdamW::Family::init(const std::set<std::string>& no_decay, int64_t dp_rank, const AdamWOptions& opt) {
  const parallel::FlatLayout& l = shards->layout();
  std::tie(m, v) =
      zero_moments(opt, {l.shard_size()}, shards->dtype(), shards->device(), "the sharded optimizer's slice");
  // Per element of the slice: 1 where its parameter takes weight decay (the padding takes none).
  // Built once on the host, kept on the shards' device.
  Tensor mask = Tensor::zeros({l.shard_size()}, DType::U8);
  uint8_t* d = mask.data<uint8_t>();
  l.for_each_owned(dp_rank, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
    if (!no_decay.count(p.name)) std::fill_n(d + local, count, uint8_t{1});
  });
  decay_mask = shards->device() == Device::CPU ? mask : mask.to(shards->device());
}

void ShardedAdamW::init(const std::vector<std::string>& trainable, const std::set<std::string>& no_decay,
                        const std::vector<std::vector<std::string>>& blocks, const model::ParamStore* master_source) {
  std::vector<std::string> flat;
  for (const std::string& n : trainable) (model::split_by_expert(params_.kind(n)) ? expert_names_ : flat).push_back(n);
  flat_.shards = std::make_unique<parallel::ShardedParameters>(
      params_, flat, mesh_, blocks, parallel::ShardedParameters::Kind::Replicated, master_source,
      opt_.store_param_remainders);
  flat_.init(no_decay, mesh_.dp_group().rank(), opt_);
  if (!expert_names_.empty()) {
    num_experts_ = params_.at(expert_names_.front()).value().size(0) * mesh_.shape().ep;
    experts_.shards = std::make_unique<parallel::ShardedParameters>(
        params_, expert_names_, mesh_, blocks, parallel::ShardedParameters::Kind::Experts, master_source,
        opt_.store_param_remainders);
    experts_.init(no_decay, mesh_.dp_group().rank(), opt_);
  }
}

void ShardedAdamW::gather_parameters() {
  flat_.shards->gather();
  if (experts_.shards) experts_.shards->gather();
}

void ShardedAdamW::release_parameters() {
  flat_.shards->release();
  if (experts_.shards) experts_.shards->release();
}

void ShardedAdamW::reduce_gradients() {
  flat_.shards->reduce_scatter_gradients();
  if (experts_.shards) experts_.shards->reduce_scatter_gradients();
  release_parameters();
}

namespace {
template <class T>
double sum_squares(const T* d, int64_t n) {
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) sq += static_cast<double>(d[i]) * static_cast<double>(d[i]);
  return sq;
}

// Adds the squared norm of grad[begin, begin + count) into per_param[i]: on the host in double
// (per_param f64), on the GPU as a device reduction added into a device f32 vector, so the
// parameters' norms are summed over dp without leaving the device.
void add_squares(Tensor& per_param, size_t i, const Tensor& grad, int64_t begin, int64_t count) {
  if (grad.device() != Device::CPU) {
    Tensor slot = per_param.slice0(static_cast<int64_t>(i), 1);
    ops::add_(slot, ops::squared_norm(grad.slice0(begin, count)).reshape({1}));
    return;
  }
  per_param.data<double>()[i] += grad.dtype() == DType::F64 ? sum_squares(grad.data<double>() + begin, count)
                                                            : sum_squares(grad.data<float>() + begin, count);
}

// A host number summed over `group` (whose tensors may have to live on the GPU).
double sum_over(parallel::Communicator& group, double x) {
  Tensor t = Tensor::from_vector<double>({x}, {1});
  if (group.device() == Device::CPU) {
    group.all_reduce(t);
    return t.data<double>()[0];
  }
  Tensor d = t.to(group.device());
  group.all_reduce(d);
  return d.to(Device::CPU).data<double>()[0];
}
}  // namespace

double ShardedAdamW::clip_grad_norm(double max_norm) {
  // As clip_grad_norm (adamw.h): torch's norm of the per-tensor norms, each rounded to the
  // gradient's dtype (on the CPU; the GPU sums without rounding, as grad_norm_and_scale does). A
  // parameter may span several slices, so its squared norm is the sum of the slices' parts over
  // dp before it is rounded. Expert tensors are also split over ep: their squared norms are summed
  // over the EP group instead (no per-tensor rounding is possible).
  const Device device = flat_.shards->device();
  const bool f64 = device != Device::CPU || flat_.shards->dtype() == DType::F64;
  G4_CHECK(flat_.shards->grad().defined(), "ShardedAdamW::clip_grad_norm: call reduce_gradients() first");
  const parallel::FlatLayout& l = flat_.shards->layout();
  const size_t nf = l.params.size(), ne = experts_.shards ? experts_.shards->layout().params.size() : 0;
  // One all-reduce over dp for the parts of both families (one slot more: never empty).
  Tensor per_param =
      Tensor::zeros({static_cast<int64_t>(nf + ne) + 1}, device == Device::CPU ? DType::F64 : DType::F32, device);
  const int64_t d = mesh_.dp_group().rank();
  l.for_each_owned(d, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
    add_squares(per_param, static_cast<size_t>(&p - l.params.data()), flat_.shards->grad(), local, count);
  });
  if (experts_.shards) {
    const parallel::FlatLayout& le = experts_.shards->layout();
    le.for_each_owned(d, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
      add_squares(per_param, nf + static_cast<size_t>(&p - le.params.data()), experts_.shards->grad(), local, count);
    });
  }
  if (mesh_.dp_group().size() > 1) mesh_.dp_group().all_reduce(per_param);
  // The norms come to the host once (the step's one synchronisation on the GPU).
  const Tensor host = device == Device::CPU ? per_param : per_param.to(Device::CPU).to(DType::F64);
  const double* sq = host.data<double>();
  double total_sq = 0;
  for (size_t i = 0; i < nf; ++i) total_sq += rounded_square(sq[i], f64);
  if (mesh_.ep_group().size() > 1) {
    double expert_sq = 0;
    for (size_t i = 0; i < ne; ++i) expert_sq += sq[nf + i];
    total_sq += sum_over(mesh_.ep_group(), expert_sq);
  } else {
    for (size_t i = 0; i < ne; ++i) total_sq += rounded_square(sq[nf + i], f64);
  }
  const double total = f64 ? std::sqrt(total_sq) : static_cast<float>(std::sqrt(total_sq));
  const double coef = clip_coefficient(total, max_norm, /*f32=*/!f64);
  if (coef < 1.0) {
    scale_gradient(flat_.shards->grad(), coef);
    if (experts_.shards) scale_gradient(experts_.shards->grad(), coef);
  }
  return total;
}

void ShardedAdamW::step(double lr) {
  ++step_;
  for (Family* f : {&flat_, &experts_}) {
    if (!f->shards) continue;
    // bf16 compute copies: the update also rewrites this rank's shard of them (the next gathers').
    Tensor& compute = f->shards->compute_copy();
    if (f->shards->remainder().defined())
      adamw_update_flat_remainders(compute, f->shards->remainder(), f->m, f->v, f->shards->grad(), f->decay_mask, lr,
                                   opt_, step_);
    else
      adamw_update_flat(f->shards->master(), f->m, f->v, f->shards->grad(), f->decay_mask, lr, opt_, step_,
                        compute.defined() ? &compute : nullptr);
    f->shards->grad() = Tensor();
  }
}

void ShardedAdamW::discard_gradients() {
  for (Family* f : {&flat_, &experts_})
    if (f->shards) f->shards->grad() = Tensor();
}

int64_t ShardedAdamW::state_numel() const {
  int64_t n = 0;
  for (const Family* f : {&flat_, &experts_})
    if (f->shards) n += f->shards->layout().shard_size() + f->m.numel() + f->v.numel();
  return n;
}

std::vector<std::pair<std::string, Tensor>> ShardedAdamW::checkpoint_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  const parallel::MeshCoord c = mesh_.coord();
  if (c.ep == 0 && c.cp == 0) {
    out.emplace_back("flat.exp_avg", flat_.m);
    out.emplace_back("flat.exp_avg_sq", flat_.v);
  }
  if (experts_.shards && c.cp == 0) {
    out.emplace_back("experts.exp_avg", experts_.m);
    out.emplace_back("experts.exp_avg_sq", experts_.v);
  }
  return out;
}

std::string ShardedAdamW::checkpoint_metadata() const {
  const parallel::MeshShape& s = mesh_.shape();
  nlohmann::json experts = {{"num_experts", num_experts_}, {"names", expert_names_}};
  // The layout of one EP rank's expert slice (the same on every EP rank, for other experts).
  if (experts_.shards) experts["flat"] = experts_.shards->layout().to_json();
  const nlohmann::json j = {{"format", kShardedOptimizerFormat},
                            {"mesh", {{"dp", s.dp_shard}, {"ep", s.ep}, {"cp", s.cp}}},
                            {"dtype", dtype_name(flat_.shards->dtype())},
                            {"flat", flat_.shards->layout().to_json()},
                            {"experts", experts}};
  return j.dump();
}

void ShardedAdamW::load_state(const OptimizerStateReader& reader, int64_t steps_taken,
                              const model::ParamStore* master_source) {
  const int64_t d = mesh_.dp_group().rank();
  // Tensor copies (the moments may live on the GPU): the part read from the files into its place.
  auto put = [](Tensor& dst, int64_t local, const Tensor& part) {
    dst.slice0(local, part.numel()).copy_from(part.reshape({-1}).to(dst.dtype()));
  };
  flat_.m.fill(0);
  flat_.v.fill(0);
  flat_.shards->layout().for_each_owned(d, [&](const parallel::FlatParam& p, int64_t first, int64_t count,
                                                int64_t local) {
    put(flat_.m, local, reader.replicated("exp_avg", p.name, first - p.offset, count));
    put(flat_.v, local, reader.replicated("exp_avg_sq", p.name, first - p.offset, count));
  });
  if (experts_.shards) {
    // This rank's part of its EP slice of each expert tensor, from wherever the checkpoint has it.
    experts_.m.fill(0);
    experts_.v.fill(0);
    experts_.shards->layout().for_each_owned(d, [&](const parallel::FlatParam& p, int64_t first, int64_t count,
                                                     int64_t local) {
      const int64_t held = p.shape[0];
      for (auto [kind, dst] : {std::pair<const char*, Tensor*>{"exp_avg", &experts_.m}, {"exp_avg_sq", &experts_.v}}) {
        const Tensor slice = reader.experts(kind, p.name, mesh_.coord().ep * held, held);
        put(*dst, local, slice.reshape({-1}).slice0(first - p.offset, count));
      }
    });
  }
  step_ = steps_taken;
  gather_parameters();  // the loaded weights are whole; each family takes its slices from them
  const model::ParamStore& source = master_source ? *master_source : params_;
  flat_.shards->load_master(source);
  if (experts_.shards) experts_.shards->load_master(source);
}

void ShardedAdamW::copy_masters_to(model::ParamStore& dest) {
  for (Family* f : {&flat_, &experts_}) {
    if (!f->shards) continue;
    const parallel::FlatLayout& l = f->shards->layout();
    const Tensor whole = f->shards->gather_flat(f->shards->master_values()).to(Device::CPU);
    for (const parallel::FlatParam& p : l.params) {
      G4_CHECK(dest.has(p.name), "copy_masters_to: the destination has no parameter '", p.name, "'");
      Tensor& dst = dest.at(p.name).mutable_value();
      G4_CHECK(dst.device() == Device::CPU && dst.dtype() == whole.dtype() && dst.shape() == p.shape,
               "copy_masters_to: '", p.name, "' is ", dst.describe(), " in the destination, but the master is ",
               dtype_name(whole.dtype()), shape_str(p.shape), " (the destination must be a CPU store of the master's "
               "dtype)");
      dst.copy_from(whole.slice0(p.offset, p.numel).reshape(p.shape));
    }
  }
}

}  // namespace g4::train

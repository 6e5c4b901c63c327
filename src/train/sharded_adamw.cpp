#include "train/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "parallel/data_parallel.h"

namespace g4::train {

ShardedAdamW::ShardedAdamW(model::ParamStore& params, parallel::DeviceMesh& mesh,
                           const std::vector<std::string>& trainable, const std::set<std::string>& no_decay,
                           AdamWOptions options)
    : params_(params), mesh_(mesh), opt_(options) {
  init(trainable, no_decay, {});
}

ShardedAdamW::ShardedAdamW(model::Gemma4& model, parallel::DeviceMesh& mesh, const std::vector<std::string>& trainable,
                           const std::set<std::string>& no_decay, AdamWOptions options)
    : params_(model.params()), mesh_(mesh), opt_(options) {
  init(trainable, no_decay, model.parameter_blocks());
  std::vector<parallel::ShardedParameters*> families{flat_.shards.get()};
  if (experts_.shards) families.push_back(experts_.shards.get());
  parallel::enable_sharded_parameters(model, families);
}

void ShardedAdamW::Family::init(const std::set<std::string>& no_decay, int64_t dp_rank) {
  const parallel::FlatLayout& l = shards->layout();
  m = Tensor::zeros({l.shard_size()}, shards->dtype());
  v = Tensor::zeros({l.shard_size()}, shards->dtype());
  // Per element of the slice: 1 where its parameter takes weight decay (the padding takes none).
  decay_mask.assign(static_cast<size_t>(l.shard_size()), 0);
  l.for_each_owned(dp_rank, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
    if (!no_decay.count(p.name)) std::fill_n(decay_mask.begin() + local, count, uint8_t{1});
  });
}

void ShardedAdamW::init(const std::vector<std::string>& trainable, const std::set<std::string>& no_decay,
                        const std::vector<std::vector<std::string>>& blocks) {
  std::vector<std::string> flat;
  for (const std::string& n : trainable) (model::split_by_expert(params_.kind(n)) ? expert_names_ : flat).push_back(n);
  flat_.shards = std::make_unique<parallel::ShardedParameters>(params_, flat, mesh_, blocks);
  flat_.init(no_decay, mesh_.dp_group().rank());
  if (!expert_names_.empty()) {
    num_experts_ = params_.at(expert_names_.front()).value().size(0) * mesh_.shape().ep;
    experts_.shards = std::make_unique<parallel::ShardedParameters>(params_, expert_names_, mesh_, blocks,
                                                                    parallel::ShardedParameters::Kind::Experts);
    experts_.init(no_decay, mesh_.dp_group().rank());
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
double sum_squares(const Tensor& t, int64_t begin, int64_t count) {
  return t.dtype() == DType::F64 ? sum_squares(t.data<double>() + begin, count)
                                 : sum_squares(t.data<float>() + begin, count);
}
}  // namespace

double ShardedAdamW::clip_grad_norm(double max_norm) {
  // As clip_grad_norm (adamw.h): torch's norm of the per-tensor norms, each rounded to the
  // gradient's dtype. A parameter may span several slices, so its squared norm is the sum of the
  // slices' parts over dp before it is rounded. Expert tensors are also split over ep: their
  // squared norms are summed over the EP group instead (no per-tensor rounding is possible).
  const bool f64 = flat_.shards->dtype() == DType::F64;
  G4_CHECK(flat_.shards->grad().defined(), "ShardedAdamW::clip_grad_norm: call reduce_gradients() first");
  const parallel::FlatLayout& l = flat_.shards->layout();
  const size_t nf = l.params.size(), ne = experts_.shards ? experts_.shards->layout().params.size() : 0;
  // One all-reduce over dp for the parts of both families.
  Tensor per_param = Tensor::zeros({static_cast<int64_t>(nf + ne) + 1}, DType::F64);
  double* sq = per_param.data<double>();
  const int64_t d = mesh_.dp_group().rank();
  l.for_each_owned(d, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
    sq[&p - l.params.data()] += sum_squares(flat_.shards->grad(), local, count);
  });
  if (experts_.shards) {
    const parallel::FlatLayout& le = experts_.shards->layout();
    le.for_each_owned(d, [&](const parallel::FlatParam& p, int64_t, int64_t count, int64_t local) {
      sq[nf + static_cast<size_t>(&p - le.params.data())] += sum_squares(experts_.shards->grad(), local, count);
    });
  }
  if (mesh_.dp_group().size() > 1) mesh_.dp_group().all_reduce(per_param);
  double total_sq = 0;
  for (size_t i = 0; i < nf; ++i) total_sq += rounded_square(sq[i], f64);
  const bool ep = mesh_.ep_group().size() > 1;
  if (ep) {
    double expert_sq = 0;
    for (size_t i = 0; i < ne; ++i) expert_sq += sq[nf + i];
    Tensor t = Tensor::from_vector<double>({expert_sq}, {1});
    mesh_.ep_group().all_reduce(t);
    total_sq += t.data<double>()[0];
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
    adamw_update_flat(f->shards->master(), f->m, f->v, f->shards->grad(), f->decay_mask, lr, opt_, step_);
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
    if (f->shards) n += f->shards->master().numel() + f->m.numel() + f->v.numel();
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

void ShardedAdamW::load_state(const OptimizerStateReader& reader, int64_t steps_taken) {
  const int64_t d = mesh_.dp_group().rank();
  auto put = [](Tensor& dst, int64_t local, const Tensor& part) {
    std::memcpy(static_cast<char*>(dst.raw()) + static_cast<size_t>(local) * dtype_size(dst.dtype()),
                part.to(dst.dtype()).raw(), static_cast<size_t>(part.numel()) * dtype_size(dst.dtype()));
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
  flat_.shards->reload_master();
  if (experts_.shards) experts_.shards->reload_master();
}

}  // namespace g4::train

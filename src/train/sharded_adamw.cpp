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
  std::vector<std::string> flat;
  for (const std::string& n : trainable) (model::is_expert_parameter(n) ? expert_names_ : flat).push_back(n);
  shards_ = std::make_unique<parallel::ShardedParameters>(params, flat, mesh);
  experts_ = std::make_unique<AdamW>(params, expert_names_, no_decay, options);
  if (!expert_names_.empty())
    num_experts_ = params.at(expert_names_.front()).value().size(0) * mesh.shape().ep;
  const parallel::FlatLayout& l = shards_->layout();
  m_ = Tensor::zeros({l.shard_size()}, shards_->dtype());
  v_ = Tensor::zeros({l.shard_size()}, shards_->dtype());
  // Per element of the slice: 1 where its parameter takes weight decay (the padding takes none).
  decay_mask_.assign(static_cast<size_t>(l.shard_size()), 0);
  const int64_t begin = shards_->shard_begin(), end = begin + l.shard_size();
  for (const parallel::FlatParam& p : l.params) {
    if (no_decay.count(p.name)) continue;
    for (int64_t j = std::max(begin, p.offset); j < std::min(end, p.offset + p.numel); ++j)
      decay_mask_[static_cast<size_t>(j - begin)] = 1;
  }
}

void ShardedAdamW::reduce_gradients() {
  shards_->reduce_scatter_gradients();
  parallel::reduce_expert_gradients(params_, mesh_);
  shards_->release();
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
void scale(Tensor& t, double coef64, float coef32) {
  if (t.dtype() == DType::F64) {
    double* d = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] *= coef64;
  } else {
    float* d = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] *= coef32;
  }
}
}  // namespace

double ShardedAdamW::clip_grad_norm(double max_norm) {
  // As clip_grad_norm (adamw.h): torch's norm of the per-tensor norms, each rounded to the
  // gradient's dtype. A flat parameter may span several slices, so its squared norm is the sum
  // of the slices' parts over dp before it is rounded.
  const parallel::FlatLayout& l = shards_->layout();
  const bool f64 = shards_->dtype() == DType::F64;
  const Tensor& g = shards_->grad();
  G4_CHECK(g.defined(), "ShardedAdamW::clip_grad_norm: call reduce_gradients() first");
  const int64_t begin = shards_->shard_begin(), end = begin + l.shard_size();
  Tensor per_param = Tensor::zeros({static_cast<int64_t>(l.params.size()) + 1}, DType::F64);
  double* sq = per_param.data<double>();
  for (size_t i = 0; i < l.params.size(); ++i) {
    const parallel::FlatParam& p = l.params[i];
    const int64_t a = std::max(begin, p.offset), b = std::min(end, p.offset + p.numel);
    if (a < b) sq[i] = sum_squares(g, a - begin, b - a);
  }
  if (mesh_.dp_group().size() > 1) mesh_.dp_group().all_reduce(per_param);
  double total_sq = 0;
  for (size_t i = 0; i < l.params.size(); ++i) {
    const double rounded = f64 ? std::sqrt(sq[i]) : static_cast<float>(std::sqrt(sq[i]));
    total_sq += rounded * rounded;
  }
  // Experts: whole tensors without expert parallelism, slices summed over the EP group with it.
  const bool ep = mesh_.ep_group().size() > 1;
  double expert_sq = 0;
  for (const std::string& n : expert_names_) {
    const Tensor& eg = params_.at(n).grad();
    if (!eg.defined()) continue;
    const double s = sum_squares(eg, 0, eg.numel());
    if (ep) {
      expert_sq += s;
    } else {
      const double rounded = f64 ? std::sqrt(s) : static_cast<float>(std::sqrt(s));
      total_sq += rounded * rounded;
    }
  }
  if (ep) {
    Tensor t = Tensor::from_vector<double>({expert_sq}, {1});
    mesh_.ep_group().all_reduce(t);
    total_sq += t.data<double>()[0];
  }
  const double total = f64 ? std::sqrt(total_sq) : static_cast<float>(std::sqrt(total_sq));
  if (max_norm > 0) {
    const double coef64 = std::min(1.0, max_norm / (total + 1e-6));
    const float coef32 = std::min(1.0f, static_cast<float>(max_norm) / (static_cast<float>(total) + 1e-6f));
    scale(shards_->grad(), coef64, coef32);
    for (const std::string& n : expert_names_) {
      ag::Var& v = params_.at(n);
      if (v.grad().defined()) scale(v.owned_grad(), coef64, coef32);
    }
  }
  return total;
}

void ShardedAdamW::step(double lr) {
  ++step_;
  adamw_update_flat(shards_->master(), m_, v_, shards_->grad(), decay_mask_, lr, opt_, step_);
  experts_->step(lr);
  shards_->grad() = Tensor();
}

int64_t ShardedAdamW::state_numel() const {
  int64_t n = shards_->master().numel() + m_.numel() + v_.numel();
  for (const auto& [name, t] : experts_->state()) n += t.numel();
  return n;
}

std::vector<std::pair<std::string, Tensor>> ShardedAdamW::checkpoint_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  const parallel::MeshCoord c = mesh_.coord();
  if (c.ep == 0 && c.cp == 0) {
    out.emplace_back("flat.exp_avg", m_);
    out.emplace_back("flat.exp_avg_sq", v_);
  }
  if (c.dp == 0 && c.cp == 0)
    for (auto& t : experts_->state()) out.push_back(std::move(t));
  return out;
}

std::string ShardedAdamW::checkpoint_metadata() const {
  const parallel::MeshShape& s = mesh_.shape();
  const nlohmann::json j = {{"format", kShardedOptimizerFormat},
                            {"mesh", {{"dp", s.dp_shard}, {"ep", s.ep}, {"cp", s.cp}}},
                            {"dtype", dtype_name(shards_->dtype())},
                            {"flat", shards_->layout().to_json()},
                            {"experts", {{"num_experts", num_experts_}, {"names", expert_names_}}}};
  return j.dump();
}

void ShardedAdamW::load_state(const OptimizerStateReader& reader, int64_t steps_taken) {
  const parallel::FlatLayout& l = shards_->layout();
  const int64_t begin = shards_->shard_begin(), end = begin + l.shard_size();
  m_.fill(0);
  v_.fill(0);
  for (const parallel::FlatParam& p : l.params) {
    const int64_t a = std::max(begin, p.offset), b = std::min(end, p.offset + p.numel);
    if (a >= b) continue;
    for (auto [kind, dst] : {std::pair<const char*, Tensor*>{"exp_avg", &m_}, {"exp_avg_sq", &v_}}) {
      const Tensor part = reader.replicated(kind, p.name, a - p.offset, b - a).to(dst->dtype());
      std::memcpy(static_cast<char*>(dst->raw()) + static_cast<size_t>(a - begin) * dtype_size(dst->dtype()),
                  part.raw(), part.nbytes());
    }
  }
  std::vector<std::pair<std::string, Tensor>> named;
  for (const std::string& n : expert_names_) {
    const int64_t count = params_.at(n).value().size(0);
    for (const char* kind : {"exp_avg", "exp_avg_sq"})
      named.emplace_back(std::string(kind) + "." + n, reader.experts(kind, n, mesh_.coord().ep * count, count));
  }
  experts_->load_state(named, steps_taken);
  step_ = steps_taken;
  shards_->reload_master();
}

}  // namespace g4::train

#include "train/adamw.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "ops/elementwise.h"
#include "ops/optim.h"
#include "parallel/communicator.h"

namespace g4::train {

AdamW::AdamW(model::ParamStore& params, std::vector<std::string> trainable, std::set<std::string> no_decay,
             AdamWOptions options)
    : params_(params), names_(std::move(trainable)), no_decay_(std::move(no_decay)), opt_(options) {
  for (const std::string& n : names_) {
    const Tensor& p = params_.at(n).value();
    G4_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64 || p.dtype() == DType::BF16,
             "AdamW updates f32 (or f64) parameters, or bf16 ones through f32 masters; parameter ", n, " is ",
             p.describe());
    const DType master_dtype = p.dtype() == DType::BF16 ? DType::F32 : p.dtype();
    // A bf16 parameter's master starts as its exact f32 value: the copy it came from was rounded
    // once, so nothing is lost that the model ever had (a zero remainder joins to that value too).
    const bool remainders = opt_.store_param_remainders && p.dtype() == DType::BF16;
    master_.push_back(p.dtype() == DType::BF16 && !remainders ? p.to(DType::F32) : Tensor());
    remainder_.push_back(remainders ? Tensor::zeros(p.shape(), DType::I16, p.device()) : Tensor());
    auto [m, v] = zero_moments(opt_, p.shape(), master_dtype, p.device(), "parameter " + n + " " + p.describe());
    m_.push_back(std::move(m));
    v_.push_back(std::move(v));
  }
}

std::pair<Tensor, Tensor> zero_moments(const AdamWOptions& opt, const Shape& shape, DType master_dtype, Device device,
                                       const std::string& what) {
  const auto zeros = [&](DType dtype, const char* key) {
    G4_CHECK(dtype == master_dtype || (dtype == DType::BF16 && master_dtype == DType::F32),
             "AdamW keeps its moments in the master's dtype or bf16 beside f32 masters, not ", dtype_name(dtype),
             " (optimizer.", key, ") for ", what, ", whose master is ", dtype_name(master_dtype));
    return Tensor::zeros(shape, dtype, device);
  };
  return {zeros(opt.exp_avg_dtype == DType::F32 ? master_dtype : opt.exp_avg_dtype, "exp_avg_dtype"),
          zeros(opt.exp_avg_sq_dtype == DType::F32 ? master_dtype : opt.exp_avg_sq_dtype, "exp_avg_sq_dtype")};
}

Tensor AdamW::master(size_t i) const {
  const Tensor& p = params_.at(names_[i]).value();
  if (remainder_[i].defined()) return ops::join_master(p.to(Device::CPU), remainder_[i].to(Device::CPU));
  return master_[i].defined() ? master_[i] : p;
}

void load_parameter_values(const model::ParamStore& source, model::ParamStore& dest) {
  for (const std::string& n : dest.order) {
    G4_CHECK(source.has(n), "load_parameters: the source has no parameter '", n, "'");
    const Tensor& src = source.at(n).value();
    Tensor& dst = dest.at(n).mutable_value();
    // Undefined in dest: a sharded parameter released; in source: a frozen weight whose f32 value
    // a GPU run does not keep (its copy was loaded straight onto the device).
    if (!dst.defined() || !src.defined()) continue;
    G4_CHECK(src.shape() == dst.shape(), "load_parameters: '", n, "' is ", src.describe(), " in the source but ",
             dst.describe(), " in the model");
    G4_CHECK(src.device() == Device::CPU && (src.dtype() == DType::F32 || src.dtype() == DType::F64),
             "load_parameters: the source of '", n, "' must be an f32 or f64 CPU tensor, got ", src.describe());
    // Converted on the host, then copied: bf16 rounding is round-to-nearest-even on both devices,
    // so a copy set here equals the one AdamW's kernel writes from the same master.
    dst.copy_from(src.to(dst.dtype()));
  }
  dest.buffers.clear();
  for (const auto& [n, b] : source.buffers) dest.set_buffer(n, b.kind, b.value.clone());
}

void AdamW::load_parameters(const model::ParamStore& source) {
  for (const std::string& n : params_.order)
    G4_CHECK(params_.at(n).value().defined(), "load_parameters: parameter '", n, "' has no value");
  load_parameter_values(source, params_);
  for (size_t i = 0; i < names_.size(); ++i) {
    if (!master_[i].defined() && !remainder_[i].defined()) continue;
    const Tensor& src = source.at(names_[i]).value();
    G4_CHECK(src.defined(), "load_parameters: the source holds no value for the trainable parameter '", names_[i],
             "' (its master starts from it)");
    if (master_[i].defined()) {
      master_[i].copy_from(src.to(DType::F32));
      continue;
    }
    // The master split into the parameter's bits (rounded with ties away from zero) and remainder.
    const ops::SplitMaster split = ops::split_master(src.to(DType::F32));
    params_.at(names_[i]).mutable_value().copy_from(split.param);
    remainder_[i].copy_from(split.remainder);
  }
}

void AdamW::copy_masters_to(model::ParamStore& dest) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    G4_CHECK(dest.has(names_[i]), "copy_masters_to: the destination has no parameter '", names_[i], "'");
    Tensor& dst = dest.at(names_[i]).mutable_value();
    const Tensor m = master(i);
    G4_CHECK(dst.device() == Device::CPU && dst.shape() == m.shape() && dst.dtype() == m.dtype(),
             "copy_masters_to: '", names_[i], "' is ", dst.describe(), " in the destination, but the master is ",
             m.describe(), " (the destination must be a CPU store of the master's dtype)");
    dst.copy_from(m);
  }
}

namespace {
ops::AdamWHyper hyper(const AdamWOptions& opt, double lr, int64_t step) {
  ops::AdamWHyper h;
  h.lr = lr;
  h.beta1 = opt.beta1;
  h.beta2 = opt.beta2;
  h.eps = opt.eps;
  h.weight_decay = opt.weight_decay;
  h.step = step;
  return h;
}
}  // namespace

void AdamW::step(double lr, double grad_scale) {
  ++step_;
  ops::AdamWHyper h = hyper(opt_, lr, step_);
  h.grad_scale = grad_scale;
  for (size_t i = 0; i < names_.size(); ++i) {
    ag::Var& var = params_.at(names_[i]);
    // An undefined gradient counts as zero (the op's contract).
    const bool decay = no_decay_.count(names_[i]) == 0;
    if (remainder_[i].defined())
      ops::adamw_step_remainders(var.mutable_value(), remainder_[i], var.grad(), m_[i], v_[i], h, decay);
    else if (master_[i].defined())
      ops::adamw_step(master_[i], var.grad(), m_[i], v_[i], h, decay, {}, {}, &var.mutable_value());
    else
      ops::adamw_step(var.mutable_value(), var.grad(), m_[i], v_[i], h, decay);
  }
}

void adamw_update_flat(Tensor& p, Tensor& m, Tensor& v, const Tensor& g, const Tensor& decay_mask, double lr,
                       const AdamWOptions& opt, int64_t step, Tensor* compute_out) {
  G4_CHECK(decay_mask.numel() == p.numel(), "adamw_update_flat: the weight-decay mask has ", decay_mask.numel(),
           " elements, the weights ", p.numel());
  ops::adamw_step(p, g, m, v, hyper(opt, lr, step), /*decay=*/true, decay_mask, {}, compute_out);
}

void adamw_update_flat_remainders(Tensor& p, Tensor& remainder, Tensor& m, Tensor& v, const Tensor& g,
                                  const Tensor& decay_mask, double lr, const AdamWOptions& opt, int64_t step) {
  G4_CHECK(decay_mask.numel() == p.numel(), "adamw_update_flat_remainders: the weight-decay mask has ",
           decay_mask.numel(), " elements, the weights ", p.numel());
  ops::adamw_step_remainders(p, remainder, g, m, v, hyper(opt, lr, step), /*decay=*/true, decay_mask);
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, Tensor>> s;
  for (size_t i = 0; i < names_.size(); ++i) {
    s.emplace_back("exp_avg." + names_[i], m_[i]);
    s.emplace_back("exp_avg_sq." + names_[i], v_[i]);
  }
  return s;
}

void AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& state, int64_t steps_taken) {
  std::map<std::string, Tensor> by_name(state.begin(), state.end());
  for (size_t i = 0; i < names_.size(); ++i) {
    for (auto [prefix, dst] : {std::pair<const char*, Tensor*>{"exp_avg.", &m_[i]}, {"exp_avg_sq.", &v_[i]}}) {
      auto it = by_name.find(prefix + names_[i]);
      G4_CHECK(it != by_name.end(), "optimizer state has no '", prefix, names_[i], "'");
      G4_CHECK(it->second.shape() == dst->shape(), "optimizer state '", prefix, names_[i], "' is ",
               it->second.describe(), ", expected ", shape_str(dst->shape()));
      dst->copy_from(it->second.to(dst->dtype()));
    }
  }
  step_ = steps_taken;
}

namespace {
template <class T>
double sum_squares(const Tensor& g) {
  double sq = 0;
  const T* d = g.data<T>();
  for (int64_t i = 0; i < g.numel(); ++i) sq += static_cast<double>(d[i]) * static_cast<double>(d[i]);
  return sq;
}

// On the GPU: the squared norms are summed on the device and the total comes back once (the one
// synchronisation of the optimizer step: the clipping coefficient is needed on the host).
double device_grad_norm(model::ParamStore& params, const std::vector<std::string>& names,
                        parallel::Communicator* expert_group) {
  Tensor replicated, experts;
  for (const std::string& n : names) {
    const Tensor& g = params.at(n).grad();
    if (!g.defined()) continue;
    Tensor& acc = expert_group && model::split_by_expert(params.kind(n)) ? experts : replicated;
    if (acc.defined())
      ops::add_(acc, ops::squared_norm(g));
    else
      acc = ops::squared_norm(g);
  }
  double total_sq = replicated.defined() ? replicated.item() : 0.0;
  if (expert_group) {
    Tensor t = Tensor::from_vector<double>({experts.defined() ? experts.item() : 0.0}, {1});
    parallel::all_reduce_values(*expert_group, t);
    total_sq += t.data<double>()[0];
  }
  return std::sqrt(total_sq);
}

// On the CPU, torch's arithmetic: the norm of the per-tensor norms, each rounded to the
// gradient's dtype.
double host_grad_norm(model::ParamStore& params, const std::vector<std::string>& names,
                      parallel::Communicator* expert_group, bool& f64) {
  double total_sq = 0, expert_sq = 0;
  for (const std::string& n : names) {
    const Tensor& g = params.at(n).grad();
    if (!g.defined()) continue;
    f64 = g.dtype() == DType::F64;
    const double sq = f64 ? sum_squares<double>(g) : sum_squares<float>(g);
    if (expert_group && model::split_by_expert(params.kind(n))) {
      expert_sq += sq;  // a slice of an expert tensor: its square is summed over the group below
      continue;
    }
    total_sq += rounded_square(sq, f64);
  }
  if (expert_group) {
    Tensor t = Tensor::from_vector<double>({expert_sq}, {1});
    parallel::all_reduce_values(*expert_group, t);
    total_sq += t.data<double>()[0];
  }
  return f64 ? std::sqrt(total_sq) : static_cast<float>(std::sqrt(total_sq));
}
}  // namespace

double rounded_square(double sq, bool f64) {
  const double r = f64 ? std::sqrt(sq) : static_cast<float>(std::sqrt(sq));
  return r * r;
}

double clip_coefficient(double norm, double max_norm, bool f32) {
  if (max_norm <= 0) return 1.0;
  if (f32) return std::min(1.0f, static_cast<float>(max_norm) / (static_cast<float>(norm) + 1e-6f));
  return std::min(1.0, max_norm / (norm + 1e-6));
}

void scale_gradient(Tensor& g, double coef) {
  if (g.device() != Device::CPU) {
    ops::scale_(g, coef);
  } else if (g.dtype() == DType::F64) {
    double* d = g.data<double>();
    for (int64_t i = 0; i < g.numel(); ++i) d[i] *= coef;
  } else {
    float* d = g.data<float>();
    const float c = static_cast<float>(coef);
    for (int64_t i = 0; i < g.numel(); ++i) d[i] *= c;
  }
}

GradNorm grad_norm_and_scale(model::ParamStore& params, const std::vector<std::string>& names, double max_norm,
                             parallel::Communicator* expert_group) {
  G4_CHECK(!names.empty(), "grad_norm_and_scale: no parameters");
  bool on_device = false;
  for (const std::string& n : names) {
    const Tensor& g = params.at(n).grad();
    if (!g.defined()) continue;
    on_device = g.device() != Device::CPU;
    break;
  }
  GradNorm r;
  // The GPU sums in f64 whatever the gradients' dtype; the CPU rounds as torch does.
  bool f64 = on_device;
  r.norm = on_device ? device_grad_norm(params, names, expert_group) : host_grad_norm(params, names, expert_group, f64);
  r.scale = clip_coefficient(r.norm, max_norm, /*f32=*/!f64);
  return r;
}

double clip_grad_norm(model::ParamStore& params, const std::vector<std::string>& names, double max_norm,
                      parallel::Communicator* expert_group) {
  const GradNorm gn = grad_norm_and_scale(params, names, max_norm, expert_group);
  if (gn.scale < 1.0)
    for (const std::string& n : names)
      if (params.at(n).grad().defined()) scale_gradient(params.at(n).owned_grad(), gn.scale);
  return gn.norm;
}

std::set<std::string> no_weight_decay(const model::ParamStore& params, const io::ModelConfig& cfg) {
  std::set<std::string> out;
  for (const std::string& n : params.order) {
    const model::ParamKind k = params.kind(n);
    if (model::is_embedding(k) || k == model::ParamKind::kNorm || k == model::ParamKind::kRouterScale) out.insert(n);
  }
  return out;
}

}  // namespace g4::train

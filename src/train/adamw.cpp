#include "train/adamw.h"

#include <cmath>
#include <map>

#include "parallel/communicator.h"

namespace g4::train {

AdamW::AdamW(model::ParamStore& params, std::vector<std::string> trainable, std::set<std::string> no_decay,
             AdamWOptions options)
    : params_(params), names_(std::move(trainable)), no_decay_(std::move(no_decay)), opt_(options) {
  for (const std::string& n : names_) {
    const Tensor& p = params_.at(n).value();
    G4_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64,
             "AdamW keeps f32 (or f64) master weights; parameter ", n, " is ", p.describe());
    m_.push_back(Tensor::zeros(p.shape(), p.dtype()));
    v_.push_back(Tensor::zeros(p.shape(), p.dtype()));
  }
}

namespace {
// One tensor's update, in the parameter's precision, in torch's operation order.
// decay_mask (optional): element j takes weight decay only where decay_mask[j] is nonzero.
template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, int64_t n, double lr, double decay, double b1, double b2, double eps,
                  double step_size, double bc2_sqrt, const uint8_t* decay_mask = nullptr) {
  const T tb1 = static_cast<T>(b1), tb2 = static_cast<T>(b2), teps = static_cast<T>(eps);
  const T tstep = static_cast<T>(step_size), tc2 = static_cast<T>(bc2_sqrt), tdecay = static_cast<T>(decay);
#pragma omp parallel for if (n > 65536)
  for (int64_t j = 0; j < n; ++j) {
    const T gj = g ? g[j] : T(0);
    p[j] *= (!decay_mask || decay_mask[j]) ? tdecay : T(1);
    m[j] += (gj - m[j]) * (T(1) - tb1);  // torch's lerp form
    v[j] = v[j] * tb2 + (T(1) - tb2) * gj * gj;
    const T denom = std::sqrt(v[j]) / tc2 + teps;
    p[j] -= tstep * m[j] / denom;
  }
}
}  // namespace

void AdamW::step(double lr) {
  ++step_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(opt_.beta2, static_cast<double>(step_)));
  for (size_t i = 0; i < names_.size(); ++i) {
    ag::Var& var = params_.at(names_[i]);
    const Tensor& g = var.grad();
    const int64_t n = var.value().numel();
    const double decay = no_decay_.count(names_[i]) ? 1.0 : 1.0 - lr * opt_.weight_decay;
    if (var.value().dtype() == DType::F64)
      adamw_update(var.mutable_value().data<double>(), m_[i].data<double>(), v_[i].data<double>(),
                   g.defined() ? g.data<double>() : nullptr, n, lr, decay, opt_.beta1, opt_.beta2, opt_.eps, lr / bc1,
                   bc2_sqrt);
    else
      adamw_update(var.mutable_value().data<float>(), m_[i].data<float>(), v_[i].data<float>(),
                   g.defined() ? g.data<float>() : nullptr, n, lr, decay, opt_.beta1, opt_.beta2, opt_.eps, lr / bc1,
                   bc2_sqrt);
  }
}

void adamw_update_flat(Tensor& p, Tensor& m, Tensor& v, const Tensor& g, const std::vector<uint8_t>& decay_mask,
                       double lr, const AdamWOptions& opt, int64_t step) {
  const int64_t n = p.numel();
  G4_CHECK(step >= 1, "adamw_update_flat: step counts from 1, got ", step);
  G4_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64, "adamw_update_flat: weights are ", p.describe());
  for (const Tensor* t : {&m, &v})
    G4_CHECK(t->dtype() == p.dtype() && t->numel() == n, "adamw_update_flat: moment ", t->describe(),
             " does not match weights ", p.describe());
  G4_CHECK(!g.defined() || (g.dtype() == p.dtype() && g.numel() == n), "adamw_update_flat: gradient ", g.describe(),
           " does not match weights ", p.describe());
  G4_CHECK(static_cast<int64_t>(decay_mask.size()) == n, "adamw_update_flat: the weight-decay mask has ",
           decay_mask.size(), " elements, the weights ", n);
  const double bc1 = 1.0 - std::pow(opt.beta1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(opt.beta2, static_cast<double>(step)));
  const double decay = 1.0 - lr * opt.weight_decay;
  if (p.dtype() == DType::F64)
    adamw_update(p.data<double>(), m.data<double>(), v.data<double>(), g.defined() ? g.data<double>() : nullptr, n,
                 lr, decay, opt.beta1, opt.beta2, opt.eps, lr / bc1, bc2_sqrt, decay_mask.data());
  else
    adamw_update(p.data<float>(), m.data<float>(), v.data<float>(), g.defined() ? g.data<float>() : nullptr, n, lr,
                 decay, opt.beta1, opt.beta2, opt.eps, lr / bc1, bc2_sqrt, decay_mask.data());
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
template <class T>
void scale_in_place(Tensor& g, T coef) {
  T* d = g.data<T>();
  for (int64_t i = 0; i < g.numel(); ++i) d[i] *= coef;
}
}  // namespace

double clip_grad_norm(model::ParamStore& params, const std::vector<std::string>& names, double max_norm,
                      parallel::Communicator* expert_group) {
  // torch: the norm of the per-tensor norms, each rounded to the gradient's dtype.
  double total_sq = 0, expert_sq = 0;
  bool f64 = false;
  for (const std::string& n : names) {
    const Tensor& g = params.at(n).grad();
    if (!g.defined()) continue;
    f64 = g.dtype() == DType::F64;
    const double sq = f64 ? sum_squares<double>(g) : sum_squares<float>(g);
    if (expert_group && model::is_expert_parameter(n)) {
      expert_sq += sq;  // a slice of an expert tensor: its square is summed over the group below
      continue;
    }
    const double rounded = f64 ? std::sqrt(sq) : static_cast<float>(std::sqrt(sq));
    total_sq += rounded * rounded;
  }
  if (expert_group) {
    Tensor t = Tensor::from_vector<double>({expert_sq}, {1});
    expert_group->all_reduce(t);
    total_sq += t.data<double>()[0];
  }
  const double total = f64 ? std::sqrt(total_sq) : static_cast<float>(std::sqrt(total_sq));
  if (max_norm > 0) {
    const double coef = std::min(1.0, max_norm / (total + 1e-6));
    for (const std::string& n : names) {
      ag::Var& v = params.at(n);
      if (!v.grad().defined()) continue;
      Tensor& g = v.owned_grad();
      if (g.dtype() == DType::F64)
        scale_in_place<double>(g, coef);
      else
        scale_in_place<float>(g, static_cast<float>(std::min(1.0f, static_cast<float>(max_norm) / (static_cast<float>(total) + 1e-6f))));
    }
  }
  return total;
}

std::set<std::string> no_weight_decay(const model::ParamStore& params, const io::ModelConfig& cfg) {
  std::set<std::string> out;
  for (const std::string& n : params.order) {
    const bool embedding = n.find("embed_tokens") != std::string::npos;
    const bool vector = params.at(n).value().dim() == 1;  // norms, router scale
    if (embedding || vector) out.insert(n);
  }
  return out;
}

}  // namespace g4::train

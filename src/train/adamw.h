// AdamW on fp32 master weights with fp32 moments, computed as torch.optim.AdamW does
// (decoupled weight decay, bias-corrected moments), plus global-norm gradient clipping as
// torch.nn.utils.clip_grad_norm_ computes it.
#pragma once
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model/params.h"

namespace g4::parallel {
class Communicator;
}

namespace g4::train {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  // Storage of the first and second moments (Transformer Engine FusedAdam's exp_avg_dtype and
  // exp_avg_sq_dtype): the master's dtype, or bf16 beside f32 masters, 2 bytes a parameter each
  // instead of 4. The update computes in f32 either way and rounds what it stores (ops/optim.h).
  DType exp_avg_dtype = DType::F32, exp_avg_sq_dtype = DType::F32;
  // A bf16 parameter's f32 master kept as the parameter's bits and a 16-bit remainder (FusedAdam's
  // store_param_remainders, ops/master_bits.h): the same master in 2 bytes a parameter instead of
  // 4, and a bf16 copy that differs from a rounded f32 master's only on exact ties. f32 (or f64)
  // parameters are their own masters and ignore it.
  bool store_param_remainders = false;
};

// Zero moments [exp_avg, exp_avg_sq] of `shape` on `device` for a master of `master_dtype`, each in
// the dtype `opt` stores it in (the master's, or bf16 beside an f32 master); any other choice is an
// error naming the recipe key and `what` (the parameter or shard).
std::pair<Tensor, Tensor> zero_moments(const AdamWOptions& opt, const Shape& shape, DType master_dtype, Device device,
                                       const std::string& what);

class AdamW {
 public:
  // `trainable` lists the parameters to update; `no_decay` those exempt from weight decay.
  AdamW(model::ParamStore& params, std::vector<std::string> trainable, std::set<std::string> no_decay,
        AdamWOptions options);

  // One update with learning rate lr from the parameters' current gradients (undefined
  // gradients count as zero).
  // grad_scale multiplies every gradient first (a clipping coefficient from grad_norm_and_scale:
  // applied inside the update, it costs no pass of its own over the gradients).
  void step(double lr, double grad_scale = 1.0);
  int64_t steps_taken() const { return step_; }
  // The fp32 master of trainable parameter i: the parameter itself unless it is stored in bf16, or
  // (store_param_remainders) a CPU tensor joined from the parameter and its remainder.
  Tensor master(size_t i) const;
  const std::vector<std::string>& trainable() const { return names_; }

  // Sets every parameter and buffer of the optimizer's store from `source` (a CPU f32 store with
  // the same names and shapes, e.g. a model loaded from a checkpoint): the fp32 masters of bf16
  // parameters exactly, the parameters themselves converted to their dtype and device. A bf16
  // model made from an f32 one starts training from the f32 values this way, not from their bf16
  // rounding (which is what the constructor takes). Frozen parameters `source` holds undefined
  // keep their values (see load_parameter_values).
  void load_parameters(const model::ParamStore& source);
  // Writes the fp32 value of every trainable parameter (its master, or the parameter itself when
  // it is f32/f64, from any device) into the same-named parameter of `dest` (a CPU store of that
  // dtype): what a checkpoint of a bf16 model exports. Parameters it does not train are left as
  // they are in dest: their bf16 copies hold less than the originals dest keeps.
  void copy_masters_to(model::ParamStore& dest) const;

  // Moments as named tensors ("exp_avg.<param>", "exp_avg_sq.<param>") and back.
  std::vector<std::pair<std::string, Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, Tensor>>& state, int64_t steps_taken);

 private:
  model::ParamStore& params_;
  std::vector<std::string> names_;
  std::set<std::string> no_decay_;
  AdamWOptions opt_;
  std::vector<Tensor> m_, v_;
  // fp32 masters of parameters stored in bf16 (the GPU model's compute copies); undefined where
  // the parameter is its own f32/f64 master. Each step updates the master and rewrites the copy.
  std::vector<Tensor> master_;
  // With store_param_remainders, in master_'s place: the i16 remainders of the bf16 parameters.
  std::vector<Tensor> remainder_;
  int64_t step_ = 0;
};

// The same update on flat tensors (a shard of many parameters, see parallel/fsdp.h): weights p,
// moments m, v and gradient g (undefined = zeros) of one length and device, at optimizer step
// `step` (counted from 1). Element j takes weight decay only where decay_mask[j] != 0 (a u8
// tensor of p's length on p's device). compute_out (optional): a bf16 tensor of p's length that
// receives the updated weights rounded (the compute copy of f32 masters).
void adamw_update_flat(Tensor& p, Tensor& m, Tensor& v, const Tensor& g, const Tensor& decay_mask, double lr,
                       const AdamWOptions& opt, int64_t step, Tensor* compute_out = nullptr);
// The same for f32 masters kept as bf16 weights p (the compute copy) plus i16 remainders
// (AdamWOptions::store_param_remainders).
void adamw_update_flat_remainders(Tensor& p, Tensor& remainder, Tensor& m, Tensor& v, const Tensor& g,
                                  const Tensor& decay_mask, double lr, const AdamWOptions& opt, int64_t step);

// Sets every parameter and buffer of `dest` from `source` (a CPU f32/f64 store with the same names
// and shapes), each converted to its dtype and device: how a bf16 GPU model takes the values of
// its f32 original. Parameters that are not defined in dest (sharded ones released), or in source
// (frozen weights a GPU run keeps on the device only), are skipped.
void load_parameter_values(const model::ParamStore& source, model::ParamStore& dest);

// Global-norm gradient clipping with torch.nn.utils.clip_grad_norm_'s arithmetic, for every
// optimizer. On the CPU the norm is the norm of the per-tensor norms, each rounded to the
// gradient's dtype, and an f32 coefficient is computed in f32; on the GPU the squared norms are
// summed on the device in f64 and come back to the host once (the optimizer step's one
// synchronisation). With expert_group (expert parallelism; collective over it) the expert tensors
// are slices whose squared norms are summed over the group, so every rank gets the norm of the
// whole model.
struct GradNorm {
  double norm = 0;   // before clipping
  double scale = 1;  // the clipping coefficient: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0
};
// The norm and coefficient, without scaling: pass the coefficient to AdamW::step (free on the GPU).
GradNorm grad_norm_and_scale(model::ParamStore& params, const std::vector<std::string>& names, double max_norm,
                             parallel::Communicator* expert_group = nullptr);
// The same, then scales the gradients by the coefficient; returns the norm before clipping.
double clip_grad_norm(model::ParamStore& params, const std::vector<std::string>& names, double max_norm,
                      parallel::Communicator* expert_group = nullptr);
// The pieces, for optimizers that sum squared norms themselves (ShardedAdamW): a squared norm
// rounded as its tensor's norm is (f64 or f32), the coefficient, and the scaling of one gradient.
double rounded_square(double squared_norm, bool f64);
double clip_coefficient(double norm, double max_norm, bool f32);
void scale_gradient(Tensor& grad, double coef);

// Which parameters take weight decay: matrices and experts; not norms, scales or embeddings.
std::set<std::string> no_weight_decay(const model::ParamStore& params, const io::ModelConfig& cfg);

}  // namespace g4::train

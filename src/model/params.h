// The parameters of a Gemma 4 text decoder in g4's native layout: their names, shapes and the
// per-layer structure. Dense weights keep Hugging Face's [out, in] Linear layout; experts are
// stored for grouped GEMMs as [E, H, 2I] (gate | up) and [E, I, H] (per_expert_scale folded in).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "io/hf_config.h"

namespace g4::model {

// The routed experts a model holds: [begin, begin + count) of num_experts.
struct ExpertRange {
  int64_t begin = 0;
  int64_t count = 0;  // 0 = all experts
};

struct ParamSpec {
  std::string name;
  Shape shape;
  enum Kind { kMatrix, kNormWeight, kEmbedding, kExperts, kScale } kind;
};

// Every trainable parameter of the text decoder, in a fixed order.
std::vector<ParamSpec> native_param_specs(const io::ModelConfig& cfg, ExpertRange experts = {});

std::string layer_prefix(int64_t layer);  // "model.layers.<l>."
// True for the routed experts' weights (moe.experts.*), which expert parallelism splits over
// ranks; every other parameter is replicated.
bool is_expert_parameter(const std::string& native_name);

// Parameters (trainable: fp32 on the CPU, bf16 compute copies with f32 gradients on the GPU, whose
// fp32 masters the optimizer holds) and buffers (not trained: layer scalars, the
// per_expert_scale the checkpoint had, kept to express gradients in Hugging Face's layout).
struct ParamStore {
  std::vector<std::string> order;
  std::map<std::string, ag::Var> params;
  std::map<std::string, Tensor> buffers;

  ag::Var& at(const std::string& name);
  const ag::Var& at(const std::string& name) const;
  bool has(const std::string& name) const { return params.count(name) > 0; }
  void add(const std::string& name, Tensor value);
  int64_t numel() const;
  void zero_grad();
};

}  // namespace g4::model

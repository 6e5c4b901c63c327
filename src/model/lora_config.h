// LoRA's settings (recipes' lora.* keys, PEFT's adapter_config.json), apart from model/lora.h so
// that recipe parsing needs no model code: header-only, on core alone.
#pragma once
#include <cmath>
#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/regex.h"

namespace g4::model {

// The projections LoRA adapts by default: attention q/k/v/o and the dense MLP's gate/up/down. The
// routed experts' weights (experts.gate_up_proj, experts.down_proj) are adapted when named.
inline const std::vector<std::string> kDefaultLoraTargets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"};

// PEFT's rule for a list entry: the name equals it or ends with "." + entry.
inline bool peft_suffix_match(const std::string& name, const std::string& entry) {
  return name == entry ||
         (name.size() > entry.size() && name.compare(name.size() - entry.size(), entry.size(), entry) == 0 &&
          name[name.size() - entry.size() - 1] == '.');
}

struct LoraConfig {
  int64_t rank = 0;  // r; 0 = no adapters
  double alpha = 16;
  // On the adapter's input, in training forwards only (grad mode on), drawn from Philox.
  double dropout = 0;
  // PEFT's target_modules as a list: a module is adapted when its Hugging Face name equals an
  // entry or ends with "." + entry ("q_proj", "mlp.down_proj", ...). Empty: kDefaultLoraTargets.
  // Entries that end in "experts.gate_up_proj" or "experts.down_proj" select those routed-expert
  // weights instead (PEFT's target_parameters), also beside target_regex.
  std::vector<std::string> targets;
  // PEFT's target_modules as a string: a regular expression the whole module name must match.
  // Non-empty: used instead of targets.
  std::string target_regex;
  // PEFT's target_parameters (from an adapter_config.json): a routed-expert weight is adapted when its
  // Hugging Face name ("model.layers.0.experts.gate_up_proj") equals an entry or ends with "." + entry.
  std::vector<std::string> target_parameters;
  uint64_t seed = 0;  // of A's initialisation and of the dropout masks
  // adapter_config.json's base_model_name_or_path.
  std::string base_model;

  // The entries of targets that name routed-expert weights (see targets).
  std::vector<std::string> expert_targets() const {
    std::vector<std::string> out;
    for (const std::string& t : targets)
      if (peft_suffix_match(t, "experts.gate_up_proj") || peft_suffix_match(t, "experts.down_proj")) out.push_back(t);
    return out;
  }
  double scaling() const { return alpha / static_cast<double>(rank); }
};

// Checks rank, alpha, dropout and the target regex (`where` names the source in errors).
inline void validate_lora(const LoraConfig& lora, const std::string& where) {
  G4_CHECK(lora.rank > 0, where, ": LoRA rank must be > 0, got ", lora.rank);
  G4_CHECK(std::isfinite(lora.alpha) && lora.alpha > 0, where, ": LoRA alpha must be > 0, got ", lora.alpha);
  G4_CHECK(lora.dropout >= 0 && lora.dropout < 1, where, ": LoRA dropout must be in [0, 1), got ", lora.dropout);
  if (!lora.target_regex.empty())
    (void)compile_regex(lora.target_regex, std::regex::ECMAScript, where + ": LoRA target regex");
}

}  // namespace g4::model

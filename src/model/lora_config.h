// LoRA's settings (recipes' lora.* keys, PEFT's adapter_config.json), apart from model/lora.h so
// that recipe parsing needs no model code: header-only, on core alone.
#pragma once
#include <cmath>
#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include "core/error.h"

namespace g4::model {

// Every projection LoRA can adapt: attention q/k/v/o and the dense MLP's gate/up/down.
inline const std::vector<std::string> kDefaultLoraTargets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"};

struct LoraConfig {
  int64_t rank = 0;  // r; 0 = no adapters
  double alpha = 16;
  // On the adapter's input, in training forwards only (grad mode on), drawn from Philox.
  double dropout = 0;
  // PEFT's target_modules as a list: a module is adapted when its Hugging Face name equals an
  // entry or ends with "." + entry ("q_proj", "mlp.down_proj", ...). Empty: kDefaultLoraTargets.
  std::vector<std::string> targets;
  // PEFT's target_modules as a string: a regular expression the whole module name must match.
  // Non-empty: used instead of targets.
  std::string target_regex;
  uint64_t seed = 0;  // of A's initialisation and of the dropout masks
  // adapter_config.json's base_model_name_or_path.
  std::string base_model;

  double scaling() const { return alpha / static_cast<double>(rank); }
};

// Checks rank, alpha, dropout and the target regex (`where` names the source in errors).
inline void validate_lora(const LoraConfig& lora, const std::string& where) {
  G4_CHECK(lora.rank > 0, where, ": LoRA rank must be > 0, got ", lora.rank);
  G4_CHECK(std::isfinite(lora.alpha) && lora.alpha > 0, where, ": LoRA alpha must be > 0, got ", lora.alpha);
  G4_CHECK(lora.dropout >= 0 && lora.dropout < 1, where, ": LoRA dropout must be in [0, 1), got ", lora.dropout);
  if (!lora.target_regex.empty()) {
    try {
      (void)std::regex(lora.target_regex);
    } catch (const std::regex_error& e) {
      G4_FAIL(where, ": LoRA target regex '", lora.target_regex, "' is not a valid regular expression (", e.what(),
              ")");
    }
  }
}

}  // namespace g4::model

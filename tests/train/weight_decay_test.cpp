// The parameters exempt from weight decay, chosen by kind, are the ones the name-and-rank rule
// chose before kinds were stored: the embeddings and every 1-D tensor (norms, router scale).
#include <gtest/gtest.h>

#include <filesystem>

#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "support/hf_fixtures.h"
#include "train/adamw.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

std::set<std::string> old_rule(const model::ParamStore& params) {
  std::set<std::string> out;
  for (const std::string& n : params.order)
    if (n.find("embed_tokens") != std::string::npos || params.at(n).value().dim() == 1) out.insert(n);
  return out;
}

TEST(WeightDecay, ExemptionsByKindEqualTheOldRuleOnEveryFixture) {
  int checked = 0;
  for (const char* sub : {"/hf-gemma4", "/hf-gemma4-varied"})
    for (const auto& e : fs::directory_iterator(test::data_dir() + sub)) {
      if (!fs::exists(e.path() / "config.json")) continue;
      SCOPED_TRACE(e.path().string());
      const auto m = model::load_hf_model(e.path().string());
      const std::set<std::string> want = old_rule(m->params());
      EXPECT_FALSE(want.empty());
      EXPECT_EQ(train::no_weight_decay(m->params(), m->config()), want);
      ++checked;
    }
  EXPECT_GE(checked, 6);
}

// The built-in configs, the real shapes included: a store of each parameter's kind and rank (one
// element per dimension) is all either rule reads.
TEST(WeightDecay, ExemptionsByKindEqualTheOldRuleOnEveryNamedConfig) {
  for (const std::string& name : model::named_config_names()) {
    SCOPED_TRACE(name);
    const io::ModelConfig cfg = io::parse_model_config(model::named_config(name), name);
    model::ParamStore store;
    for (const model::ParamSpec& s : model::native_param_specs(cfg))
      store.add(s.name, s.kind, Tensor::zeros(Shape(s.shape.size(), 1), DType::F32));
    EXPECT_EQ(train::no_weight_decay(store, cfg), old_rule(store));
  }
}

}  // namespace
}  // namespace g4

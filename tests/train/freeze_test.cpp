// train.freeze on a multimodal checkpoint: tower name patterns freeze whole towers (their norms and
// projections into the text model included); a kind name freezes that kind alone.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/state_dict_adapter.h"
#include "support/test_paths.h"
#include "train/run_setup.h"

namespace g4 {
namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

TEST(Freeze, TowerPatternsFreezeTheWholeTowers) {
  const auto m = model::load_hf_model(test::data_dir() + "/hf-gemma4-mm/tiny-mm-e");
  const std::vector<std::string> towers = {"model.vision_tower.", "model.embed_vision.", "model.audio_tower.",
                                           "model.embed_audio."};
  std::vector<std::string> text;
  int64_t tower_params = 0;
  for (const std::string& n : m->params().order) {
    bool tower = false;
    for (const std::string& t : towers) tower = tower || starts_with(n, t);
    tower_params += tower;
    if (!tower) text.push_back(n);
  }
  EXPECT_GT(tower_params, 0);
  EXPECT_EQ(train::trainable_names(*m, {"model.vision_tower.*", "model.embed_vision.*", "model.audio_tower.*",
                                        "model.embed_audio.*"}),
            text);

  // Kind names: the audio tower's matrices and embed_audio freeze, its norms still train.
  std::vector<std::string> not_audio_kinds;
  for (const std::string& n : m->params().order) {
    const model::ParamKind k = m->params().kind(n);
    if (k != model::ParamKind::kAudioTower && k != model::ParamKind::kAudioEmbedding) not_audio_kinds.push_back(n);
  }
  EXPECT_EQ(train::trainable_names(*m, {"audio_tower", "audio_embedding"}), not_audio_kinds);
  EXPECT_LT(not_audio_kinds.size(), m->params().order.size());
  bool audio_norm_trains = false;
  for (const std::string& n : not_audio_kinds) audio_norm_trains = audio_norm_trains || starts_with(n, "model.audio_tower.");
  EXPECT_TRUE(audio_norm_trains);
}

}  // namespace
}  // namespace g4

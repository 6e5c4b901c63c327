// Where the Hugging Face fixtures live and the batch each was made with: the public fixtures in
// tests/data/hf-gemma4/, the ones tools/make_hf_fixtures.py made in shapes the engine was not
// written against (names starting "var-") in tests/data/hf-gemma4-varied/.
#pragma once
#include <string>

#include "io/safetensors.h"
#include "model/gemma4.h"
#include "support/test_paths.h"

namespace g4::test {

inline std::string hf_fixture_dir(const std::string& name) {
  const std::string sub = name.rfind("var-", 0) == 0 ? "/hf-gemma4-varied/" : "/hf-gemma4/";
  return data_dir() + sub + name;
}

// input_ids, attention_mask and labels of a fixture's reference.safetensors.
inline model::ForwardInputs hf_reference_inputs(const io::SafetensorsReader& ref) {
  model::ForwardInputs in;
  in.input_ids = ref.get("input_ids").clone();
  in.attention_mask = ref.get("attention_mask").clone();
  in.labels = ref.get("labels").clone();
  return in;
}

// The same with a multimodal fixture's media inputs (tests/data/hf-gemma4-mm): images, audio and
// the token types.
inline model::ForwardInputs hf_multimodal_inputs(const io::SafetensorsReader& ref) {
  model::ForwardInputs in = hf_reference_inputs(ref);
  in.mm_token_type_ids = ref.get("mm_token_type_ids").clone();
  in.pixel_values = ref.get("pixel_values").clone();
  in.image_position_ids = ref.get("image_position_ids").clone();
  in.input_features = ref.get("input_features").clone();
  in.input_features_mask = ref.get("input_features_mask").clone();
  return in;
}

}  // namespace g4::test

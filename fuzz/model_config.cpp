// config.json: parsed with the limits load_model_config applies, validated, resolved into the
// per-layer table, written back and read again (the export path).
#include "fuzz_common.h"
#include "io/hf_config.h"
#include "io/json_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::fuzz::expect_g4_errors_only([&] {
    const std::string source = "fuzz/config.json";
    const auto doc = g4::io::parse_json(g4::fuzz::as_view(data, size), "config " + source, g4::io::kMaxConfigBytes);
    g4::io::ModelConfig c = g4::io::parse_model_config(doc, source);
    c.raw = nullptr;  // written from the fields, not copied back
    const g4::io::ModelConfig again = g4::io::parse_model_config(g4::io::model_config_to_json(c), source);
    (void)again;
  });
  return 0;
}

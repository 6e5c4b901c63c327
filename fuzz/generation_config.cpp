// A diffusion checkpoint's generation_config.json: parse_json with the 1 MiB limit the checkpoint
// reader applies, then parse_generation_config, which must refuse what transformers' validate()
// refuses with a g4::Error and nothing else.
#include "diffusion/generation_config.h"

#include "fuzz_common.h"
#include "io/json_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g4::fuzz::expect_g4_errors_only([&] {
    const nlohmann::json j = g4::io::parse_json(g4::fuzz::as_view(data, size), "generation_config.json", 1 << 20);
    (void)g4::diffusion::parse_generation_config(j, "generation_config.json");
  });
  return 0;
}

// A recipe (YAML) with the checks load_recipe applies; when the input's first line looks like
// key=value it is also applied as a command-line override over a minimal valid recipe.
#include <algorithm>

#include "fuzz_common.h"
#include "train/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = g4::fuzz::as_view(data, size);
  g4::fuzz::expect_g4_errors_only([&] { (void)g4::train::recipe_from_yaml(bytes, "fuzz/recipe.yaml"); });
  const std::string first_line(bytes.substr(0, std::min(bytes.find('\n'), size_t(256))));
  if (first_line.find('=') != std::string::npos) {
    g4::fuzz::expect_g4_errors_only([&] {
      (void)g4::train::recipe_from_yaml("model: {name: tiny-dense}\ntokenizer: t.json\ndata: {train: d.txt}\n",
                                        "fuzz/recipe.yaml", {first_line});
    });
  }
  return 0;
}

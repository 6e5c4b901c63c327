// model.safetensors.index.json beside two small valid shards: the index is the fuzzed input.
#include "core/tensor.h"
#include "fuzz_common.h"
#include "io/safetensors.h"

namespace {

// The model directory, with its shards written once.
const std::string& model_dir() {
  static const std::string dir = [] {
    const auto d = g4::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(d);
    g4::Tensor a = g4::Tensor::zeros({2, 3}, g4::DType::F32);
    g4::Tensor b = g4::Tensor::zeros({4}, g4::DType::BF16);
    g4::io::save_safetensors((d / "model-00001-of-00002.safetensors").string(), {{"a.weight", a}});
    g4::io::save_safetensors((d / "model-00002-of-00002.safetensors").string(), {{"b.weight", b}});
    return d.string();
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = model_dir();
  const std::string index = dir + "/model.safetensors.index.json";
  std::ofstream(index, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data),
                                                                  static_cast<std::streamsize>(size));
  g4::fuzz::expect_g4_errors_only([&] {
    const auto reader = g4::io::SafetensorsReader::open(dir);
    for (const std::string& name : reader.names()) (void)reader.get(name);
  });
  return 0;
}

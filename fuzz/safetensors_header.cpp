// A whole .safetensors file (8-byte header length, JSON header, data): open it, then read every
// tensor as stored and, where it is floating point, as f32.
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = g4::fuzz::write_scratch("model.safetensors", g4::fuzz::as_view(data, size));
  g4::fuzz::expect_g4_errors_only([&] {
    const auto reader = g4::io::SafetensorsReader::open(path);
    for (const std::string& name : reader.names()) {
      const g4::io::TensorInfo& info = reader.info(name);
      g4::fuzz::expect_g4_errors_only([&] { (void)reader.get(name); });
      g4::fuzz::expect_g4_errors_only([&] { (void)reader.get_f32(name, info.shape); });
    }
  });
  return 0;
}

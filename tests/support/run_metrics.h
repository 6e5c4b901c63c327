// What the `g4 train` tests read back from a run directory: its metrics.jsonl records, the
// loss lines a resumed run must repeat exactly, and which checkpoint tensors kept their bits.
#pragma once
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace g4::test {

// Every record of a run's metrics.jsonl.
inline std::vector<nlohmann::json> records(const std::filesystem::path& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline std::vector<std::string> loss_lines(const std::filesystem::path& run_dir) {
  std::vector<std::string> lines;
  for (const nlohmann::json& j : records(run_dir)) {
    // Everything but timings must repeat exactly.
    if (j.contains("loss"))
      lines.push_back(std::to_string(j["step"].get<int>()) + " " + j["loss"].dump() + " " + j["grad_norm"].dump() +
                      " " + j["lr"].dump());
    if (j.contains("validation_loss")) lines.push_back("val " + j["validation_loss"].dump());
  }
  return lines;
}

// Which tensors of the checkpoints of steps 4 and 8 under run_dir kept their bits.
inline std::map<std::string, bool> unchanged_tensors(const std::filesystem::path& run_dir) {
  const auto early = io::SafetensorsReader::open((run_dir / "checkpoints" / "step-00000004").string());
  const auto late = io::SafetensorsReader::open((run_dir / "checkpoints" / "step-00000008").string());
  std::map<std::string, bool> out;
  for (const std::string& n : late.names()) {
    const Tensor a = early.get(n), b = late.get(n);
    out[n] = a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
  }
  return out;
}

}  // namespace g4::test

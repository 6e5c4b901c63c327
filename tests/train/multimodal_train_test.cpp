// `g4 train` on image + text chat data: recipes/multimodal/tiny-image-sft.yaml (tiny-mm-e on the
// example dataset) lowers the training loss, trains the vision tower, resumes to exactly the curve of
// the uninterrupted run, keeps towers frozen by pattern, and refuses context parallelism.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "support/g4_process.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using test::ProcessResult;

// The example recipe with absolute paths (tests run anywhere), 8 steps, checkpoints at 4 and 8.
std::string recipe_args(const fs::path& out) {
  const std::string src = test::source_dir(), data = src + "/recipes/multimodal/data";
  return "train " + src + "/recipes/multimodal/tiny-image-sft.yaml model.path=" + test::data_dir() +
         "/hf-gemma4-mm/tiny-mm-e tokenizer=" + data + "/tokenizer.json data.train=" + data +
         "/images.jsonl train.steps=8 checkpoint.every=4 log.validation_every=4 checkpoint.dir=" + out.string();
}

std::vector<nlohmann::json> records(const fs::path& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Everything but timings, which must repeat exactly.
std::vector<std::string> loss_lines(const fs::path& run_dir) {
  std::vector<std::string> lines;
  for (const nlohmann::json& j : records(run_dir)) {
    if (j.contains("loss"))
      lines.push_back(std::to_string(j["step"].get<int>()) + " " + j["loss"].dump() + " " + j["grad_norm"].dump());
    if (j.contains("validation_loss")) lines.push_back("val " + j["validation_loss"].dump());
  }
  return lines;
}

// Per tensor of the step-8 checkpoint: whether it has the bits of the step-4 one.
std::map<std::string, bool> unchanged_tensors(const fs::path& run_dir) {
  const auto early = io::SafetensorsReader::open((run_dir / "checkpoints" / "step-00000004").string());
  const auto late = io::SafetensorsReader::open((run_dir / "checkpoints" / "step-00000008").string());
  std::map<std::string, bool> out;
  for (const std::string& n : late.names()) {
    const Tensor a = early.get(n), b = late.get(n);
    out[n] = a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
  }
  return out;
}

// (tensors unchanged, tensors changed) among those whose name holds `part`.
std::pair<int, int> count_unchanged(const fs::path& run_dir, const std::string& part) {
  std::pair<int, int> n{0, 0};
  for (const auto& [name, same] : unchanged_tensors(run_dir))
    if (name.find(part) != std::string::npos) ++(same ? n.first : n.second);
  return n;
}

TEST(MultimodalTrain, ImageSftLowersTheLossAndResumesExactly) {
  const fs::path dir = test::scratch_dir("mm_train");
  const ProcessResult full = test::run_g4(recipe_args(dir / "full"));
  ASSERT_EQ(full.code, 0) << full.output;
  std::vector<double> loss, val;
  for (const nlohmann::json& j : records(dir / "full")) {
    if (j.contains("loss")) loss.push_back(j["loss"].get<double>());
    if (j.contains("validation_loss")) val.push_back(j["validation_loss"].get<double>());
  }
  ASSERT_EQ(loss.size(), 8u);
  ASSERT_EQ(val.size(), 2u);
  EXPECT_LT(loss[6] + loss[7], loss[0] + loss[1] - 1.0) << full.output;
  EXPECT_LT(val[1], val[0]);
  // The images' gradients reach the vision tower; the recipe's frozen audio tower stays.
  const auto [vision_same, vision_changed] = count_unchanged(dir / "full", "vision_tower");
  EXPECT_GT(vision_changed, 0);
  const auto [audio_same, audio_changed] = count_unchanged(dir / "full", "audio_tower");
  EXPECT_GT(audio_same, 0);
  EXPECT_EQ(audio_changed, 0);

  // Killed after step 6: resumes from the step-4 checkpoint to the same curve.
  const std::string killed = recipe_args(dir / "killed");
  ProcessResult r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), loss_lines(dir / "full"));

  // Freezing the vision tower and its projection by pattern keeps every one of their tensors.
  r = test::run_g4(recipe_args(dir / "frozen") + " \"train.freeze=[model.vision_tower.*, model.embed_vision.*]\"");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* part : {"vision_tower", "embed_vision"}) {
    const auto [same, changed] = count_unchanged(dir / "frozen", part);
    EXPECT_GT(same, 0) << part;
    EXPECT_EQ(changed, 0) << part;
  }
  fs::remove_all(dir);
}

TEST(MultimodalTrain, ContextParallelismIsRefused) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = test::scratch_dir("mm_train_cp");
  const ProcessResult r =
      test::run_g4(recipe_args(dir / "cp") + " parallel.context_parallel=2",
                   "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("parallel.context_parallel is 2, but data.train holds images or audio"), std::string::npos)
      << r.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

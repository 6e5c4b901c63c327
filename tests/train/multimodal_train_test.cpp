// `g4 train` on image + text chat data: recipes/multimodal/tiny-image-sft.yaml (tiny-mm-e on the
// example dataset) lowers the training loss, trains the vision tower, resumes to exactly the curve of
// the uninterrupted run, and on two context-parallel ranks follows one rank's curve; audio parts
// train the audio tower; towers frozen by pattern stay as they were; video parts train the vision
// tower through their frames.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/g4_process.h"
#include "support/png_file.h"
#include "support/run_metrics.h"
#include "support/test_paths.h"
#include "support/wav_file.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

// The example recipe with absolute paths (tests run anywhere), 8 steps, checkpoints at 4 and 8.
std::string recipe_args(const fs::path& out) {
  const std::string src = test::source_dir(), data = src + "/recipes/multimodal/data";
  return "train " + src + "/recipes/multimodal/tiny-image-sft.yaml model.path=" + test::data_dir() +
         "/hf-gemma4-mm/tiny-mm-e tokenizer=" + data + "/tokenizer.json data.train=" + data +
         "/images.jsonl train.steps=8 checkpoint.every=4 log.validation_every=4 checkpoint.dir=" + out.string();
}

// (tensors unchanged, tensors changed) among those whose name holds `part`.
std::pair<int, int> count_unchanged(const fs::path& run_dir, const std::string& part) {
  std::pair<int, int> n{0, 0};
  for (const auto& [name, same] : test::unchanged_tensors(run_dir))
    if (name.find(part) != std::string::npos) ++(same ? n.first : n.second);
  return n;
}

// The steps a run logged, each loss expected finite.
int finite_loss_steps(const fs::path& run_dir) {
  int steps = 0;
  for (const nlohmann::json& j : test::records(run_dir)) {
    if (!j.contains("loss")) continue;
    ++steps;
    EXPECT_TRUE(std::isfinite(j["loss"].get<double>())) << j.dump();
  }
  return steps;
}

TEST(MultimodalTrain, ImageSftLowersTheLossAndResumesExactly) {
  const fs::path dir = test::scratch_dir("mm_train");
  const test::ProcessResult full = test::run_g4(recipe_args(dir / "full"));
  ASSERT_EQ(full.code, 0) << full.output;
  std::vector<double> loss, val;
  for (const nlohmann::json& j : test::records(dir / "full")) {
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
  test::ProcessResult r = test::run_g4(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = test::run_g4(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(test::loss_lines(dir / "killed"), test::loss_lines(dir / "full"));

  fs::remove_all(dir);
}

// Audio parts: clips of different lengths train the audio tower through the same path; the vision
// tower and its projection, frozen by pattern, keep every one of their tensors.
TEST(MultimodalTrain, AudioPartsTrainTheAudioTower) {
  const fs::path dir = test::scratch_dir("mm_train_audio");
  std::ofstream data(dir / "audio.jsonl");
  for (int i = 0; i < 6; ++i) {
    const std::string clip = "clip" + std::to_string(i) + ".wav";
    test::write_random_wav((dir / clip).string(), 2400 + 800 * static_cast<size_t>(i), static_cast<uint32_t>(i + 1));
    data << R"({"messages": [{"role": "user", "content": [{"type": "audio", "path": ")" << clip
         << R"("}, {"type": "text", "text": "How long is it?"}]}, {"role": "assistant", "content": "It is )" << i
         << R"(."}]})"
         << "\n";
  }
  data.close();
  const test::ProcessResult r =
      test::run_g4(recipe_args(dir / "run") + " data.train=" + (dir / "audio.jsonl").string() +
                   " data.validation_fraction=0 "
                   "\"train.freeze=[model.vision_tower.*, model.embed_vision.*]\"");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(finite_loss_steps(dir / "run"), 8);
  const auto [audio_same, audio_changed] = count_unchanged(dir / "run", "audio_tower");
  EXPECT_GT(audio_changed, 0);
  for (const char* part : {"vision_tower", "embed_vision"}) {
    const auto [same, changed] = count_unchanged(dir / "run", part);
    EXPECT_GT(same, 0) << part;
    EXPECT_EQ(changed, 0) << part;
  }
  fs::remove_all(dir);
}

// Video parts (a folder of 3 frames at 1 fps, 2 of them sampled, as the model directory's
// processor_config.json asks): 8 finite steps that change the vision tower, the frozen audio tower
// unchanged; the plan counts the videos.
TEST(MultimodalTrain, VideoPartsTrainTheVisionTower) {
  const fs::path dir = test::scratch_dir("mm_train_video");
  const std::string src = test::data_dir() + "/hf-gemma4-mm/tiny-mm-e";
  fs::create_directories(dir / "model");
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(src + "/" + f, dir / "model" / f);
  std::ofstream(dir / "model" / "processor_config.json")
      << R"({"image_processor": {"patch_size": 6, "max_soft_tokens": 70},)"
      << R"( "video_processor": {"patch_size": 6, "max_soft_tokens": 70, "num_frames": 2}})";
  std::ofstream data(dir / "video.jsonl");
  for (int i = 0; i < 6; ++i) {
    const fs::path clip = dir / ("clip" + std::to_string(i));
    fs::create_directories(clip);
    for (int f = 0; f < 3; ++f)
      test::write_random_png((clip / ("f" + std::to_string(f) + ".png")).string(), 40, 30,
                             static_cast<uint32_t>(10 * i + f));
    data << R"({"messages": [{"role": "user", "content": [{"type": "video", "path": "clip)" << i
         << R"(", "fps": 1}, {"type": "text", "text": "What moves?"}]}, {"role": "assistant", "content": "Clip )" << i
         << R"(."}]})"
         << "\n";
  }
  data.close();
  const test::ProcessResult r = test::run_g4(recipe_args(dir / "run") + " model.path=" + (dir / "model").string() +
                                             " data.train=" + (dir / "video.jsonl").string() +
                                             " data.validation_fraction=0");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(", 6 videos"), std::string::npos) << r.output;
  EXPECT_EQ(finite_loss_steps(dir / "run"), 8);
  const auto [vision_same, vision_changed] = count_unchanged(dir / "run", "vision_tower");
  EXPECT_GT(vision_changed, 0);
  const auto [audio_same, audio_changed] = count_unchanged(dir / "run", "audio_tower");
  EXPECT_EQ(audio_changed, 0);
  fs::remove_all(dir);
}

// Two context-parallel ranks, each with half of every 256-token row (so images are cut between
// them), on tiny-mm-bidir (images attend both ways on sliding layers, window 8, shorter than any
// image): every rank runs the vision tower on the micro-batch's images and merges the soft tokens
// of its slice; the tower's gradients are summed over the ranks. The loss curve and the validation
// losses are one rank's within the tolerance of the other CP runs (TrainRun.*), and the tower trains.
TEST(MultimodalTrain, ContextParallelRanksTrainLikeOneRank) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = test::scratch_dir("mm_train_cp");
  const std::string bidir = " model.path=" + test::data_dir() + "/hf-gemma4-mm/tiny-mm-bidir";
  // One thread, as each MPI rank runs: only ring attention's summation order differs.
  const test::ProcessResult one =
      test::run_g4(recipe_args(dir / "one") + bidir, "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1");
  ASSERT_EQ(one.code, 0) << one.output;
  const test::ProcessResult two =
      test::run_g4(recipe_args(dir / "two") + bidir + " parallel.context_parallel=2",
                   "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2");
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("2 context-parallel"), std::string::npos) << two.output;
  test::expect_same_curves(dir / "one", dir / "two");
  const auto [vision_same, vision_changed] = count_unchanged(dir / "two", "vision_tower");
  EXPECT_GT(vision_changed, 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

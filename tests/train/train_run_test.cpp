// `g4 train` end to end on a tiny model: the loss falls, the log and picture are written, and a
// run killed between checkpoints or in the middle of writing one resumes to exactly the loss
// curve of the uninterrupted run.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/device_memory.h"
#include "io/safetensors.h"
#include "support/g4_process.h"
#include "support/run_metrics.h"
#include "support/train_recipe.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;

using test::loss_lines;
using test::ProcessResult;
using test::records;
using test::step_losses;
using test::validation_losses;
using test::expect_same_curves;
using test::unchanged_tensors;

ProcessResult run(const std::string& args, const std::string& env = "") { return test::run_g4(args, env); }
fs::path temp_dir(const std::string& name) { return test::scratch_dir("train_" + name); }

// Every logged step of a test-recipe run (8 steps of 4 rows x 64 tokens over all ranks) counts
// each expert's rows: per layer they add up to 4 x 64 x top-2, however the ranks split the rows or
// the experts.
void expect_expert_rows_logged(const fs::path& run_dir) {
  SCOPED_TRACE(run_dir.string());
  int steps = 0;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++steps;
    ASSERT_TRUE(j.contains("expert_tokens")) << line;
    ASSERT_EQ(j["expert_tokens"].size(), 2u) << line;  // both layers are MoE
    for (const auto& [layer, counts] : j["expert_tokens"].items()) {
      ASSERT_EQ(counts.size(), 4u) << line;
      int64_t sum = 0;
      for (const auto& c : counts) sum += c.get<int64_t>();
      EXPECT_EQ(sum, 4 * 64 * 2) << "layer " << layer << ": " << line;
    }
    EXPECT_GE(j["expert_load_max"].get<double>(), 1.0);
  }
  EXPECT_EQ(steps, 8);
}

const char* kMpirun = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 2";
const char* kMpirun4 = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --oversubscribe --allow-run-as-root -np 4";
// One rank with the arithmetic of one MPI rank (one thread): the reference where only the
// parallel algorithm may change the summation order.
const char* kOneThread = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1";

TEST(TrainRun, ResumeAfterKillReproducesTheCurveExactly) {
  const fs::path dir = temp_dir("resume");
  const std::string recipe = test::write_train_recipe(dir);
  const ProcessResult full = run("train " + recipe + " checkpoint.dir=" + (dir / "full").string());
  ASSERT_EQ(full.code, 0) << full.output;
  EXPECT_TRUE(fs::exists(dir / "full" / "loss.svg"));
  EXPECT_TRUE(fs::exists(dir / "full" / "checkpoints" / "step-00000008" / "model.safetensors"));
  const auto want = loss_lines(dir / "full");
  ASSERT_EQ(want.size(), 8u + 2u);

  // Killed after step 6: resumes from the step-4 checkpoint.
  const std::string killed = "train " + recipe + " checkpoint.dir=" + (dir / "killed").string();
  ProcessResult r = run(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = run(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), want);

  // Killed halfway through writing the step-8 checkpoint: the half-written one is ignored.
  const std::string torn = "train " + recipe + " checkpoint.dir=" + (dir / "torn").string();
  r = run(torn, "G4_FAULT_KILL=checkpoint:8");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  EXPECT_FALSE(fs::exists(dir / "torn" / "checkpoints" / "step-00000008"));
  r = run(torn + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 4"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "torn"), want);
  fs::remove_all(dir);
}

// AdamW's moments stored in bf16 (optimizer.exp_avg_dtype / exp_avg_sq_dtype): the checkpoint keeps them in bf16, a killed run resumes to exactly the uninterrupted curve,
// the curve is not the f32 moments' one, and the sharded optimizer trains the same curve. Other
// dtypes are refused.
TEST(TrainRun, Bf16MomentsCheckpointAndResumeExactly) {
  const fs::path dir = temp_dir("bf16_moments");
  const std::string recipe = test::write_train_recipe(dir);
  const std::string bf16 = " optimizer.exp_avg_dtype=bfloat16 optimizer.exp_avg_sq_dtype=bfloat16";
  ProcessResult r = run("train " + recipe + bf16 + " checkpoint.dir=" + (dir / "full").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const auto want = loss_lines(dir / "full");
  const io::SafetensorsReader state =
      io::SafetensorsReader::open((dir / "full" / "checkpoints" / "step-00000008" / "optimizer.safetensors").string());
  ASSERT_FALSE(state.names().empty());
  for (const std::string& n : state.names()) EXPECT_EQ(state.get(n).dtype(), DType::BF16) << n;
  r = run("train " + recipe + " checkpoint.dir=" + (dir / "f32").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(loss_lines(dir / "f32"), want) << "bf16 moments must change the arithmetic, or this test proves nothing";

  const std::string killed = "train " + recipe + bf16 + " checkpoint.dir=" + (dir / "killed").string();
  r = run(killed, "G4_FAULT_KILL=step:6");
  EXPECT_EQ(r.code, 128 + 9) << r.output;
  r = run(killed + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), want);

  // The sharded optimizer (one rank holding every shard) keeps bf16 moments too.
  r = run("train " + recipe + bf16 + " parallel.fsdp=true checkpoint.dir=" + (dir / "sharded").string());
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a = step_losses(dir / "full"), b = step_losses(dir / "sharded");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;

  r = run("train " + recipe + " optimizer.exp_avg_dtype=torch.bfloat16");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("optimizer.exp_avg_dtype"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bfloat16"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// A run directory in the format of the trainer before it was made of parts
// (tests/data/train-checkpoint-v1: its step-4 checkpoint and the metrics of steps 1-5) resumes:
// steps 5-8 continue as an uninterrupted run of today's g4 does. The fixture was written on
// another machine, whose OpenBLAS kernels may round differently, so the comparison allows the
// last bits; moments or a data position not restored would move the losses far more.
TEST(TrainRun, ResumesACheckpointOfTheEarlierTrainer) {
  const fs::path dir = temp_dir("legacy");
  const std::string recipe = test::write_train_recipe(dir, /*dense=*/false, /*samples=*/0);
  ProcessResult r = run("train " + recipe);
  ASSERT_EQ(r.code, 0) << r.output;
  fs::copy(fs::path(test::data_dir()) / "train-checkpoint-v1", dir / "old", fs::copy_options::recursive);
  r = run("train " + recipe + " checkpoint.dir=" + (dir / "old").string() + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(step 4)"), std::string::npos) << r.output;
  const auto want = records(dir / "run"), got = records(dir / "old");
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i]["step"], want[i]["step"]) << i;
    for (const char* key : {"loss", "grad_norm", "validation_loss"}) {
      if (!want[i].contains(key)) continue;
      const double w = want[i][key].get<double>();
      // The gradient norm sums every parameter's squared gradient: it moves about 5e-4 between an
      // Intel and an AMD machine's kernels, where the losses stay within 1e-4.
      const double rtol = std::string(key) == "grad_norm" ? 2e-3 : 1e-4;
      EXPECT_NEAR(got[i][key].get<double>(), w, rtol * std::abs(w)) << key << " at step " << want[i]["step"];
    }
    if (want[i].contains("lr")) {
      EXPECT_EQ(got[i]["lr"], want[i]["lr"]) << i;
    }
  }
  fs::remove_all(dir);
}

// A step with a non-finite loss or gradient norm (an absurd learning rate) stops the run with a
// clear error before its update: the newest checkpoint survives and no later one is written. With
// train.skip_nonfinite_steps the run skips such steps and counts them. `g4 eval` refuses a model
// with NaN weights, and a checkpoint directory a killed run left half-written is removed.
TEST(TrainRun, NonFiniteStepsStopTheRunAndNeverReachACheckpoint) {
  const fs::path dir = temp_dir("nonfinite");
  const std::string recipe = test::write_train_recipe(dir, /*dense=*/false, /*samples=*/0);
  ProcessResult r = run("train " + recipe);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path ckpts = dir / "run" / "checkpoints";
  fs::create_directories(ckpts / ".step-00000010.tmp.99999");
  // The temporary files of the replace-whole writes a kill can leave (found by
  // tools/probe_train_media.py: a SIGKILL between writing checkpoints/latest.tmp.<pid> and its
  // rename left it for good).
  for (const fs::path& f : {ckpts / "latest.tmp.99999", dir / "run" / "loss.svg.tmp.99999",
                            dir / "run" / "metrics.jsonl.tmp.99999"})
    std::ofstream(f) << "half";
  const std::string absurd = "train " + recipe + " train.steps=12 optimizer.lr=1e30 --resume";
  r = run(absurd);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step-00000008) is intact"), std::string::npos) << r.output;
  // The changed learning rate is named when the run resumes (train.steps is free to change).
  EXPECT_NE(r.output.find("note: the recipe differs from the one"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\n  optimizer.lr 0.003 -> "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("train.steps 8 -> 12"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(ckpts / ".step-00000010.tmp.99999"));
  for (const fs::path& f : {ckpts / "latest.tmp.99999", dir / "run" / "loss.svg.tmp.99999",
                            dir / "run" / "metrics.jsonl.tmp.99999"})
    EXPECT_FALSE(fs::exists(f)) << f;
  EXPECT_FALSE(fs::exists(ckpts / "step-00000012"));
  std::ifstream latest(ckpts / "latest");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(latest), {}), "step-00000008\n");

  r = run(absurd + " train.skip_nonfinite_steps=true");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped"), std::string::npos) << r.output;
  int64_t skipped = 0;
  for (const nlohmann::json& j : records(dir / "run"))
    if (j.contains("loss")) skipped = j.value("skipped_steps", int64_t{0});
  EXPECT_GT(skipped, 0);

  // A copy of the step-8 checkpoint with one NaN weight.
  const fs::path bad = dir / "bad";
  fs::copy(ckpts / "step-00000008", bad, fs::copy_options::recursive);
  const io::SafetensorsReader reader = io::SafetensorsReader::open((bad / "model.safetensors").string());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& n : reader.names()) tensors.emplace_back(n, reader.get(n).clone());
  tensors[0].second.data<float>()[0] = std::nanf("");
  io::save_safetensors((bad / "model.safetensors").string(), tensors);
  const std::string data = test::data_dir() + "/text/genesis.txt";
  // Refused as it loads, naming the tensor (before, eval ran and found the loss not finite).
  r = run("eval " + bad.string() + " --data " + data + " --seq-len 64");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("tensor '" + tensors[0].first + "'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("holds a NaN (element 0"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// A damaged newest checkpoint (a truncated weights file) does not end the run's life: --resume
// says so and continues from the one before, reproducing the uninterrupted curve. Two runs never
// share a run directory: the second is refused while the first holds its lock, and a new run
// (no --resume) over an earlier one is refused, leaving it as it was.
TEST(TrainRun, ResumeFallsBackFromADamagedCheckpointAndRunsDoNotShareADirectory) {
  const fs::path dir = temp_dir("damaged");
  const std::string recipe = test::write_train_recipe(dir, /*dense=*/false, /*samples=*/0);
  ProcessResult r = run("train " + recipe);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto want = loss_lines(dir / "run");

  // It used to start: checkpoint.keep deleted each new checkpoint as it was written (the earlier
  // run's step 8 outranked it), metrics.jsonl lost the earlier lines, and --resume then continued
  // the earlier run (probe_train.py).
  r = run("train " + recipe + " train.steps=4");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("holds an earlier run (2 checkpoint(s), the newest " +
                          (dir / "run" / "checkpoints" / "step-00000008").string()),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("Add --resume to continue it"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "run"), want);
  EXPECT_TRUE(fs::exists(dir / "run" / "checkpoints" / "step-00000004" / "model.safetensors"));
  // --resume of the finished run trains nothing; its summary names the last checkpoint and the
  // last logged train loss (it printed an empty checkpoint and a train loss of 0.0000).
  r = run("train " + recipe + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint       " + (dir / "run" / "checkpoints" / "step-00000008").string()),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("train loss       0.0000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("train loss       "), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "run"), want);
  // A run stopped before its first checkpoint left only its metrics: those are kept too.
  fs::create_directories(dir / "early");
  std::ofstream(dir / "early" / "metrics.jsonl") << "{\"step\": 1, \"loss\": 7.5}\n";
  r = run("train " + recipe + " checkpoint.dir=" + (dir / "early").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("metrics.jsonl with 1 record(s)"), std::string::npos) << r.output;
  EXPECT_EQ(fs::file_size(dir / "early" / "metrics.jsonl"), 25u);

  const fs::path weights = dir / "run" / "checkpoints" / "step-00000008" / "model.safetensors";
  const uintmax_t whole = fs::file_size(weights);
  fs::resize_file(weights, whole / 2);
  r = run("train " + recipe + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step-00000008 cannot be resumed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(step 4)"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "run"), want);
  // The damaged one was moved aside (kept), and the resumed run wrote a whole step 8.
  EXPECT_TRUE(fs::exists(dir / "run" / "checkpoints" / "damaged-step-00000008" / "model.safetensors"));
  EXPECT_EQ(fs::file_size(dir / "run" / "checkpoints" / "damaged-step-00000008" / "model.safetensors"), whole / 2);
  EXPECT_EQ(fs::file_size(weights), whole);

  const int fd = ::open((dir / "run" / ".lock").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);  // as a running trainer holds it
  r = run("train " + recipe + " --resume");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("is writing checkpoints to"), std::string::npos) << r.output;
  ::close(fd);
  fs::remove_all(dir);
}

TEST(TrainRun, LossFallsAndEvalReadsTheCheckpoint) {
  const fs::path dir = temp_dir("falls");
  const std::string recipe = test::write_train_recipe(dir);
  const ProcessResult r = run("train " + recipe + " train.steps=30 log.validation_every=10");
  ASSERT_EQ(r.code, 0) << r.output;
  std::vector<double> train, val;
  std::ifstream in(dir / "run" / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) train.push_back(j["loss"].get<double>());
    if (j.contains("validation_loss")) val.push_back(j["validation_loss"].get<double>());
  }
  ASSERT_EQ(train.size(), 30u);
  ASSERT_GE(val.size(), 3u);
  EXPECT_LT(train.back(), train.front() - 1.0);
  EXPECT_LT(val.back(), val.front());
  const ProcessResult e = run("eval " + (dir / "run" / "checkpoints" / "step-00000030").string() + " --data " +
                       test::data_dir() + "/text/genesis.txt --seq-len 64");
  ASSERT_EQ(e.code, 0) << e.output;
  EXPECT_NE(e.output.find("perplexity"), std::string::npos) << e.output;
  fs::remove_all(dir);
}

TEST(TrainRun, DataParallelReplicasTrainLikeOneRankOnTheirRowsTogether) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("dp");
  const std::string recipe = test::write_train_recipe(dir);
  const ProcessResult one = run("train " + recipe + " train.batch_size=4 log.samples=0 checkpoint.dir=" +
                                (dir / "one").string());
  ASSERT_EQ(one.code, 0) << one.output;
  // Two replicas with half the rows each (mpirun runs g4 through the same shell line).
  const ProcessResult two = run("train " + recipe + " train.batch_size=2 log.samples=0 checkpoint.dir=" +
                                (dir / "two").string(), kMpirun);
  ASSERT_EQ(two.code, 0) << two.output;
  const auto a = step_losses(dir / "one"), b = step_losses(dir / "two");
  // The expert rows of every logged step are counted over both ranks, as on one rank.
  for (const fs::path& run_dir : {dir / "one", dir / "two"}) expect_expert_rows_logged(run_dir);
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  EXPECT_TRUE(fs::exists(dir / "two" / "checkpoints" / "step-00000008" / "model.safetensors"));
  fs::remove_all(dir);
}

// Ranks that read different bytes for the same data.train entry (another copy of the file on
// another node) stop with an error naming the rank instead of training on an inconsistent batch.
TEST(TrainRun, RanksThatReadDifferentDataAreRefused) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("dp_data");
  const std::string recipe = test::write_train_recipe(dir);
  std::ifstream in(test::data_dir() + "/text/genesis.txt");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir / "copy0.txt") << text;
  std::ofstream(dir / "copy1.txt") << text.substr(0, text.size() - 200);  // rank 1's copy is shorter
  // Each rank names its own copy through the launcher's rank variable.
  const std::string per_rank = "data.train=[" + (dir / "copy").string() + "$OMPI_COMM_WORLD_RANK.txt]";
  const std::string cmd = std::string(kMpirun) + " bash -c '" + test::g4_binary() + " train " + recipe + " " + per_rank +
                          " log.samples=0 checkpoint.dir=" + (dir / "run").string() + "' 2>&1";
  const ProcessResult r = test::run_shell(cmd);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 read different training data than rank 0"), std::string::npos) << r.output;
  // The same file on both ranks trains.
  const std::string same = std::string(kMpirun) + " bash -c '" + test::g4_binary() + " train " + recipe + " data.train=[" +
                           (dir / "copy0.txt").string() + "] train.steps=1 log.samples=0 checkpoint.dir=" +
                           (dir / "same").string() + "' 2>&1";
  const ProcessResult ok = test::run_shell(same);
  EXPECT_EQ(ok.code, 0) << ok.output;
  fs::remove_all(dir);
}

TEST(TrainRun, ExpertParallelRanksTrainLikeOneRankAndWriteEveryExpert) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("ep");
  const std::string recipe = test::write_train_recipe(dir);
  const ProcessResult one = run("train " + recipe + " train.batch_size=4 log.samples=0 checkpoint.dir=" +
                                (dir / "one").string());
  ASSERT_EQ(one.code, 0) << one.output;
  // Two ranks, each holding 2 of the 4 experts and training on its own 2 rows; rank 0 samples on
  // the gathered model.
  const std::string ep = "train " + recipe + " train.batch_size=2 parallel.expert_parallel=2 checkpoint.dir=";
  const ProcessResult two = run(ep + (dir / "two").string(), kMpirun);
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("samples:"), std::string::npos) << two.output;
  const auto a = step_losses(dir / "one"), b = step_losses(dir / "two");
  // The expert rows of every logged step are counted over both ranks, as on one rank.
  for (const fs::path& run_dir : {dir / "one", dir / "two"}) expect_expert_rows_logged(run_dir);
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  const fs::path ckpt = dir / "two" / "checkpoints" / "step-00000008";
  for (const char* f : {"optimizer-rank0-of2.safetensors", "optimizer-rank1-of2.safetensors"})
    EXPECT_TRUE(fs::exists(ckpt / f)) << f;

  // The checkpoint holds every expert: one rank evaluates it, as it does the one-rank checkpoint.
  auto eval = [](const fs::path& c) {
    const ProcessResult e =
        run("eval " + c.string() + " --data " + test::data_dir() + "/text/genesis.txt --seq-len 64");
    EXPECT_EQ(e.code, 0) << e.output;
    const size_t at = e.output.find("loss ");
    return at == std::string::npos ? -1.0 : std::stod(e.output.substr(at + 5));
  };
  const double e1 = eval(dir / "one" / "checkpoints" / "step-00000008"), e2 = eval(ckpt);
  EXPECT_GT(e1, 0);
  EXPECT_NEAR(e1, e2, 1e-4 * e1);

  // Killed after step 6 under mpirun: resuming on two ranks gives the same curve.
  const std::string killed = ep + (dir / "killed").string() + " log.samples=0";
  ProcessResult r = run(killed, std::string("G4_FAULT_KILL=step:6 ") + kMpirun);
  EXPECT_NE(r.code, 0) << r.output;
  r = run(killed + " --resume", kMpirun);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_EQ(loss_lines(dir / "killed"), loss_lines(dir / "two"));

  // Resuming per-rank optimizer shards on another number of ranks is a clear error.
  r = run("train " + recipe + " checkpoint.dir=" + (dir / "two").string() + " train.steps=9 --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("sharded over 2 ranks"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(TrainRun, ShardedDataParallelTrainsLikeOneRankAndResumesOnOneRank) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("fsdp");
  const std::string recipe = test::write_train_recipe(dir);
  const std::string base = "train " + recipe + " log.samples=0 train.steps=4 checkpoint.every=0 checkpoint.dir=";
  const ProcessResult one = run(base + (dir / "one").string() + " train.batch_size=4");
  ASSERT_EQ(one.code, 0) << one.output;
  // Two ranks, each holding half of the replicated parameters' master weights and moments.
  const ProcessResult two = run(base + (dir / "two").string() + " train.batch_size=2 parallel.fsdp=true", kMpirun);
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("2 data-parallel shards"), std::string::npos) << two.output;
  const auto a = step_losses(dir / "one"), b = step_losses(dir / "two");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
  const fs::path ckpt = dir / "two" / "checkpoints" / "step-00000004";
  for (const char* f : {"optimizer-rank0-of2.safetensors", "optimizer-rank1-of2.safetensors", "model.safetensors"})
    EXPECT_TRUE(fs::exists(ckpt / f)) << f;

  // The two-rank sharded checkpoint resumes on one rank (re-split moments), and its next step
  // is the one-rank run's next step.
  const std::string more = " train.steps=5 train.batch_size=4 --resume";
  ProcessResult r = run(base + (dir / "two").string() + more);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run(base + (dir / "one").string() + more);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a5 = step_losses(dir / "one"), b5 = step_losses(dir / "two");
  ASSERT_EQ(a5.size(), 5u);
  ASSERT_EQ(b5.size(), 5u);
  EXPECT_NEAR(a5[4], b5[4], 1e-5 * a5[4]);

  // Nothing to shard over is a clear error naming both keys.
  r = run(base + (dir / "bad").string() + " parallel.fsdp=true parallel.data_parallel=1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("'parallel.fsdp'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'parallel.data_parallel' is 1"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// Two cp ranks each hold half of every row (the same rows one rank trains on): the per-step and
// validation losses are one rank's, on the MoE recipe. Rows of 63 tokens are padded to 64 for the
// split. The one-rank run uses one thread, as each MPI rank does, so that only ring attention's
// summation order differs: with OpenBLAS's generic SSE3 kernels (a CPU it does not recognise) the
// expert GEMMs sum in another order on 2 threads than on 1, and the MoE recipe in f32 amplifies
// that over a few AdamW steps (one rank on 2 threads against 1 thread: 1.2e-5 at step 8; the
// dense recipe bit-identical), which is the drift once blamed on ring attention. With the AVX2 /
// AVX-512 kernels threads change nothing, and ring attention's order leaves 4.5e-6 (rows of 64)
// and 1.3e-6 (rows of 63) by step 8 (measured).
TEST(TrainRun, ContextParallelRanksTrainLikeOneRank) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("cp");
  const std::string recipe = test::write_train_recipe(dir);
  for (const char* seq_len : {"64", "63"}) {
    SCOPED_TRACE(std::string("seq_len ") + seq_len);
    const std::string common = "train " + recipe + " data.seq_len=" + seq_len + " train.batch_size=2 checkpoint.dir=";
    const fs::path one_dir = dir / (std::string("one") + seq_len), two_dir = dir / (std::string("two") + seq_len);
    const ProcessResult one = run(common + one_dir.string() + " log.samples=0", kOneThread);
    ASSERT_EQ(one.code, 0) << one.output;
    // Rank 0 samples on its own at the end (whole sequences, no ring).
    const ProcessResult two = run(common + two_dir.string() + " parallel.context_parallel=2", kMpirun);
    ASSERT_EQ(two.code, 0) << two.output;
    EXPECT_NE(two.output.find("1 expert-parallel x 2 context-parallel"), std::string::npos) << two.output;
    EXPECT_NE(two.output.find("samples:"), std::string::npos) << two.output;
    if (std::string(seq_len) == "63") {
      EXPECT_NE(two.output.find("rows of 63 tokens padded to 64 for 2 slices of 32"), std::string::npos) << two.output;
    }
    expect_same_curves(one_dir, two_dir);
    EXPECT_TRUE(fs::exists(two_dir / "checkpoints" / "step-00000008" / "model.safetensors"));
  }
  fs::remove_all(dir);
}

// Runs `common` + a checkpoint dir on one rank with 4 rows (dir/one), then on 4 ranks with 2 rows
// each and cp 2, as dp 2 (dir/four-dp) and as ep 2 (dir/four-ep), with the `extra` overrides, and
// expects the 4-rank step losses to be the one-rank ones. Returns the 4-rank outputs, dp first.
std::vector<std::string> cp_meshes_train_like_one_rank(const fs::path& dir, const std::string& common,
                                                       const std::string& extra) {
  std::vector<std::string> outputs;
  const ProcessResult one = run(common + (dir / "one").string() + " train.batch_size=4");
  EXPECT_EQ(one.code, 0) << one.output;
  for (const char* mesh : {"parallel.data_parallel=2", "parallel.expert_parallel=2"}) {
    SCOPED_TRACE(mesh);
    const fs::path out = dir / (std::string("four-") + (mesh[9] == 'd' ? "dp" : "ep"));
    const ProcessResult four =
        run(common + out.string() + " train.batch_size=2 parallel.context_parallel=2 " + extra + mesh, kMpirun4);
    EXPECT_EQ(four.code, 0) << four.output;
    // Validation batches follow the batch size (4 rows against 2), so only the steps compare.
    if (one.code == 0 && four.code == 0) expect_same_curves(dir / "one", out, /*validation=*/false);
    outputs.push_back(four.output);
  }
  return outputs;
}

// cp 2 with 2 data-parallel replicas, and with 2 expert-parallel ranks (2 of 4 experts each), on
// 4 ranks: two row streams of 2 rows, each split over a cp pair, train like one rank on 4 rows.
TEST(TrainRun, ContextParallelCombinesWithDataAndExpertParallel) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("cp_mesh");
  const std::string recipe = test::write_train_recipe(dir);
  cp_meshes_train_like_one_rank(dir, "train " + recipe + " log.samples=0 checkpoint.dir=", "");
  fs::remove_all(dir);
}

// Sharded data parallelism with context parallelism on 4 ranks: the flat slices are split over
// the dp group (2 ranks), and the cp pair of each dp coordinate holds the same slice, trained on
// the other half of the same rows (its gradient is summed over cp); with ep 2 x cp 2 the one
// shard is summed over ep and cp. Both train like one rank on 4 rows, and the dp 2 x cp 2
// checkpoint (written by the cp-0 ranks only) resumes on one rank.
TEST(TrainRun, ShardedDataParallelCombinesWithContextParallel) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("fsdp_cp");
  const std::string recipe = test::write_train_recipe(dir);
  const std::string common = "train " + recipe + " log.samples=0 checkpoint.dir=";
  const std::vector<std::string> four = cp_meshes_train_like_one_rank(dir, common, "parallel.fsdp=true ");
  ASSERT_EQ(four.size(), 2u);
  EXPECT_NE(four[0].find("2 data-parallel shards x 1 expert-parallel x 2 context-parallel"), std::string::npos)
      << four[0];
  EXPECT_NE(four[1].find("1 data-parallel shard x 2 expert-parallel x 2 context-parallel"), std::string::npos)
      << four[1];
  // dp 2 x cp 2: the cp-0 ranks (0 and 2) write the two distinct slices; their cp peers write none.
  const fs::path ckpt = dir / "four-dp" / "checkpoints" / "step-00000008";
  for (const char* f : {"optimizer-rank0-of4.safetensors", "optimizer-rank2-of4.safetensors", "model.safetensors"})
    EXPECT_TRUE(fs::exists(ckpt / f)) << f;
  for (const char* f : {"optimizer-rank1-of4.safetensors", "optimizer-rank3-of4.safetensors"})
    EXPECT_FALSE(fs::exists(ckpt / f)) << f;
  const std::string more = " train.steps=9 train.batch_size=4 --resume";
  ProcessResult r = run(common + (dir / "four-dp").string() + more);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run(common + (dir / "one").string() + more);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a9 = step_losses(dir / "one"), b9 = step_losses(dir / "four-dp");
  ASSERT_EQ(a9.size(), 9u);
  ASSERT_EQ(b9.size(), 9u);
  EXPECT_NEAR(a9[8], b9[8], 1e-5 * a9[8]);
  fs::remove_all(dir);
}

// Adds `train.freeze: <patterns>` (a YAML list) to the test recipe.
void set_freeze(const std::string& recipe, const std::string& patterns) {
  std::ifstream in(recipe);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string at = "train:\n  steps: 8\n";
  ASSERT_NE(text.find(at), std::string::npos);
  text.replace(text.find(at), at.size(), at + "  freeze: " + patterns + "\n");
  std::ofstream(recipe) << text;
}

// train.freeze: the frozen weights (every q_proj, and the tied embedding / LM head) are the same bits
// in every checkpoint while the others train, on one rank and sharded over two.
TEST(TrainRun, FrozenWeightsStayAsTheyStarted) {
  const fs::path dir = temp_dir("freeze");
  const std::string recipe = test::write_train_recipe(dir);
  set_freeze(recipe, "['*q_proj*', '*embed_tokens*']");
  const bool mpi = std::system("command -v mpirun > /dev/null 2>&1") == 0;
  for (const bool sharded : {false, true}) {
    if (sharded && !mpi) continue;
    SCOPED_TRACE(sharded ? "fsdp on 2 ranks" : "one rank");
    const fs::path out = dir / (sharded ? "fsdp" : "one");
    const ProcessResult r = run("train " + recipe + " log.samples=0 checkpoint.dir=" + out.string() +
                                    (sharded ? " parallel.fsdp=true" : ""),
                                sharded ? kMpirun : "");
    ASSERT_EQ(r.code, 0) << r.output;
    int frozen = 0, trained = 0;
    for (const auto& [n, same] : unchanged_tensors(out)) {
      if (n.find("q_proj") != std::string::npos || n.find("embed_tokens") != std::string::npos) {
        EXPECT_TRUE(same) << n << " is frozen but changed";
        ++frozen;
      } else if (n.find("o_proj") != std::string::npos || n.find("experts") != std::string::npos) {
        EXPECT_FALSE(same) << n << " is trained but did not change";
        ++trained;
      }
    }
    EXPECT_GE(frozen, 3);  // two q_proj and the embedding
    EXPECT_GT(trained, 0);
  }
  fs::remove_all(dir);
}

// A freeze entry may name a parameter kind: `norm` and `router` keep every RMSNorm weight and the
// routers' projections fixed (not the router scale, a kind of its own) while the rest trains.
TEST(TrainRun, FreezingByKind) {
  const fs::path dir = temp_dir("freeze_kind");
  const std::string recipe = test::write_train_recipe(dir);
  set_freeze(recipe, "[norm, router]");
  const ProcessResult r = run("train " + recipe + " log.samples=0 checkpoint.dir=" + (dir / "out").string());
  ASSERT_EQ(r.code, 0) << r.output;
  int frozen = 0, trained = 0;
  for (const auto& [n, same] : unchanged_tensors(dir / "out")) {
    const bool norm = n.find("norm") != std::string::npos, router = n.find("router.proj") != std::string::npos;
    if (n.find("layer_scalar") != std::string::npos || n.find("per_expert_scale") != std::string::npos) continue;
    EXPECT_EQ(same, norm || router) << n;
    (same ? frozen : trained) += 1;
  }
  EXPECT_EQ(frozen, 2 * 10 + 1);  // per layer 9 norms (q_norm and k_norm among them) and the router; the final norm
  EXPECT_GT(trained, 0);
}

TEST(TrainRun, ContextParallelShapeErrors) {
  const fs::path dir = temp_dir("cp_errors");
  const std::string recipe = test::write_train_recipe(dir);
  ProcessResult r = run("train " + recipe + " parallel.context_parallel=2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("parallel.expert_parallel is 1 and parallel.context_parallel 2 but 1 ranks were launched"),
            std::string::npos)
      << r.output;
  r = run("train " + recipe + " parallel.context_parallel=2 parallel.data_parallel=2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("ranks must split into groups of 1 x 2"), std::string::npos) << r.output;
  r = run("train " + recipe + " parallel.context_parallel=4 data.seq_len=3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("data.seq_len 3 is shorter than parallel.context_parallel 4"), std::string::npos)
      << r.output;
  if (std::system("command -v mpirun > /dev/null 2>&1") == 0) {
    r = run("train " + recipe + " parallel.context_parallel=2 parallel.data_parallel=2", kMpirun);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("parallel.data_parallel is 2, parallel.expert_parallel 1 and parallel.context_parallel 2, "
                            "which needs 4 ranks, but 2 were launched"),
              std::string::npos)
        << r.output;
  }
  fs::remove_all(dir);
}

// g4 launch -n 2: two local ranks of one command, each line prefixed with its rank.
TEST(Launch, TwoRanksTrainTogether) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("launch");
  const std::string recipe = test::write_train_recipe(dir);
  const std::string args = recipe + " train.steps=2 log.samples=0 log.validation_every=0 checkpoint.dir=";
  const ProcessResult r = run("launch -n 2 train " + args + (dir / "a").string() + " parallel.context_parallel=2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 0] training   2 steps"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 data-parallel replica x 1 expert-parallel x 2 context-parallel"), std::string::npos)
      << r.output;
  // Errors come prefixed too (the first rank to fail may stop the other before it prints).
  const ProcessResult bad = run("launch -n 2 train " + args + (dir / "b").string() + " parallel.data_parallel=3");
  EXPECT_NE(bad.code, 0) << bad.output;
  EXPECT_TRUE(bad.output.find("[rank 0] g4: error:") != std::string::npos ||
              bad.output.find("[rank 1] g4: error:") != std::string::npos)
      << bad.output;
  // Rank 1 dies after step 1; rank 0 would wait for it forever in step 2, so the launcher stops it.
  const ProcessResult killed =
      run("launch -n 2 train " + args + (dir / "c").string(), "G4_FAULT_KILL=step:1 G4_FAULT_RANK=1");
  EXPECT_NE(killed.code, 0) << killed.output;
  EXPECT_FALSE(fs::exists(dir / "c" / "checkpoints" / "step-00000002")) << killed.output;
  fs::remove_all(dir);
}

// A rank that fails with an error (not a crash) while its peers wait for it in a collective ends
// the whole job: the failing rank aborts MPI instead of waiting in MPI_Finalize, so mpirun stops
// the others. `timeout` turns a hang into exit code 124.
TEST(Launch, AFailingRankStopsTheWholeJob) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
  const fs::path dir = temp_dir("launch_fail");
  const std::string recipe = test::write_train_recipe(dir);
  for (const int n : {2, 4}) {
    SCOPED_TRACE(std::to_string(n) + " ranks");
    const std::string last = std::to_string(n - 1);
    const auto t0 = std::chrono::steady_clock::now();
    const ProcessResult r =
        run("launch -n " + std::to_string(n) + " train " + recipe + " train.steps=3 log.samples=0 checkpoint.dir=" +
                (dir / std::to_string(n)).string(),
            "OMP_NUM_THREADS=1 G4_FAULT_ERROR=step:1 G4_FAULT_RANK=" + last + " timeout 120");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %d ranks: the job ended %.1f s after it started\n", n, s);
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_NE(r.code, 124) << "the job hung: " << r.output;
    EXPECT_NE(r.output.find("[rank " + last + "] g4: error: G4_FAULT_ERROR"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / std::to_string(n) / "checkpoints" / "step-00000003")) << r.output;
  }
  fs::remove_all(dir);
}

TEST(Launch, OneRankAndErrors) {
  const ProcessResult one = run("launch -n 1 inspect " + test::data_dir() + "/hf-gemma4/tiny-moe");
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_NE(one.output.find("[rank 0] "), std::string::npos) << one.output;
  const ProcessResult failed = run("launch -n 1 inspect /nonexistent/model");
  EXPECT_EQ(failed.code, 1) << failed.output;
  EXPECT_NE(failed.output.find("[rank 0] g4: error:"), std::string::npos) << failed.output;
  const ProcessResult none = run("launch -n 2");
  EXPECT_EQ(none.code, 1) << none.output;
  EXPECT_NE(none.output.find("give the g4 command each rank runs"), std::string::npos) << none.output;
  // Without mpirun on PATH, more than one rank cannot start (MPI needs its launcher).
  const ProcessResult no_mpi = run("launch -n 2 inspect x", "PATH=/nonexistent");
  EXPECT_EQ(no_mpi.code, 1) << no_mpi.output;
  EXPECT_NE(no_mpi.output.find("needs Open MPI's mpirun on PATH"), std::string::npos) << no_mpi.output;
}

TEST(TrainRun, BadRecipesAreClearErrors) {
  const fs::path dir = temp_dir("bad");
  const std::string recipe = test::write_train_recipe(dir);
  ProcessResult r = run("train " + recipe + " train.stepz=3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("train.stepz"), std::string::npos) << r.output;
  r = run("train " + recipe + " optimizer.lr=fast");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("optimizer.lr"), std::string::npos) << r.output;
  r = run("train " + recipe + " data.train=/nonexistent/corpus.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/corpus.txt"), std::string::npos) << r.output;
  r = run("train /nonexistent/recipe.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/nonexistent/recipe.yaml"), std::string::npos) << r.output;
  // A run directory that is a file is named with its key, and the file is left alone.
  const fs::path file = dir / "a-file";
  std::ofstream(file) << "notes";
  r = run("train " + recipe + " checkpoint.dir=" + file.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("cannot make the run directory " + file.string() + " (checkpoint.dir)"), std::string::npos)
      << r.output;
  EXPECT_EQ(fs::file_size(file), 5u);
  // A relative path is taken from the working directory, which the error says (recipes in another
  // folder than the cwd name their files from the cwd, not from the recipe).
  r = run("train " + recipe + " data.train=no-such-folder/corpus.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no-such-folder/corpus.txt: No such file or directory (a relative path: taken from the "
                          "working directory " + fs::current_path().string() + ")"),
            std::string::npos)
      << r.output;
  r = run("train " + recipe + " tokenizer=no-such-tokenizer.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no-such-tokenizer.json does not exist (a relative path"), std::string::npos) << r.output;
  // A freeze pattern that matches no parameter (a typo, another model's tower) froze nothing and
  // trained everything (found by tools/probe_train_media.py).
  r = run("train " + recipe + " \"train.freeze=[model.vision_tower.*]\"");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("'train.freeze' pattern 'model.vision_tower.*' matches no parameter of the model"),
            std::string::npos)
      << r.output;
  // Conversations whose replies lie past data.seq_len train nothing once truncated: an error (it
  // used to train on all-masked rows, logging loss 0 and gradient norm 0 at every step).
  const fs::path chat = dir / "cut.jsonl";
  std::ofstream(chat) << nlohmann::json{{"messages",
                                         {{{"role", "user"}, {"content", [] {
                                             std::string words;
                                             for (int i = 0; i < 200; ++i) words += "word ";
                                             return words;
                                           }()}},
                                          {{"role", "assistant"}, {"content", "yes"}}}}}.dump()
                      << "\n";
  r = run("train " + recipe + " tokenizer=" + test::source_dir() + "/recipes/data/kjv-chat-tokenizer data.train=" +
          chat.string() + " data.overlong=truncate checkpoint.dir=" + (dir / "cut").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("dropped 1 document(s) or piece(s) with no token to learn (the first: " + chat.string() +
                          ":1): 0 of a single token (a split document's last piece, or a one-token document), 1 "
                          "whose trained tokens lie past seq_len 64"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("data: no training document of " + chat.string() + " has a trained token within seq_len 64"),
            std::string::npos)
      << r.output;
  // One document cannot be split for validation: the plan says that no validation loss will come
  // (it used to be silent: the summary just lacked the line).
  const fs::path one = dir / "one.txt";
  std::ofstream(one) << "In the beginning God created the heaven and the earth.\n";
  r = run("train " + recipe + " data.train=" + one.string() + " train.steps=1 log.samples=0 checkpoint.dir=" +
          (dir / "one").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(no validation: data.validation_fraction 0.2 of 1 document(s) holds out none)"),
            std::string::npos)
      << r.output;
  fs::remove_all(dir);
}

// train.device: the value and (without a GPU) cuda itself are errors naming the recipe and the key,
// before anything is built.
TEST(TrainRun, DeviceErrors) {
  const fs::path dir = temp_dir("device");
  const std::string recipe = test::write_train_recipe(dir);
  ProcessResult r = run("train " + recipe + " train.device=tpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(recipe + ": recipe key 'train.device' must be cpu or cuda, got 'tpu'"), std::string::npos)
      << r.output;
  if (!cuda_available()) {
    r = run("train " + recipe + " train.device=cuda");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.output.find(recipe + ": recipe key 'train.device' is cuda, but"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace g4

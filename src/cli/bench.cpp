// g4 bench train: the speed of one training step (forward, backward, clipping, AdamW) at the real
// widths of a Gemma 4 model on the GPU, and, with --hf, the same step in Hugging Face transformers
// (tools/bench_hf_train.py) on the same shapes in the same session, with the ratio. `--device cpu`
// runs the same code in f32 on the CPU at a tiny shape (a built-in one or --config), so that CI
// exercises the benchmark that otherwise only runs on scarce GPU time.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include <nlohmann/json.hpp>

#include "autograd/variable.h"
#include "cli/commands.h"
#include "core/device_memory.h"
#include "core/gpu_peaks.h"
#include "core/kernel_profile.h"
#include "core/philox.h"
#include "core/random.h"
#include "data/multimodal.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/gemma4.h"
#include "model/lora_config.h"
#include "model/named_configs.h"
#include "ops/matmul.h"
#include "parallel/gpu_world.h"
#include "parallel/single_communicator.h"
#include "parallel/world.h"
#include "train/flops.h"
#include "train/run_setup.h"
#include "train/sft.h"
#include "train/train_step.h"

namespace g4::cli {

namespace {

struct BenchOptions {
  std::string model = "gemma-4-26b-a4b";
  std::string config;  // an HF config.json (or its directory) instead of a built-in --model
  std::string device = "cuda";  // cuda (bf16 compute, fp32 masters) or cpu (f32)
  int64_t layers = 3, seq = 4096, steps = 10, warmup = 3;
  bool layers_given = false;  // --layers was set (it applies to built-in shapes only)
  int64_t accum = 1;  // micro-batches (the same packed row) per optimizer step
  int64_t min_doc = 256, max_doc = 2048;
  double peak_tflops = 0;  // the MFU denominator; 0: the datasheet dense bf16 peak of the GPU found
  bool recompute = false;
  // AdamW's state as NeMo-RL's Gemma 4 recipes store it (train/adamw.h): bf16 moments, and the
  // masters as the bf16 parameters plus 16-bit remainders.
  bool bf16_moments = false, param_remainders = false;
  bool profile = false;  // a kernel table (CUPTI) of two extra steps
  bool hf = false;
  std::string hf_script = "tools/bench_hf_train.py";
  std::vector<std::string> hf_precisions{"fp32-autocast", "bf16"};
  std::string json;
  uint64_t seed = 1234;
  // LoRA (--lora R): adapters on these targets over a frozen base; --lora-experts adds the routed
  // experts' weights (PEFT's target_parameters).
  int64_t lora = 0;
  double lora_alpha = 16;
  std::vector<std::string> lora_targets;
  bool lora_experts = false;
  // Media in the packed row (--images N --audio-seconds S): random pixels and noise, processed as
  // g4 train processes a chat's media, through the model's towers.
  int64_t images = 0;
  double audio_seconds = 0;
  int64_t image_soft_tokens = 0;  // the image processor's budget; 0: its default (280)

  // Data parallelism (--ranks 1,2,4): the command relaunches itself through g4 launch once per
  // count, each rank training its own row; --fsdp shards the optimizer state (ZeRO-3). A relaunched
  // rank has rank_report set: where rank 0 writes its figures for the parent to print.
  std::vector<int64_t> ranks;
  std::string ranks_text;  // --ranks as given (parsed into `ranks` by the action)
  bool fsdp = false;
  std::string rank_report;

  bool media() const { return images > 0 || audio_seconds > 0; }

  bool gpu() const { return device == "cuda"; }
  // What the report calls the model: the built-in name or the config file.
  std::string model_name() const { return config.empty() ? model : config; }
};

// What std::system's status says: "exit status N" or "killed by signal N" (the raw status of a
// script's exit(1) is 256).
std::string command_status(int status) {
  if (status == -1) return "it could not be started";
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "exit status " + std::to_string(WEXITSTATUS(status));
}

// The adapters --lora asks for (dropout 0: PEFT's side runs without it too).
model::LoraConfig bench_lora(const BenchOptions& o) {
  model::LoraConfig l;
  l.rank = o.lora;
  l.alpha = o.lora_alpha;
  l.targets = o.lora_targets.empty() ? model::kDefaultLoraTargets : o.lora_targets;
  if (o.lora_experts)
    for (const char* t : {"experts.gate_up_proj", "experts.down_proj"}) l.targets.push_back(t);
  return l;
}

// The model the benchmark trains: a built-in shape with --layers layers (with media, the whole
// Gemma4ForConditionalGeneration with its towers), or the config file given.
io::ModelConfig bench_config(const BenchOptions& o) {
  io::ModelConfig cfg;
  if (o.config.empty()) {
    check_bench_model("g4 bench train", o.model, model::named_config_names(), o.layers);
    const nlohmann::json layers = {{"num_hidden_layers", o.layers}};
    cfg = io::parse_model_config(
        o.media() ? model::named_multimodal_config(o.model, layers) : model::named_config(o.model, layers),
        "built-in " + o.model);
  } else {
    G4_CHECK(!o.layers_given, "g4 bench train: --layers sets the depth of a built-in --model; the config file ",
             o.config, " gives its own (num_hidden_layers)");
    cfg = io::load_model_config(o.config);
  }
  G4_CHECK(o.images == 0 || cfg.vision, "g4 bench train: --images needs a vision tower, but ", o.model_name(),
           " is a text-only config (a Gemma4ForConditionalGeneration config.json has one)");
  G4_CHECK(o.audio_seconds <= 0 || (cfg.conditional && cfg.has_audio), "g4 bench train: --audio-seconds needs an audio "
           "tower, but ", o.model_name(), " has none (gemma-4-e4b has one; gemma-4-26b-a4b and gemma-4-31b do not)");
  return cfg;
}

// The row's media: N images of random pixels and one clip of S seconds of noise through Gemma 4's
// processors (the image budget as g4 train's data has it, data_image_processor), and the tokens
// they stand for, each wrapped in its boundary tokens as the processor writes them:
// <boi> <image>xn <eoi> per image, <boa> <audio>xm <eoa> for the clip.
struct RowMedia {
  data::PromptMedia media;
  std::vector<int64_t> ids, types;  // mm_token_type_ids: 1 image, 3 audio, 0 the boundaries
  int64_t image_tokens = 0, audio_tokens = 0;
};

// A top-level token id of a conditional config.json (absent: the released models' value).
int64_t config_token(const io::ModelConfig& cfg, const char* key, int64_t released) {
  const auto it = cfg.raw.find(key);
  return it != cfg.raw.end() && it->is_number_integer() ? it->get<int64_t>() : released;
}

RowMedia make_media(const BenchOptions& o, const io::ModelConfig& cfg) {
  RowMedia r;
  if (!o.media()) return r;
  std::vector<io::RgbImage> images(static_cast<size_t>(o.images));
  for (size_t i = 0; i < images.size(); ++i) {
    io::RgbImage& im = images[i];
    im.height = im.width = 896;  // resized by the processor to its soft-token budget
    im.pixels.resize(static_cast<size_t>(im.height * im.width * 3));
    for (size_t j = 0; j < im.pixels.size(); ++j)
      im.pixels[j] = static_cast<uint8_t>(std::min(255.0f, 256 * philox_uniform(o.seed, 100 + i, j)));
  }
  std::vector<std::vector<float>> clips;
  if (o.audio_seconds > 0) {
    clips.emplace_back(static_cast<size_t>(o.audio_seconds * 16000));  // 16 kHz
    for (size_t j = 0; j < clips[0].size(); ++j) clips[0][j] = philox_uniform(o.seed, 99, j) - 0.5f;
  }
  io::ImageProcessorOptions opt = train::data_image_processor("", cfg);
  if (o.image_soft_tokens > 0) opt.max_soft_tokens = o.image_soft_tokens;
  io::check_image_processor_options(opt, "--image-soft-tokens");
  r.media = data::process_prompt_media(images, {}, clips, opt);
  const auto block = [&](int64_t open, int64_t token, int64_t type, int64_t n, int64_t close) {
    r.ids.push_back(open);
    r.types.push_back(0);
    r.ids.insert(r.ids.end(), static_cast<size_t>(n), token);
    r.types.insert(r.types.end(), static_cast<size_t>(n), type);
    r.ids.push_back(close);
    r.types.push_back(0);
  };
  for (const int64_t n : r.media.image_soft_tokens) {
    block(config_token(cfg, "boi_token_id", 255999), cfg.vision->image_token_id, 1, n, config_token(cfg, "eoi_token_id", 258882));
    r.image_tokens += n;
  }
  for (const int64_t n : r.media.audio_soft_tokens) {
    block(config_token(cfg, "boa_token_id", 256000), cfg.audio_token_id, 3, n,
          config_token(cfg, "eoa_token_id", config_token(cfg, "eoa_token_index", 258883)));
    r.audio_tokens += n;
  }
  return r;
}

// One packed row of `seq` tokens: documents of seeded random lengths (the last one cut to fit),
// random ids, positions restarting per document, no loss on each document's first token.
// With media, the first document starts with their tokens (untrained, as a user turn's are), and
// the row carries mm_token_type_ids and the processed media. Each rank (`rank`) draws its own token
// ids over the same document lengths, so that data-parallel ranks do equal work.
struct PackedRow {
  Tensor input_ids, position_ids, labels;
  std::vector<int64_t> documents;
  Tensor mm_token_type_ids;  // with media only
  const data::PromptMedia* media = nullptr;
  int64_t image_tokens = 0, audio_tokens = 0;
};

PackedRow make_row(const BenchOptions& o, const io::ModelConfig& cfg, const RowMedia& media, int rank = 0) {
  const int64_t vocab = cfg.vocab_size, prefix = static_cast<int64_t>(media.ids.size());
  G4_CHECK(prefix < o.seq, "g4 bench train: the media take ", prefix, " tokens (", media.image_tokens,
           " image and ", media.audio_tokens, " audio soft tokens with their boundaries), more than --seq ", o.seq);
  // Random text must not hit a placeholder id: the model would count it as a soft token.
  std::vector<int64_t> placeholders;
  if (cfg.vision) placeholders = {cfg.vision->image_token_id, cfg.vision->video_token_id};
  if (cfg.conditional && cfg.has_audio) placeholders.push_back(cfg.audio_token_id);
  PackedRow r;
  r.input_ids = Tensor::empty({1, o.seq}, DType::I64);
  r.position_ids = Tensor::empty({1, o.seq}, DType::I64);
  r.labels = Tensor::empty({1, o.seq}, DType::I64);
  int64_t* ids = r.input_ids.data<int64_t>();
  int64_t* pos = r.position_ids.data<int64_t>();
  int64_t* lab = r.labels.data<int64_t>();
  uint64_t draw = 0;
  for (int64_t s = 0; s < o.seq;) {
    const double u = philox_uniform(o.seed, 7, draw++);
    int64_t n = o.min_doc + static_cast<int64_t>(u * static_cast<double>(o.max_doc - o.min_doc));
    const int64_t media_here = s == 0 ? prefix : 0;
    n = std::min(n + media_here, o.seq - s);
    r.documents.push_back(n);
    for (int64_t i = 0; i < n; ++i, ++s) {
      if (i < media_here) {
        ids[s] = media.ids[static_cast<size_t>(i)];
      } else {
        ids[s] = 3 + static_cast<int64_t>(philox_uniform(o.seed + static_cast<uint64_t>(rank), 8,
                                                         static_cast<uint64_t>(s)) *
                                          static_cast<double>(vocab - 4));
        while (std::find(placeholders.begin(), placeholders.end(), ids[s]) != placeholders.end()) --ids[s];
      }
      pos[s] = i;
      lab[s] = i == 0 || i < media_here ? -100 : ids[s];
    }
  }
  if (prefix > 0) {
    r.mm_token_type_ids = Tensor::zeros({1, o.seq}, DType::I64);
    std::copy(media.types.begin(), media.types.end(), r.mm_token_type_ids.data<int64_t>());
    r.media = &media.media;
    r.image_tokens = media.image_tokens;
    r.audio_tokens = media.audio_tokens;
  }
  return r;
}

struct Result {
  double step_ms = 0, tokens_per_s = 0, mfu = 0;
  int64_t parameters = 0, trainable = 0;  // elements
  int64_t peak_bytes = 0, reserved_bytes = 0;
  double loss_first = 0, loss_last = 0;
  double grad_norm_first = 0, grad_norm_last = 0;  // before clipping
  double phase_ms[3] = {0, 0, 0};  // forward (with the loss), backward, clipping + AdamW
  KernelProfile profile;            // of two steps, with --profile
};

// The batch every step trains on: the same packed row.
class FixedRow final : public train::BatchSource {
 public:
  explicit FixedRow(const PackedRow& row) : row_(row) {}
  data::Batch batch(int64_t, int64_t) const override {
    data::Batch b;
    b.input_ids = row_.input_ids;
    b.position_ids = row_.position_ids;
    b.labels = row_.labels;
    if (row_.media) {
      b.mm_token_type_ids = row_.mm_token_type_ids;
      b.pixel_values = row_.media->pixel_values;
      b.image_position_ids = row_.media->image_position_ids;
      b.input_features = row_.media->input_features;
      b.input_features_mask = row_.media->input_features_mask;
    }
    return b;
  }

 private:
  const PackedRow& row_;
};

// g4's training step, as g4 train runs it (train::train_step with the SFT objective and AdamW,
// replicated or with --fsdp sharded), on a bf16 GPU model with fp32 masters, or on an f32 CPU
// model; every rank of `world` a data-parallel replica training its own row.
Result run_g4(const BenchOptions& o, const io::ModelConfig& cfg, const PackedRow& row, double flops,
              parallel::Communicator& world) {
  Result res;
  {
    parallel::DeviceMesh mesh(world, parallel::MeshShape{world.size(), 1, 1});
    model::Gemma4 model(cfg, {}, o.gpu() ? DType::BF16 : DType::F32, o.gpu() ? Device::CUDA : Device::CPU);
    model.init_weights(o.seed);
    if (o.lora > 0) model.enable_lora(bench_lora(o));
    model.set_recompute(o.recompute);
    train::SftOptions so;
    so.grad_accumulation = o.accum;  // the mean over the micro-batches
    train::SftObjective objective(std::make_unique<FixedRow>(row), so, mesh);
    objective.configure(model);
    train::OptimizerSetup os;
    os.model = &model;
    os.mesh = &mesh;
    // g4 train's selection: every weight, or with adapters only them (the base frozen: no gradient
    // buffers, no weight-gradient products, no optimizer state).
    os.trainable = train::trainable_names(model, {});
    train::require_grad_only(model, os.trainable);
    res.parameters = model.params().numel();
    for (const std::string& n : os.trainable) res.trainable += model.params().at(n).value().numel();
    os.adamw.beta2 = 0.95;
    os.adamw.weight_decay = 0.01;
    if (o.bf16_moments) os.adamw.exp_avg_dtype = os.adamw.exp_avg_sq_dtype = DType::BF16;
    os.adamw.store_param_remainders = o.param_remainders;
    os.sharded = o.fsdp;
    const std::unique_ptr<train::Optimizer> opt = train::make_optimizer(std::move(os));
    // Waits for the GPU's queued work; nothing to wait for on the CPU (and no CUDA runtime to ask).
    const auto sync = [&] {
      if (o.gpu()) device_synchronize();
    };
    // `phase` (optional) receives the milliseconds of forward, backward and optimizer, each
    // closed by a device synchronisation: only for the separate profiling steps below, since the
    // synchronisations themselves cost time.
    using Clock = std::chrono::steady_clock;
    auto step = [&](double* phase = nullptr) {
      train::PhaseMark mark;
      Clock::time_point t = Clock::now();
      if (phase)
        mark = [&](train::StepPhase p) {
          sync();
          const auto now = Clock::now();
          phase[static_cast<int>(p)] += 1e3 * std::chrono::duration<double>(now - t).count();
          t = now;
        };
      const auto batch = objective.next_batch();
      return train::train_step(model, objective, *opt, *batch, 1e-5, 1.0, world, mark);
    };
    auto first = [&](const train::StepResult& r) {
      res.loss_first = r.metrics.at("loss");
      res.grad_norm_first = r.grad_norm;
    };
    for (int64_t i = 0; i < o.warmup; ++i) {
      const train::StepResult r = step();
      if (i == 0) first(r);
    }
    sync();
    if (o.gpu()) reset_device_memory_peak();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < o.steps; ++i) {
      const train::StepResult r = step();
      res.loss_last = r.metrics.at("loss");
      res.grad_norm_last = r.grad_norm;
      if (i == 0 && o.warmup == 0) first(r);  // the first step of all
    }
    sync();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res.step_ms = 1e3 * secs / static_cast<double>(o.steps);
    res.tokens_per_s = static_cast<double>(o.seq * o.accum) * static_cast<double>(o.steps) / secs;
    res.mfu = o.peak_tflops > 0 ? flops / (secs / static_cast<double>(o.steps)) / (o.peak_tflops * 1e12) : 0;
    const DeviceMemoryStats m = o.gpu() ? device_memory_stats() : DeviceMemoryStats{};
    res.peak_bytes = m.peak;
    res.reserved_bytes = m.reserved;
    sync();
    for (int64_t i = 0; i < 2; ++i) step(res.phase_ms);
    for (double& ms : res.phase_ms) ms /= 2;
    if (o.profile) {
      profile_start();
      for (int64_t i = 0; i < 2; ++i) step();
      res.profile = profile_stop();
    }
  }
  if (o.gpu()) release_cached_device_memory();  // hand the memory back before the competitor runs
  return res;
}

// A file of this process for the Hugging Face script ("config.json" -> /tmp/g4_bench_hf_<pid>_config.json),
// so that two benchmarks at once do not take each other's.
std::string hf_file(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("g4_bench_hf_" + std::to_string(::getpid()) + "_" + name)).string();
}

// The script's --shape for a released model's widths (its own table, checked against g4's by
// --check-only), or --config with the config g4 trains, written out (tiny shapes, config files).
std::string hf_model_args(const BenchOptions& o, const io::ModelConfig& cfg) {
  if (o.config.empty() && !o.media()) {
    if (o.model == "gemma-4-26b-a4b") return " --shape 26b-a4b --layers " + std::to_string(o.layers);
    if (o.model == "gemma-4-31b") return " --shape 31b --layers " + std::to_string(o.layers);
    if (o.model == "gemma-4-e4b") return " --shape e4b --layers " + std::to_string(o.layers);
  }
  const std::string path = hf_file("config.json");
  io::write_file_atomic(path, io::model_config_to_json(cfg).dump(1) + "\n");
  return " --config " + path;
}

// peft's LoraConfig for the script: the same rank, alpha and targets (dropout 0 on both sides).
std::string hf_lora_args(const BenchOptions& o) {
  if (o.lora <= 0) return "";
  std::string targets;
  for (const std::string& t : bench_lora(o).targets) targets += (targets.empty() ? "" : ",") + t;
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%.17g", o.lora_alpha);
  return " --lora " + std::to_string(o.lora) + " --lora-alpha " + alpha + " --lora-targets " + targets;
}

// With media, the script trains on g4's very row: its ids, positions, labels, token types and
// processed media, written under transformers' names.
std::string hf_inputs_args(const PackedRow& row) {
  if (!row.media) return "";
  const std::string path = hf_file("inputs.safetensors");
  std::vector<std::pair<std::string, Tensor>> t = {{"input_ids", row.input_ids},
                                                   {"position_ids", row.position_ids},
                                                   {"labels", row.labels},
                                                   {"mm_token_type_ids", row.mm_token_type_ids}};
  for (const auto& [name, value] :
       {std::pair<const char*, const Tensor*>{"pixel_values", &row.media->pixel_values},
        {"image_position_ids", &row.media->image_position_ids},
        {"input_features", &row.media->input_features},
        {"input_features_mask", &row.media->input_features_mask}})
    if (value->defined()) t.emplace_back(name, *value);
  io::save_safetensors(path, t);
  return " --inputs " + path;
}

nlohmann::json run_hf(const BenchOptions& o, const io::ModelConfig& cfg, const std::string& precision,
                      const PackedRow& row) {
  std::string documents;
  for (int64_t n : row.documents) documents += (documents.empty() ? "" : ",") + std::to_string(n);
  const std::string out = hf_file(precision + ".json");
  const std::string args = hf_model_args(o, cfg) + hf_inputs_args(row) + " --device " + o.device + " --seq " +
                           std::to_string(o.seq) + " --steps " + std::to_string(o.steps) + " --warmup " +
                           std::to_string(o.warmup) + " --accum " + std::to_string(o.accum) + " --precision " +
                           precision + " --seed " + std::to_string(o.seed) + " --peak-tflops " +
                           std::to_string(o.peak_tflops) + " --documents " + documents + hf_lora_args(o) +
                           (o.recompute ? " --recompute" : "");
  nlohmann::json r = run_python_benchmark(o.hf_script + args, out);
  std::filesystem::remove(out);
  return r;
}

// The rate of one large bf16 GEMM (8192 x 8192 x 8192, fp32 accumulation) on this GPU: what a
// matmul can reach here, the second MFU basis. Median of 10 after 2 untimed.
double achievable_matmul_tflops() {
  constexpr int64_t n = 8192;
  const Tensor a = randn({n, n}, 1, DType::F32).to(Device::CUDA).to(DType::BF16);
  const Tensor b = randn({n, n}, 2, DType::F32).to(Device::CUDA).to(DType::BF16);
  std::vector<double> ms;
  for (int i = 0; i < 12; ++i) {
    device_synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    (void)ops::linear(a, b);
    device_synchronize();
    if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return 2.0 * n * n * n / (ms[ms.size() / 2] * 1e-3) / 1e12;
}

// MFU against the datasheet peak, then against the achievable matmul rate; "n/a" where there is
// no such figure (a CPU has no datasheet peak here, and no GEMM rate is measured on it).
void print_row(const char* name, double tps, double ms, double flops, double peak_tflops, double achievable_tflops,
               double peak_gib) {
  const double rate = flops / (ms * 1e-3) / 1e12;
  const auto percent = [&](double of) {
    char buf[32];
    if (of > 0)
      std::snprintf(buf, sizeof buf, "%.1f%%", 100 * rate / of);
    else
      std::snprintf(buf, sizeof buf, "n/a");
    return std::string(buf);
  };
  char mem[32] = "n/a";
  if (peak_gib > 0) std::snprintf(mem, sizeof mem, "%.2f", peak_gib);
  std::printf("  %-34s %12.0f %10.1f %8s %12s %10s\n", name, tps, ms, percent(peak_tflops).c_str(),
              percent(achievable_tflops).c_str(), mem);
}

// One rank of a --ranks run (under g4 launch), or of `g4 launch -n N g4 bench train ...`: trains its
// own row with the others as data-parallel replicas. Returns, on rank 0, the figures (the slowest
// rank's step time), also written to o.rank_report when given; null on the other ranks.
nlohmann::json bench_rank(BenchOptions o) {
  // A GPU rank takes its GPU before any CUDA work; ranks sharing one GPU go over host-staged MPI.
  const std::unique_ptr<parallel::Communicator> world =
      o.gpu() ? parallel::make_gpu_world_communicator() : parallel::make_world_communicator();
  if (o.gpu() && o.peak_tflops <= 0) o.peak_tflops = datasheet_dense_bf16_tflops(cuda_device_name());
  const io::ModelConfig cfg = bench_config(o);
  const RowMedia media = make_media(o, cfg);
  const PackedRow row = make_row(o, cfg, media, world->rank());
  // Every rank's row has the same document lengths, so the same FLOPs.
  const double flops = train::forward_flops(cfg, row.documents, bench_lora(o)).training() * static_cast<double>(o.accum);
  const Result g = run_g4(o, cfg, row, flops, *world);
  Tensor slowest = Tensor::from_vector<double>({g.step_ms, static_cast<double>(g.peak_bytes)}, {2});
  parallel::all_reduce_values(*world, slowest, parallel::ReduceOp::Max);
  if (world->rank() != 0) return nullptr;
  const double step_ms = slowest.data<double>()[0];
  const double per_rank = static_cast<double>(o.seq * o.accum) / (step_ms * 1e-3);
  const nlohmann::json report = {{"ranks", world->size()},
                                 {"backend", world->backend()},
                                 {"gpus", o.gpu() ? cuda_device_count() : 0},
                                 {"gpu", o.gpu() ? cuda_device_name() : ""},
                                 {"step_ms", step_ms},
                                 {"tokens_per_s", per_rank * world->size()},
                                 {"tokens_per_s_per_rank", per_rank},
                                 {"flops_per_step_per_rank", flops},
                                 {"mfu", o.peak_tflops > 0 ? flops / (step_ms * 1e-3) / (o.peak_tflops * 1e12) : 0.0},
                                 {"peak_alloc_bytes", slowest.data<double>()[1]},
                                 {"loss_first", g.loss_first},
                                 {"loss_last", g.loss_last}};
  if (!o.rank_report.empty()) io::write_file_atomic(o.rank_report, report.dump(1) + "\n");
  return report;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (const char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The command line of one rank of a --ranks run: everything that shapes the step, nothing that
// belongs to the parent (the table, --json, --hf).
std::string rank_args(const BenchOptions& o, const std::string& report) {
  std::string a = " bench train --device " + o.device;
  a += o.config.empty() ? " --model " + o.model + " --layers " + std::to_string(o.layers) : " --config " + shell_quote(o.config);
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"--seq", o.seq}, {"--steps", o.steps},
                                   {"--warmup", o.warmup}, {"--accum", o.accum}, {"--lora", o.lora},
                                   {"--images", o.images}, {"--image-soft-tokens", o.image_soft_tokens}})
    a += std::string(" ") + key + " " + std::to_string(value);
  a += " --seed " + std::to_string(o.seed);
  char num[128];
  std::snprintf(num, sizeof num, " --lora-alpha %.17g --audio-seconds %.17g", o.lora_alpha, o.audio_seconds);
  a += num;
  if (o.peak_tflops > 0) {
    std::snprintf(num, sizeof num, " --peak-tflops %.17g", o.peak_tflops);
    a += num;
  }
  if (!o.lora_targets.empty()) {
    std::string t;
    for (const std::string& x : o.lora_targets) t += (t.empty() ? "" : ",") + x;
    a += " --lora-targets " + shell_quote(t);
  }
  if (o.lora_experts) a += " --lora-experts";
  if (o.recompute) a += " --recompute";
  if (o.fsdp) a += " --fsdp";
  if (o.bf16_moments) a += " --bf16-moments";
  if (o.param_remainders) a += " --param-remainders";
  return a + " --rank-report " + shell_quote(report);
}

// The table of --ranks runs (their reports, in order) with the efficiency against the one-rank run.
void print_ranks_table(const BenchOptions& o, nlohmann::json& runs) {
  double one = 0;  // tokens/s of one rank, the efficiency's basis
  for (const auto& r : runs)
    if (r.at("ranks").get<int64_t>() == 1) one = r.at("tokens_per_s").get<double>();
  std::printf("\n  %5s %-18s %12s %14s %10s %8s %11s %10s\n", "ranks", "communicator", "tokens/s", "per rank",
              "step ms", "MFU", "efficiency", "peak GiB");
  bool shared = false;
  for (auto& r : runs) {
    const int64_t n = r.at("ranks").get<int64_t>();
    const double tps = r.at("tokens_per_s").get<double>(), mfu = r.at("mfu").get<double>();
    const double peak = r.at("peak_alloc_bytes").get<double>();
    char eff[32] = "n/a", m[32] = "n/a", mem[32] = "n/a";
    if (one > 0) {
      r["efficiency"] = tps / (static_cast<double>(n) * one);
      std::snprintf(eff, sizeof eff, "%.1f%%", 100 * r["efficiency"].get<double>());
    }
    if (mfu > 0) std::snprintf(m, sizeof m, "%.1f%%", 100 * mfu);
    if (peak > 0) std::snprintf(mem, sizeof mem, "%.2f", peak / (1 << 30));
    // Ranks beyond the GPUs share them (host-staged MPI): their time is divided, not scaled.
    const bool shares = o.gpu() && n > r.at("gpus").get<int64_t>();
    shared = shared || shares;
    std::printf("  %5lld %-18s %12.0f %14.0f %10.1f %8s %11s %10s%s\n", static_cast<long long>(n),
                r.at("backend").get<std::string>().c_str(), tps, r.at("tokens_per_s_per_rank").get<double>(),
                r.at("step_ms").get<double>(), m, eff, mem, shares ? "  (ranks share GPUs)" : "");
  }
  if (one <= 0) std::printf("  efficiency: n/a (add 1 to --ranks for its basis)\n");
  if (shared)
    std::printf("  Ranks that share a GPU (host-staged MPI) split its time: their efficiency is not a scaling "
                "figure, only the cost of the exchanges on the same GPU.\n");
  if (!o.gpu())
    std::printf("  CPU ranks: one BLAS thread each under mpirun (one rank alone may use more), on the cores this "
                "machine has: a smoke run, not a scaling figure.\n");
  std::printf("  efficiency = tokens/s(N) / (N x tokens/s(1)); MFU per rank against the datasheet peak; step ms "
              "of the slowest rank\n");
  if (!o.json.empty())
    io::write_file_atomic(o.json, nlohmann::json{{"model", o.model_name()}, {"ranks", runs}}.dump(2) + "\n");
}

// --ranks N1,N2,...: the step on N data-parallel ranks for each N (g4 launch -n N), per rank and in
// total, with the efficiency against one rank: tokens/s(N) / (N · tokens/s(1)).
void bench_ranks(const BenchOptions& o) {
  G4_CHECK(!o.hf, "g4 bench train: --ranks and --hf do not combine (the Hugging Face side runs one process); run "
           "--hf without --ranks");
  G4_CHECK(!o.profile, "g4 bench train: --profile profiles one process; run it without --ranks");
  G4_CHECK(!(o.fsdp && o.lora > 0), "g4 bench train: --lora does not combine with --fsdp here (g4 train runs LoRA under "
           "parallel.fsdp, but this benchmark's sharded path is for full fine-tuning)");
  G4_CHECK(o.device == "cuda" || o.device == "cpu", "g4 bench train: --device is cuda or cpu, not '", o.device, "'");
  bench_config(o);  // the model flags, before any rank starts to find them wrong
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::printf("g4 bench train --ranks: %s, seq %lld per rank (each rank its own row, the same document lengths), "
              "%s optimizer state, %lld steps after %lld warm-up; each count launched by g4 launch\n",
              o.model_name().c_str(), static_cast<long long>(o.seq), o.fsdp ? "sharded (--fsdp)" : "replicated",
              static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
  std::fflush(stdout);
  nlohmann::json runs = nlohmann::json::array();
  for (const int64_t n : o.ranks) {
    G4_CHECK(n >= 1, "g4 bench train: --ranks takes rank counts of at least 1, got ", n);
    const std::string report = (std::filesystem::temp_directory_path() /
                                ("g4_bench_ranks_" + std::to_string(::getpid()) + "_" + std::to_string(n) + ".json"))
                                   .string();
    std::filesystem::remove(report);
    const std::string cmd = shell_quote(self) + " launch -n " + std::to_string(n) + rank_args(o, report);
    std::printf("running: %s\n", cmd.c_str());
    std::fflush(stdout);
    const int rc = std::system(cmd.c_str());
    G4_CHECK(rc == 0 && std::filesystem::exists(report), "g4 bench train --ranks: the ", n, "-rank run failed (",
             command_status(rc), "); its output is above");
    runs.push_back(io::read_json_file(report, "the " + std::to_string(n) + "-rank report", io::kMaxConfigBytes));
    std::filesystem::remove(report);
  }
  print_ranks_table(o, runs);
}

void bench_train(BenchOptions o) {
  if (!o.rank_report.empty()) {
    bench_rank(std::move(o));
    return;
  }
  // The report is written at the end: a path that cannot be made must not cost the run.
  if (!o.json.empty()) check_output_file_creatable(o.json, "g4 bench train: --json");
  if (!o.ranks.empty()) return bench_ranks(o);
  if (parallel::detect_launch().size > 1) {
    // Started as several ranks (g4 launch, mpirun, srun): one data-parallel run, its row of the
    // --ranks table printed by rank 0 (no efficiency without a one-rank run to compare with).
    G4_CHECK(!o.hf && !o.profile, "g4 bench train: --hf and --profile run in one process, not under a launcher");
    nlohmann::json report = bench_rank(o);
    if (!report.is_null()) {
      nlohmann::json runs = nlohmann::json::array({report});
      print_ranks_table(o, runs);
    }
    return;
  }
  G4_CHECK(o.device == "cuda" || o.device == "cpu", "g4 bench train: --device is cuda or cpu, not '", o.device, "'");
  G4_CHECK(!o.profile || o.gpu(), "g4 bench train: --profile profiles GPU kernels (CUPTI); it needs --device cuda");
  // Every flag is checked before the GPU is looked at: on a machine without one, a mistake in them
  // is reported as such, not hidden behind "needs a CUDA GPU".
  const io::ModelConfig cfg = bench_config(o);
  G4_CHECK(!o.lora_experts || o.lora > 0, "g4 bench train: --lora-experts adds the routed experts to --lora's targets; "
           "give --lora R");
  G4_CHECK(!o.lora_experts || cfg.enable_moe_block, "g4 bench train: --lora-experts: ", o.model_name(),
           " has no routed experts");
  if (o.hf) check_python_benchmark("g4 bench train", o.hf_script);
  // The GPU: its datasheet peak and what a large GEMM reaches there. The CPU: neither (MFU n/a
  // unless --peak-tflops gives a figure).
  std::string where = "CPU (f32)";
  double achievable = 0;
  if (o.gpu()) {
    where = cuda_device_name();
    G4_CHECK(!where.empty(), "g4 bench train needs a CUDA GPU (this build or machine has none); "
             "--device cpu runs it on the CPU");
    if (o.peak_tflops <= 0) {
      o.peak_tflops = datasheet_dense_bf16_tflops(where);
      G4_CHECK(o.peak_tflops > 0, "g4 bench train: no datasheet dense bf16 peak is known for the GPU '", where,
               "'; give it with --peak-tflops");
    }
    achievable = achievable_matmul_tflops();
  }
  const model::LoraConfig lora = bench_lora(o);
  const RowMedia media = make_media(o, cfg);
  const PackedRow row = make_row(o, cfg, media);
  const train::StepFlops fl = train::forward_flops(cfg, row.documents, lora);
  const double step_flops = fl.training() * static_cast<double>(o.accum);
  int64_t full = 0;
  for (const auto& ls : cfg.layers) full += !ls.sliding;
  std::printf("g4 bench train: %s widths, %lld layers (%lld sliding, %lld full attention), seq %lld packed from %zu "
              "documents, %lld micro-batch%s per step, %lld steps after %lld warm-up\n",
              o.model_name().c_str(), static_cast<long long>(cfg.num_layers),
              static_cast<long long>(cfg.num_layers - full), static_cast<long long>(full),
              static_cast<long long>(o.seq), row.documents.size(), static_cast<long long>(o.accum),
              o.accum > 1 ? "es" : "", static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
  if (o.lora > 0) {
    std::string targets;
    for (const std::string& t : lora.targets) targets += (targets.empty() ? "" : ",") + t;
    std::printf("LoRA rank %lld, alpha %g on %s over a frozen base (only the adapters train)\n",
                static_cast<long long>(o.lora), o.lora_alpha, targets.c_str());
    // With the base frozen its weight-gradient GEMMs are skipped: what the step must compute.
    std::printf("model FLOPs per step %.4g TFLOP (base matmuls %.4g = forward + input gradients, attention %.4g, "
                "adapters %.4g; the base's weight gradients are not computed, so not counted)\n",
                step_flops / 1e12, 2 * fl.matmul * o.accum / 1e12, 3 * fl.attention * o.accum / 1e12,
                3 * fl.adapters * o.accum / 1e12);
  } else {
    std::printf("model FLOPs per step %.4g TFLOP (matmuls %.4g, attention %.4g; training = 3 x forward)\n",
                step_flops / 1e12, 3 * fl.matmul * o.accum / 1e12, 3 * fl.attention * o.accum / 1e12);
  }
  if (o.media())
    std::printf("media per row: %lld image%s (%lld soft tokens), %g s of audio (%lld soft tokens), through the "
                "towers; MFU counts the decoder's FLOPs only (the towers' are not counted)\n",
                static_cast<long long>(o.images), o.images == 1 ? "" : "s", static_cast<long long>(row.image_tokens),
                o.audio_seconds, static_cast<long long>(row.audio_tokens));
  if (o.gpu())
    std::printf("%s: MFU against its datasheet dense bf16 peak, %.0f TFLOP/s, and against the %.0f TFLOP/s an "
                "8192^3 bf16 GEMM reaches here\n",
                where.c_str(), o.peak_tflops, achievable);
  else
    std::printf("%s: no datasheet peak, so MFU is n/a%s; tokens/s only. Memory: n/a (host tensors are not "
                "counted)\n",
                where.c_str(), o.peak_tflops > 0 ? " (but for --peak-tflops)" : "");
  parallel::SingleCommunicator single;
  const Result g = run_g4(o, cfg, row, step_flops, single);
  nlohmann::json report = {{"model", o.model_name()}, {"layers", cfg.num_layers}, {"device", o.device},
                           {"gpu", o.gpu() ? where : ""}, {"peak_tflops", o.peak_tflops},
                           {"achievable_tflops", achievable}, {"seq", o.seq}, {"documents", row.documents},
                           {"accum", o.accum}, {"flops_per_step", step_flops},
                           {"flops", {{"matmul_forward", fl.matmul * o.accum}, {"attention_forward", fl.attention * o.accum},
                                      {"adapters_forward", fl.adapters * o.accum}, {"frozen_base", fl.frozen_base}}},
                           {"lora", {{"rank", o.lora}, {"alpha", o.lora_alpha}, {"targets", lora.targets}}},
                           {"media", {{"images", o.images}, {"audio_seconds", o.audio_seconds},
                                      {"image_soft_tokens", row.image_tokens}, {"audio_soft_tokens", row.audio_tokens}}},
                           {"g4", {{"tokens_per_s", g.tokens_per_s}, {"step_ms", g.step_ms}, {"mfu", g.mfu},
                                   {"peak_alloc_bytes", g.peak_bytes}, {"reserved_bytes", g.reserved_bytes},
                                   {"parameters", g.parameters}, {"trainable_parameters", g.trainable},
                                   {"loss_first", g.loss_first}, {"loss_last", g.loss_last},
                                   {"forward_ms", g.phase_ms[0]}, {"backward_ms", g.phase_ms[1]},
                                   {"optimizer_ms", g.phase_ms[2]}}}};
  std::vector<std::pair<std::string, nlohmann::json>> hf;
  if (o.hf)
    for (const auto& p : o.hf_precisions) hf.emplace_back(p, run_hf(o, cfg, p, row));
  for (const char* f : {"config.json", "inputs.safetensors"}) std::filesystem::remove(hf_file(f));
  std::printf("\n  %-34s %12s %10s %8s %12s %10s\n", "", "tokens/s", "step ms", "MFU", "of achiev.", "peak GiB");
  std::printf("g4: %.4g B parameters, %.4g M of them trained\n", static_cast<double>(g.parameters) / 1e9,
              static_cast<double>(g.trainable) / 1e6);
  std::string label = o.gpu() ? (o.lora > 0 ? "g4 (bf16 base, fp32 adapter master" : "g4 (bf16 compute, fp32 master")
                              : "g4 (f32, CPU";
  if (o.param_remainders) label += " as bf16 + remainder";
  if (o.bf16_moments) label += ", bf16 moments";
  print_row((label + ")").c_str(), g.tokens_per_s, g.step_ms, step_flops,
            o.peak_tflops, achievable, static_cast<double>(g.peak_bytes) / (1 << 30));
  for (const auto& [p, r] : hf) {
    report["hf_" + p] = r;
    const std::string name = "HF transformers" + std::string(o.lora > 0 ? " + peft" : "") + " (" + p + ")";
    if (r.contains("error") || r.value("oom", false)) {
      const std::string why = r.value("oom", false) ? "out of memory" : r.value("error", std::string("failed"));
      std::printf("  %-34s %s\n", name.c_str(), why.c_str());
      continue;
    }
    // The same FLOPs and peaks for both engines (the script's own MFU field is not used).
    const double hf_peak = r.value("peak_alloc_bytes", 0.0);
    print_row(name.c_str(), r["tokens_per_s"].get<double>(), r["step_ms"].get<double>(), step_flops, o.peak_tflops,
              achievable, hf_peak / (1 << 30));
    std::printf("  %-34s %11.2fx", ("  g4 / HF (" + p + ")").c_str(), g.tokens_per_s / r["tokens_per_s"].get<double>());
    if (hf_peak > 0 && g.peak_bytes > 0)
      std::printf(" %33.2fx", static_cast<double>(g.peak_bytes) / hf_peak);
    std::printf("\n");
  }
  if (o.media()) {
    // Of each row's tokens, the soft tokens stand for media; the rest is text (boundaries included).
    const double soft = static_cast<double>(row.image_tokens + row.audio_tokens) / static_cast<double>(o.seq);
    std::printf("  of the tokens/s: text %.0f and soft tokens %.0f (g4)", g.tokens_per_s * (1 - soft),
                g.tokens_per_s * soft);
    for (const auto& [p, r] : hf)
      if (r.contains("tokens_per_s"))
        std::printf(", text %.0f and soft tokens %.0f (HF %s)", r["tokens_per_s"].get<double>() * (1 - soft),
                    r["tokens_per_s"].get<double>() * soft, p.c_str());
    std::printf("\n");
  }
  std::printf("  losses: g4 first %.4f last %.4f; gradient norm (before clipping) first %.4g last %.4g\n",
              g.loss_first, g.loss_last, g.grad_norm_first, g.grad_norm_last);
  std::printf("  g4 phases (2 extra steps, each phase closed by a synchronisation): forward %.1f ms, backward %.1f "
              "ms, clipping + AdamW %.1f ms\n",
              g.phase_ms[0], g.phase_ms[1], g.phase_ms[2]);
  if (o.profile) print_profile(g.profile, 2);
  if (!o.json.empty()) io::write_file_atomic(o.json, report.dump(2) + "\n");
}

}  // namespace

// The kernels of `steps` profiled steps, per step, largest first, with the GPU's idle time (launch
// gaps and host synchronisations).
void print_profile(const KernelProfile& p, int steps) {
  const double per = 1.0 / steps, window = p.window_ms * per;
  std::printf("\n  kernel profile (CUPTI, %d steps): %.1f ms per step, GPU busy %.1f ms, idle %.1f ms (%.0f%%)\n", steps,
              window, p.busy_ms * per, window - p.busy_ms * per, 100 * (1 - p.busy_ms / p.window_ms));
  std::printf("  %9s %6s %6s  %s\n", "ms/step", "%", "calls", "kernel");
  double shown = 0;
  for (size_t i = 0; i < p.kernels.size(); ++i) {
    const KernelTime& k = p.kernels[i];
    if (i >= 40) {
      std::printf("  %9.2f %5.1f%% %6s  (%zu more kernels)\n", (p.busy_ms - shown) * per,
                  100 * (p.busy_ms - shown) / p.window_ms, "", p.kernels.size() - i);
      break;
    }
    shown += k.total_ms;
    std::printf("  %9.2f %5.1f%% %6lld  %s\n", k.total_ms * per, 100 * k.total_ms / p.window_ms,
                static_cast<long long>(k.count / steps), k.name.c_str());
  }
}

nlohmann::json run_python_benchmark(const std::string& script_and_args, const std::string& out_json) {
  std::remove(out_json.c_str());
  // Under scripts/device_run.sh the g4 binaries run with bundled libraries that Python must not load.
  const std::string env = std::getenv("G4_PYTHON_LD_LIBRARY_PATH") ? "LD_LIBRARY_PATH=\"$G4_PYTHON_LD_LIBRARY_PATH\" " : "";
  const std::string cmd = env + "python3 " + script_and_args + " --json " + out_json;
  std::printf("running: %s\n", cmd.c_str());
  std::fflush(stdout);
  const int rc = std::system(cmd.c_str());
  std::ifstream f(out_json);
  if (f && rc != 0) {
    // A script that ran out of GPU memory says so in its output (and exits non-zero): that is its result.
    try {
      nlohmann::json j = io::read_json_file(out_json, "Hugging Face benchmark output", io::kMaxConfigBytes);
      if (j.is_object() && j.value("oom", false)) return j;
    } catch (const std::exception&) {  // a script that died while writing: reported as failed below
    }
  }
  if (rc != 0 || !f)
    return nlohmann::json{{"error", "the Hugging Face benchmark failed (" + command_status(rc) + "; its output is above)"}};
  return io::read_json_file(out_json, "Hugging Face benchmark output", io::kMaxConfigBytes);
}

void check_bench_model(const std::string& command, const std::string& model, const std::vector<std::string>& known,
                       int64_t layers) {
  if (std::find(known.begin(), known.end(), model) == known.end()) {
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    G4_FAIL(command, ": --model '", model, "' is not a built-in shape (", list, ")");
  }
  const int64_t depth = model::named_config_depth(model);
  G4_CHECK(depth == 0 || layers <= depth, command, ": --layers ", layers, " is more than ", model, "'s ", depth,
           " decoder layers");
}

void check_python_benchmark(const std::string& command, const std::string& script) {
  std::error_code ec;
  G4_CHECK(std::filesystem::is_regular_file(script, ec), command, ": --hf-script ", script,
           " is not a file", io::relative_path_note(script));
  G4_CHECK(!find_on_path("python3").empty(), command, ": --hf runs ", script,
           " with python3, which is not on PATH (it needs torch and transformers: tools/requirements-reference.txt)");
}

void add_bench(CLI::App& app, Action& action) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (on the GPU; bench train also on the CPU)");
  bench->require_subcommand(1);
  auto* cmd = bench->add_subcommand("train", "Training-step speed at a real Gemma 4 shape, optionally against "
                                              "Hugging Face transformers");
  auto o = std::make_shared<BenchOptions>();
  cmd->add_option("--model", o->model,
                  "gemma-4-26b-a4b | gemma-4-e4b | gemma-4-31b (real widths) | tiny-moe | tiny-dense (CPU smoke runs)");
  cmd->add_option("--config", o->config, "an HF config.json (or its directory) to train instead of --model")
      ->excludes("--model");
  auto* layers = cmd->add_option("--layers", o->layers, "decoder layers of a built-in --model (as many as fit, at "
                                                         "most the released model's; the last is full attention)")
                     ->check(positive_integer());
  cmd->add_option("--device", o->device, "cuda (bf16 compute, fp32 masters; default) or cpu (f32: a smoke run, MFU n/a)");
  cmd->add_option("--seq", o->seq, "tokens per step (one packed row)")->check(positive_integer());
  cmd->add_option("--steps", o->steps, "timed steps")->check(positive_integer());
  cmd->add_option("--accum", o->accum, "micro-batches per optimizer step (gradient accumulation over the same row)")
      ->check(positive_integer());
  cmd->add_option("--warmup", o->warmup, "untimed steps first")->check(non_negative_integer());
  cmd->add_option("--peak-tflops", o->peak_tflops,
                  "the MFU denominator in TFLOP/s (default: the datasheet dense bf16 peak of the GPU, e.g. 989 for "
                  "H100/H200 SXM)")
      ->check(real_in(0, 1e9));
  cmd->add_flag("--recompute", o->recompute, "activation recompute");
  cmd->add_flag("--profile", o->profile, "print the GPU time of every kernel over two extra steps (CUPTI)");
  cmd->add_flag("--hf", o->hf, "also run tools/bench_hf_train.py (transformers + PyTorch) on the same shapes");
  cmd->add_option("--hf-script", o->hf_script, "path of the Hugging Face benchmark script");
  cmd->add_option("--images", o->images,
                  "images (random pixels) at the start of the packed row, through the vision tower")
      ->check(non_negative_integer());
  cmd->add_option("--audio-seconds", o->audio_seconds,
                  "seconds of audio (noise, 16 kHz) in the packed row, through the audio tower (E4B; at most 30)")
      ->check(real_in(0, 30));
  cmd->add_option("--image-soft-tokens", o->image_soft_tokens,
                  "the image processor's soft-token budget: 70, 140, 280 (default; 0 too), 560 or 1120")
      ->check(CLI::IsMember(std::vector<int64_t>{0, 70, 140, 280, 560, 1120}));  // 0: the default
  auto* ranks = cmd->add_option("--ranks", o->ranks_text,
                  "data-parallel rank counts, e.g. 1,2,4: the step on each count (relaunched by g4 launch), per-rank "
                  "tokens/s, MFU and the efficiency against one rank (at most 256 each)");
  cmd->add_flag("--fsdp", o->fsdp, "with --ranks: shard the optimizer state over the ranks (ZeRO-3)");
  cmd->add_flag("--bf16-moments", o->bf16_moments,
                "AdamW's moments stored in bf16 (optimizer.exp_avg_dtype and exp_avg_sq_dtype: bfloat16)");
  cmd->add_flag("--param-remainders", o->param_remainders,
                "the fp32 masters kept as the bf16 parameters plus 16-bit remainders "
                "(optimizer.store_param_remainders)");
  cmd->add_option("--rank-report", o->rank_report, "(internal) one rank of a --ranks run: where rank 0 writes")
      ->group("");
  auto* precision = cmd->add_option("--hf-precision", o->hf_precisions,
                                    "fp32-autocast and/or bf16 (default both; with --lora bf16: a bf16 base)");
  cmd->add_option("--json", o->json, "write the results as JSON");
  cmd->add_option("--lora", o->lora, "LoRA rank: train adapters over a frozen bf16 base (0: full fine-tuning)")
      ->check(non_negative_integer());
  cmd->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (the adapters' output is scaled by alpha / rank)")
      ->check(real_in(0, 1e9, true));
  cmd->add_option("--lora-targets", o->lora_targets,
                  "PEFT target modules (default: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)")
      ->delimiter(',');
  cmd->add_flag("--lora-experts", o->lora_experts,
                "also adapt the routed experts' weights (experts.gate_up_proj, experts.down_proj: PEFT's "
                "target_parameters)");
  cmd->add_option("--seed", o->seed, "seed of the weights and the batch")->check(unsigned_integer());
  cmd->callback([&action, o, layers, precision, ranks] {
    o->layers_given = layers->count() > 0;
    const bool ranks_given = ranks->count() > 0;
    // peft's usual set-up, and g4's: a bf16 frozen base with fp32 adapters under autocast.
    if (o->lora > 0 && precision->count() == 0) o->hf_precisions = {"bf16"};
    action = [o, ranks_given] {
      if (ranks_given) o->ranks = parse_integer_list(o->ranks_text, "--ranks", "a rank count", 1, kMaxLocalRanks);
      bench_train(*o);
    };
  });
  add_bench_generate(*bench, action);
  add_bench_rl(*bench, action);
}

}  // namespace g4::cli

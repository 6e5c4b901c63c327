// Training recipes: YAML files (plus `key.path=value` overrides from the command line) turned
// into typed options. Every key is one line of the schema (recipe.cpp, `recipe_schema()`): its
// path, the Recipe field it fills, its constraint and a one-line doc; its default is that field's
// initial value below. An unknown key or a value of the wrong type or range is an error naming the
// key path and the file. `g4 train --list-keys` prints the schema.
#pragma once
#include <array>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "data/dataset.h"
#include "model/lora_config.h"

namespace g4::train {

// What `g4 rl` reads beyond the shared keys (NeMo-RL's GRPO/DAPO names; docs/rl.md).
// Plain values: the rl layer turns them into its own types.
struct RlSettings {
  // grpo.*
  int64_t prompts_per_step = 8, generations_per_prompt = 8;
  bool normalize_rewards = true, leave_one_out_baseline = false;
  bool dynamic_sampling = false;
  double batch_multiplier = 1.0;
  int64_t dynamic_sampling_max_rounds = 10;
  bool reward_scaling = false;
  double scaling_source_min = 0, scaling_source_max = 1, scaling_target_min = 0, scaling_target_max = 1;
  bool overlong_shaping = false;
  int64_t overlong_buffer_length = 0, max_response_length = 0;
  double overlong_penalty = 1.0;
  uint64_t seed = 0;                      // prompt order and sampling draws
  int64_t val_samples_per_prompt = 1;     // k of the validation accuracy avg@k
  int64_t max_val_prompts = 0;            // 0: every validation prompt
  // loss_fn.*
  double ratio_clip_min = 0.2, ratio_clip_max = 0.2, ratio_clip_c = 0;  // c 0: no dual clip
  double kl_penalty = 0;
  std::string kl_type = "k3";
  double kl_input_clamp = 20, kl_output_clamp = 10;
  bool on_policy_kl_approximation = false, importance_sampling_correction = false;
  std::string truncation = "none";        // none | tis | icepop | seq-mask-tis
  double truncation_ratio = 2.0, truncation_ratio_min = 0.0;
  bool token_level_loss = true;
  // generation.*
  int64_t max_new_tokens = 64;
  int64_t max_total_sequence_length = 0;  // prompt + response; 0: the model's context
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;                      // 0: off
  std::vector<std::string> stop_strings;
  double memory_fraction = 0.5;           // of the free GPU memory, for the KV pages of a rollout
  int64_t page_size = 16, max_running = 256;
  // prompts.*
  std::string prompts_train, prompts_validation;  // JSONL prompt sets, or
  std::string task;                               // a built-in task (g4 task)
  int64_t task_difficulty = 2, task_validation_prompts = 64;
  std::string system_prompt;
  int64_t max_input_seq_length = 2048;
  // reward.*
  std::string reward = "dapo_math", reward_pattern, reward_command;
  double reward_timeout_s = 600;
  // train.* (rl)
  int64_t global_batch_size = 0;      // samples per optimizer step (0: the whole step's, one update)
  int64_t micro_batch_tokens = 4096;  // tokens per packed training row
};

// What a block-diffusion recipe reads beyond the shared keys: NeMo Automodel's dllm.* names
// (docs/diffusion.md "Training"). Plain values: the diffusion layer turns them into its options.
struct DllmSettings {
  std::string mode = "block_diffusion";
  int64_t block_size = 0;  // 0: the model's canvas_length
  double eps = 1e-3, self_conditioning_p = 0.5, encoder_loss_weight = 1.0;
  bool supervise_padding = false;
  int64_t pad_block_size = 0;         // 0: the block size
  int64_t pad_seq_len_divisible = 0;  // 0 or 1: rows end at their longest fill
  uint64_t seed = 42;                 // Automodel's top-level `seed`
  // Plain text is cut into (prompt, continuation) examples of these many tokens.
  int64_t prompt_tokens = 64, continuation_tokens = 0;  // continuation 0: the block size
};

// Which command a recipe is for: `g4 train` and `g4 rl` share the model, optimizer, schedule,
// checkpoint and device keys; data.* and the SFT batch keys are train's, grpo.* / loss_fn.* /
// generation.* / prompts.* / reward.* are rl's. A `g4 train` recipe with a dllm section is a
// block-diffusion recipe (kDiffusion): it shares train's data and batch keys, not its SFT-only
// ones (packing, router aux loss, samples, expert/context parallelism, recompute, fsdp), and adds
// dllm.*, seed and data.prompt_tokens / data.continuation_tokens.
enum class Command { kTrain, kRl, kDiffusion };
inline constexpr std::array<Command, 3> kCommands = {Command::kTrain, Command::kRl, Command::kDiffusion};
const char* command_name(Command c);  // "train", "rl" ("train" for kDiffusion)

struct Recipe {
  std::string source;  // file the recipe came from
  Command command = Command::kTrain;

  // model
  std::string model_name;                                     // built-in shape (model.name), or
  std::string model_path;                                     // Hugging Face checkpoint directory (model.path)
  nlohmann::json model_overrides = nlohmann::json::object();  // model.config: config.json keys over the built-in shape
  uint64_t init_seed = 0;
  std::string tokenizer;  // tokenizer file or directory (default: model.path)

  data::DataOptions data;

  // optimizer and schedule
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, grad_clip = 1.0;
  // AdamW's state storage as Transformer Engine FusedAdam names it (NeMo-RL's Gemma 4 recipes set
  // both moments to bfloat16 and store_param_remainders): "float32" or "bfloat16" moments, and bf16
  // parameters' f32 masters kept as the parameters' bits plus 16-bit remainders (train/adamw.h).
  std::string exp_avg_dtype = "float32", exp_avg_sq_dtype = "float32";
  bool store_param_remainders = false;
  std::string schedule = "cosine";  // cosine | linear | constant
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;

  // training
  int64_t steps = 100, batch_size = 8, grad_accumulation = 1;
  bool recompute = false;
  std::vector<std::string> freeze;  // parameter-name patterns (* wildcards) or kind names kept fixed
  // LoRA adapters (lora.*; rank 0 = off): only they train, the base weights stay frozen.
  model::LoraConfig lora;
  // lora.save_base: LoRA checkpoints also hold the frozen base. Off (the default), a run on
  // model.path writes only the adapter and resumes onto model.path's weights; a built-in shape's
  // random base (model.name) exists nowhere else and is always saved.
  bool lora_save_base = false;
  double router_aux_loss = 0.0;
  // A step whose loss or gradient norm is not finite never updates the weights; by default the
  // run stops there with an error, with this it skips the step and counts it ("skipped_steps").
  bool skip_nonfinite_steps = false;
  // Where the steps run (train.device): the CPU in f32, or one CUDA GPU in bf16 with fp32 masters,
  // gradients and AdamW moments (bf16 only: the GPU attention kernels take bf16). Checkpoints
  // hold f32 weights either way.
  Device device = Device::CPU;

  // parallelism: data-parallel replicas (0 = as many as launched ranks). Each replica trains on
  // its own micro-batches; gradients are summed so the step equals one rank's step on them all.
  int64_t data_parallel = 0;
  // Expert parallelism: the routed experts are split over groups of this many ranks (1 = off);
  // data-parallel replicas = launched ranks / expert_parallel.
  int64_t expert_parallel = 1;
  // Context parallelism: each sequence is split into this many contiguous slices, one per rank of a
  // cp group, and attention runs as a ring over the group (1 = off). Rows are padded to a multiple
  // of it. Data-parallel replicas = launched ranks / (expert_parallel * context_parallel).
  int64_t context_parallel = 1;
  // Sharded data parallelism (ZeRO-3 / FSDP): each data-parallel rank keeps only its 1/dp slice
  // of the replicated parameters' master weights, gradients and AdamW moments (parallel/fsdp.h).
  // Its expert- and context-parallel peers (the same dp coordinate) hold the same slice.
  bool fsdp = false;

  // checkpoints and logs
  std::string output_dir = "runs/default";
  int64_t checkpoint_every = 0;  // 0 = only at the end
  int64_t keep_checkpoints = 2;
  int64_t log_every = 1, validation_every = 50, validation_batches = 8;
  int64_t samples = 3, sample_tokens = 48;
  std::string sample_prompt = "";

  RlSettings rl;
  DllmSettings dllm;

  nlohmann::json resolved;  // the whole recipe after defaults and overrides (saved with checkpoints)
};

// What a key holds. Float keys take integers too; string lists take a single string.
enum class KeyType { Int, UInt, Float, Bool, String, StringList, FloatPair, Mapping };

// An interval a number (each number, for FloatPair) must lie in.
struct Range {
  double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  bool contains(double v) const;
  std::string text() const;  // "> 0", ">= 1", "in [0, 1)"; empty when unbounded
};

struct RecipeKey {
  std::string path;  // "optimizer.lr": YAML nesting, or the left side of an override
  KeyType type;
  std::string doc;
  Range range;
  std::vector<std::string> choices;  // String keys: the allowed values (empty: any)
  // Fill the Recipe field from a value already checked against type, range and choices; read it back.
  std::function<void(Recipe&, const nlohmann::json&)> set;
  std::function<nlohmann::json(const Recipe&)> get;

  nlohmann::json default_value() const { return get(Recipe{}); }
  std::string type_text() const;  // "int > 0", "cosine|linear|constant", ...
};

// Every key a recipe for `command` may set, in listing order.
const std::vector<RecipeKey>& recipe_schema(Command command = Command::kTrain);
// One line per key: path, type, default, doc (what `g4 train --list-keys` / `g4 rl --list-keys` print).
std::string recipe_key_listing(Command command = Command::kTrain);

// Reads a recipe file and applies overrides ("train.steps=20", "optimizer.lr=3e-4", ...).
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {},
                   Command command = Command::kTrain);
// The same from the recipe's text (`source` names it in errors). YAML is converted with limits
// (size, nesting, and the node count aliases expand to), so a hostile recipe is a clear error.
Recipe recipe_from_yaml(std::string_view text, const std::string& source,
                        const std::vector<std::string>& overrides = {}, Command command = Command::kTrain);
Recipe recipe_from_json(const nlohmann::json& j, const std::string& source, Command command = Command::kTrain);

// Shell-style wildcard match (`*` any run, `?` one character) for freeze patterns.
bool wildcard_match(const std::string& pattern, const std::string& text);

}  // namespace g4::train

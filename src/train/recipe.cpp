#include "train/recipe.h"

#include <cmath>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include "core/device_memory.h"
#include "core/error.h"
#include "core/log.h"
#include "io/json_input.h"
#include "io/utf8.h"

namespace g4::train {

namespace {

using json = nlohmann::json;

template <class T>
[[maybe_unused]] constexpr bool kAlwaysFalse = false;  // clang: used only in a discarded branch

// The key type of a Recipe field's C++ type; a field of another type needs a custom schema entry.
template <class T>
constexpr KeyType key_type() {
  if constexpr (std::is_same_v<T, int64_t>) {
    return KeyType::Int;
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    return KeyType::UInt;
  } else if constexpr (std::is_same_v<T, double>) {
    return KeyType::Float;
  } else if constexpr (std::is_same_v<T, bool>) {
    return KeyType::Bool;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return KeyType::String;
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    return KeyType::StringList;
  } else if constexpr (std::is_same_v<T, json>) {
    return KeyType::Mapping;
  } else {
    static_assert(kAlwaysFalse<T>, "no recipe key type for this field type");
  }
}

// A key stored as-is in the Recipe field `slot` returns (a generic lambda, so it serves const and
// non-const recipes alike); the field's type gives the key's type.
template <class Slot>
RecipeKey field(const char* path, Slot slot, const char* doc, Range range = {}, std::vector<std::string> choices = {}) {
  using T = std::remove_cvref_t<decltype(slot(std::declval<Recipe&>()))>;
  return {path,
          key_type<T>(),
          doc,
          range,
          std::move(choices),
          [slot](Recipe& r, const json& v) {
            if constexpr (std::is_same_v<T, std::vector<std::string>>) {
              slot(r) = v.is_string() ? T{v.get<std::string>()} : v.get<T>();
            } else {
              slot(r) = v.get<T>();
            }
          },
          [slot](const Recipe& r) { return json(slot(r)); }};
}

// clang-format off
#define G4_SLOT(member) [](auto& r) -> auto& { return r.member; }

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Range kPositive{0, kInf, true, false};
constexpr Range kNonNegative{0, kInf, false, false};
constexpr Range kAtLeastOne{1, kInf, false, false};
constexpr Range kUnit{0, 1, false, true};  // [0, 1)
constexpr Range kFraction{0, 1, false, false};  // [0, 1]

// Which commands read a key: a set of Command bits.
constexpr unsigned bit(Command c) { return 1u << static_cast<unsigned>(c); }
constexpr unsigned kSft = bit(Command::kTrain), kRl = bit(Command::kRl), kDllm = bit(Command::kDiffusion);
struct ScopedKey {
  // NOLINTNEXTLINE: a plain key is for every command
  ScopedKey(RecipeKey k, unsigned s = kSft | kRl | kDllm) : scope(s), key(std::move(k)) {}
  unsigned scope;
  RecipeKey key;
};
// g4 train's keys: SFT's and block diffusion's (the data and batch keys), or SFT's alone.
ScopedKey train_only(RecipeKey k) { return {std::move(k), kSft | kDllm}; }
ScopedKey sft_only(RecipeKey k) { return {std::move(k), kSft}; }
ScopedKey rl_only(RecipeKey k) { return {std::move(k), kRl}; }
ScopedKey dllm_only(RecipeKey k) { return {std::move(k), kDllm}; }

// The schema. A new key is one line here (and its field, with its default, in Recipe). Rules that
// join several keys are in check_combinations below.
std::vector<ScopedKey> make_schema() {
  std::vector<ScopedKey> s = {
      field("model.name", G4_SLOT(model_name),
            "built-in shape (tiny-dense, tiny-moe, gemma-4-26b-a4b, gemma-4-e4b, gemma-4-31b); set this or model.path"),
      field("model.path", G4_SLOT(model_path),
            "Hugging Face checkpoint directory (config.json + safetensors); set this or model.name"),
      field("model.config", G4_SLOT(model_overrides), "config.json keys over the built-in shape (model.name only)"),
      field("model.init_seed", G4_SLOT(init_seed), "seed of a built-in model's random initialisation"),
      field("tokenizer", G4_SLOT(tokenizer), "tokenizer file or directory (empty: model.path)"),
      train_only(field("data.train", G4_SLOT(data.files), "training files (.txt, .jsonl): one path or a list")),
      train_only(field("data.format", G4_SLOT(data.format), "file format; auto: by extension and the first JSON line's keys", {},
            {"auto", "text", "jsonl", "chat"})),
      train_only(field("data.text_split", G4_SLOT(data.text_split),
            "plain text: one document per paragraph (blank lines), line or file", {}, {"paragraph", "line", "file"})),
      train_only(field("data.seq_len", G4_SLOT(data.seq_len), "tokens per packed row", kPositive)),
      train_only(field("data.add_bos", G4_SLOT(data.add_bos), "plain text: BOS before each document (chat has its template's)")),
      sft_only(field("data.add_eos", G4_SLOT(data.add_eos), "plain text: EOS after each document")),
      sft_only(field("data.overlong", G4_SLOT(data.overlong), "documents longer than data.seq_len: split, truncate or refuse",
            {}, {"split", "truncate", "error"})),
      train_only(field("data.validation_fraction", G4_SLOT(data.validation_fraction),
            "share of whole documents held out for validation", kUnit)),
      train_only(field("data.seed", G4_SLOT(data.seed), "seed of the validation split and of each epoch's row order")),
      sft_only(field("data.max_soft_tokens", G4_SLOT(data.max_soft_tokens),
            "image soft tokens: 70, 140, 280, 560 or 1120 (0: the model's processor_config.json)", kNonNegative)),
      sft_only(field("data.media_cache_mb", G4_SLOT(data.media_cache_mb),
            "MiB of processed images and audio kept between batches (0: processed at every use)", kNonNegative)),
      train_only(field("optimizer.lr", G4_SLOT(lr), "peak learning rate (AdamW)", kPositive)),
      // g4 rl accepts 0: rollouts, rewards and metrics of the unchanged policy, the baseline a run is judged by.
      rl_only(field("optimizer.lr", G4_SLOT(lr), "peak learning rate (AdamW; 0: a control run, the weights never change)",
            kNonNegative)),
      RecipeKey{"optimizer.betas", KeyType::FloatPair, "AdamW beta1 and beta2", kUnit, {},
       [](Recipe& r, const json& v) {
         r.beta1 = v[0].get<double>();
         r.beta2 = v[1].get<double>();
       },
       [](const Recipe& r) { return json::array({r.beta1, r.beta2}); }},
      field("optimizer.eps", G4_SLOT(eps), "AdamW epsilon", kPositive),
      field("optimizer.weight_decay", G4_SLOT(weight_decay),
            "decoupled weight decay of matrices and experts (never norms, scales or embeddings)", kNonNegative),
      field("optimizer.grad_clip", G4_SLOT(grad_clip), "maximum global gradient L2 norm (0 = no clipping)", kNonNegative),
      field("optimizer.exp_avg_dtype", G4_SLOT(exp_avg_dtype),
            "AdamW's first moment in memory: float32, or bfloat16 as NeMo-RL's Gemma 4 recipes (updated in fp32, stored rounded)", {},
            {"float32", "bfloat16"}),
      field("optimizer.exp_avg_sq_dtype", G4_SLOT(exp_avg_sq_dtype),
            "AdamW's second moment in memory: float32, or bfloat16 as NeMo-RL's Gemma 4 recipes (updated in fp32, stored rounded)", {},
            {"float32", "bfloat16"}),
      field("optimizer.store_param_remainders", G4_SLOT(store_param_remainders),
            "keep a bf16 parameter's fp32 master as the parameter plus a 16-bit remainder (bf16 weights: "
            "train.device=cuda)"),
      field("schedule.kind", G4_SLOT(schedule), "learning-rate decay after the warmup", {},
            {"cosine", "linear", "constant"}),
      field("schedule.warmup_steps", G4_SLOT(warmup_steps), "steps of linear warmup from 0 to optimizer.lr", kNonNegative),
      field("schedule.min_lr_ratio", G4_SLOT(min_lr_ratio), "where the decay ends, as a fraction of optimizer.lr", kFraction),
      field("train.steps", G4_SLOT(steps), "training steps (g4 rl: GRPO steps)", kPositive),
      train_only(field("train.batch_size", G4_SLOT(batch_size), "rows per micro-batch (per data-parallel replica)", kPositive)),
      train_only(field("train.grad_accumulation", G4_SLOT(grad_accumulation), "micro-batches per optimizer step", kPositive)),
      {field("train.recompute", G4_SLOT(recompute),
            "recompute each layer in the backward pass: less memory, same gradients"), kSft | kRl},
      field("train.freeze", G4_SLOT(freeze), "parameter-name patterns (* and ? wildcards) kept fixed"),
      sft_only(field("train.router_aux_loss", G4_SLOT(router_aux_loss), "weight of the router load-balancing loss (0 = off)",
            kNonNegative)),
      // Block diffusion trains without LoRA for now (its checkpoints' adapter names are unchecked).
      {field("lora.rank", G4_SLOT(lora.rank), "LoRA rank r (0 = off: every weight trains); with it only the adapters train",
            kNonNegative), kSft | kRl},
      {field("lora.alpha", G4_SLOT(lora.alpha), "LoRA alpha: the adapter's output is scaled by alpha / rank",
            kPositive), kSft | kRl},
      {field("lora.dropout", G4_SLOT(lora.dropout), "dropout on the adapters' input (training forwards only)",
            kUnit), kSft | kRl},
      {field("lora.targets", G4_SLOT(lora.targets),
            "module-name suffixes of the projections adapted (empty: q/k/v/o_proj, gate/up/down_proj; "
            "experts.gate_up_proj, experts.down_proj: the routed experts)"), kSft | kRl},
      {field("lora.target_regex", G4_SLOT(lora.target_regex),
            "a regex the whole Hugging Face module name must match, instead of lora.targets"), kSft | kRl},
      {field("lora.seed", G4_SLOT(lora.seed), "seed of the adapters' initialisation and dropout masks"), kSft | kRl},
      {field("lora.save_base", G4_SLOT(lora_save_base),
            "checkpoints also hold the frozen base (default: only the adapter; model.path is the base)"), kSft | kRl},
      field("train.skip_nonfinite_steps", G4_SLOT(skip_nonfinite_steps),
            "skip (and count) a step whose loss or gradient norm is NaN/inf instead of stopping"),
      RecipeKey{"train.device", KeyType::String, "cpu (f32) or cuda (a GPU per rank: bf16 compute, fp32 masters and moments)", {},
       {"cpu", "cuda"}, [](Recipe& r, const json& v) { r.device = v == "cuda" ? Device::CUDA : Device::CPU; },
       [](const Recipe& r) { return json(r.device == Device::CUDA ? "cuda" : "cpu"); }},
      field("parallel.data_parallel", G4_SLOT(data_parallel),
            "data-parallel replicas (0 = launched ranks / (expert_parallel * context_parallel))", kNonNegative),
      sft_only(field("parallel.expert_parallel", G4_SLOT(expert_parallel), "ranks per expert-parallel group (1 = off)",
            kAtLeastOne)),
      sft_only(field("parallel.context_parallel", G4_SLOT(context_parallel),
            "ranks per context-parallel group, each taking a slice of every row (1 = off)", kAtLeastOne)),
      field("parallel.fsdp", G4_SLOT(fsdp),
            "shard master weights, gradients and AdamW moments over the data-parallel ranks (ZeRO-3)"),
      field("checkpoint.dir", G4_SLOT(output_dir), "run directory: checkpoints, metrics.jsonl, loss plot"),
      field("checkpoint.every", G4_SLOT(checkpoint_every), "steps between checkpoints (0 = only at the end)", kNonNegative),
      field("checkpoint.keep", G4_SLOT(keep_checkpoints), "newest checkpoints kept on disk (0 = every one)", kNonNegative),
      field("log.every", G4_SLOT(log_every), "steps between metric lines", kPositive),
      field("log.validation_every", G4_SLOT(validation_every), "steps between validations (0 = never)", kNonNegative),
      train_only(field("log.validation_batches", G4_SLOT(validation_batches), "batches per validation loss", kNonNegative)),
      sft_only(field("log.samples", G4_SLOT(samples), "sampled continuations printed after training", kNonNegative)),
      sft_only(field("log.sample_tokens", G4_SLOT(sample_tokens), "tokens per sampled continuation", kNonNegative)),
      sft_only(field("log.sample_prompt", G4_SLOT(sample_prompt), "prompt of the samples (after BOS)")),
      // g4 rl: NeMo-RL's GRPO/DAPO keys (docs/rl.md).
      rl_only(field("grpo.num_prompts_per_step", G4_SLOT(rl.prompts_per_step), "prompts drawn per step", kPositive)),
      rl_only(field("grpo.num_generations_per_prompt", G4_SLOT(rl.generations_per_prompt),
            "samples of each prompt (one GRPO group; 2 or more)", kPositive)),
      rl_only(field("grpo.normalize_rewards", G4_SLOT(rl.normalize_rewards),
            "divide advantages by the group's reward std (+1e-6) where it is not 0")),
      rl_only(field("grpo.use_leave_one_out_baseline", G4_SLOT(rl.leave_one_out_baseline),
            "baseline and std of each sample from the group's other samples")),
      rl_only(field("grpo.use_dynamic_sampling", G4_SLOT(rl.dynamic_sampling),
            "DAPO: train only on groups whose rewards differ, generating more rounds until the step is full")),
      rl_only(field("grpo.batch_multiplier", G4_SLOT(rl.batch_multiplier),
            "dynamic sampling: prompts generated per round, as a multiple of num_prompts_per_step", kAtLeastOne)),
      rl_only(field("grpo.dynamic_sampling_max_gen_batches", G4_SLOT(rl.dynamic_sampling_max_rounds),
            "dynamic sampling: generation rounds per step before it is an error", kPositive)),
      rl_only(field("grpo.reward_scaling.enabled", G4_SLOT(rl.reward_scaling),
            "map rewards clamped to [source_min, source_max] linearly onto [target_min, target_max]")),
      rl_only(field("grpo.reward_scaling.source_min", G4_SLOT(rl.scaling_source_min), "reward scaling: source low end")),
      rl_only(field("grpo.reward_scaling.source_max", G4_SLOT(rl.scaling_source_max), "reward scaling: source high end")),
      rl_only(field("grpo.reward_scaling.target_min", G4_SLOT(rl.scaling_target_min), "reward scaling: target low end")),
      rl_only(field("grpo.reward_scaling.target_max", G4_SLOT(rl.scaling_target_max), "reward scaling: target high end")),
      rl_only(field("grpo.reward_shaping.enabled", G4_SLOT(rl.overlong_shaping),
            "DAPO overlong penalty: responses longer than max_response_length - overlong_buffer_length lose reward")),
      rl_only(field("grpo.reward_shaping.overlong_buffer_length", G4_SLOT(rl.overlong_buffer_length),
            "overlong penalty: tokens over which it grows to its full size", kNonNegative)),
      rl_only(field("grpo.reward_shaping.overlong_buffer_penalty", G4_SLOT(rl.overlong_penalty),
            "overlong penalty: its full size", kNonNegative)),
      rl_only(field("grpo.reward_shaping.max_response_length", G4_SLOT(rl.max_response_length),
            "overlong penalty: response length of the full penalty (0: generation.max_new_tokens)", kNonNegative)),
      rl_only(field("grpo.seed", G4_SLOT(rl.seed), "seed of the prompt order and of every sampling draw")),
      rl_only(field("grpo.val_samples_per_prompt", G4_SLOT(rl.val_samples_per_prompt),
            "samples per validation prompt (validation accuracy is avg@k)", kPositive)),
      rl_only(field("grpo.max_val_prompts", G4_SLOT(rl.max_val_prompts),
            "validation prompts used (0: all)", kNonNegative)),
      rl_only(field("loss_fn.ratio_clip_min", G4_SLOT(rl.ratio_clip_min), "PPO clip: r >= 1 - ratio_clip_min", kNonNegative)),
      rl_only(field("loss_fn.ratio_clip_max", G4_SLOT(rl.ratio_clip_max), "PPO clip: r <= 1 + ratio_clip_max", kNonNegative)),
      rl_only(field("loss_fn.ratio_clip_c", G4_SLOT(rl.ratio_clip_c),
            "dual clip: the loss of a negative-advantage token is at most c |A| (0: off; else > 1)", kNonNegative)),
      rl_only(field("loss_fn.reference_policy_kl_penalty", G4_SLOT(rl.kl_penalty),
            "KL penalty weight against the initial model (0: no reference model is kept)", kNonNegative)),
      rl_only(field("loss_fn.reference_policy_kl_type", G4_SLOT(rl.kl_type), "KL estimator", {}, {"k1", "k2", "k3"})),
      rl_only(field("loss_fn.kl_input_clamp_value", G4_SLOT(rl.kl_input_clamp),
            "KL: log-ratio clamped to +-this", kPositive)),
      rl_only(field("loss_fn.kl_output_clamp_value", G4_SLOT(rl.kl_output_clamp),
            "KL: each token's estimate clamped to +-this", kPositive)),
      rl_only(field("loss_fn.use_on_policy_kl_approximation", G4_SLOT(rl.on_policy_kl_approximation),
            "weight the KL by exp(lp_curr - lp_gen) (no gradient through the weight)")),
      rl_only(field("loss_fn.use_importance_sampling_correction", G4_SLOT(rl.importance_sampling_correction),
            "weight each token by exp(lp_prev - lp_gen): training over generation probability")),
      rl_only(field("loss_fn.truncated_importance_sampling_type", G4_SLOT(rl.truncation),
            "truncation of the importance weight", {}, {"none", "tis", "icepop", "seq-mask-tis"})),
      rl_only(field("loss_fn.truncated_importance_sampling_ratio", G4_SLOT(rl.truncation_ratio),
            "truncation: upper bound R", kPositive)),
      rl_only(field("loss_fn.truncated_importance_sampling_ratio_min", G4_SLOT(rl.truncation_ratio_min),
            "truncation: lower bound (icepop, seq-mask-tis)", kNonNegative)),
      rl_only(field("loss_fn.token_level_loss", G4_SLOT(rl.token_level_loss),
            "mean over every token of the step (false: per sequence, then over sequences)")),
      rl_only(field("generation.max_new_tokens", G4_SLOT(rl.max_new_tokens), "tokens generated per response at most",
            kPositive)),
      rl_only(field("generation.max_total_sequence_length", G4_SLOT(rl.max_total_sequence_length),
            "prompt + response tokens at most (0: the model's context)", kNonNegative)),
      rl_only(field("generation.temperature", G4_SLOT(rl.temperature),
            "sampling temperature (the training log-probs use it too)", kPositive)),
      rl_only(field("generation.top_p", G4_SLOT(rl.top_p), "nucleus sampling mass (1: off)", Range{0, 1, true, false})),
      rl_only(field("generation.top_k", G4_SLOT(rl.top_k), "sample among the k most likely tokens (0: off)",
            kNonNegative)),
      rl_only(field("generation.stop_strings", G4_SLOT(rl.stop_strings),
            "texts that end a response (their tokens are kept and trained on)")),
      rl_only(field("generation.memory_fraction", G4_SLOT(rl.memory_fraction),
            "GPU: the most of the free memory the KV pages take during rollouts (split by ranks sharing a GPU); the pool holds no more than the round's samples can use", Range{0, 1, true, false})),
      rl_only(field("generation.page_size", G4_SLOT(rl.page_size), "tokens per KV page", kPositive)),
      rl_only(field("generation.max_running", G4_SLOT(rl.max_running), "sequences decoded together at most", kPositive)),
      rl_only(field("prompts.train", G4_SLOT(rl.prompts_train),
            "JSONL prompt set (DAPO-Math or {prompt, answer} lines); or set prompts.task")),
      rl_only(field("prompts.validation", G4_SLOT(rl.prompts_validation),
            "JSONL validation prompts (with prompts.task: empty = held-out problems of the task)")),
      rl_only(field("prompts.task", G4_SLOT(rl.task),
            "built-in task of generated problems (arithmetic, countdown; see g4 task)")),
      rl_only(field("prompts.task_difficulty", G4_SLOT(rl.task_difficulty), "built-in task: difficulty", kNonNegative)),
      rl_only(field("prompts.task_validation_prompts", G4_SLOT(rl.task_validation_prompts),
            "built-in task: held-out problems for validation", kNonNegative)),
      rl_only(field("prompts.system_prompt", G4_SLOT(rl.system_prompt), "system turn before each prompt (empty: none)")),
      rl_only(field("prompts.max_input_seq_length", G4_SLOT(rl.max_input_seq_length),
            "prompts with more tokens are skipped (and counted), training and validation", kPositive)),
      rl_only(field("reward.kind", G4_SLOT(rl.reward), "how a response is scored", {},
            {"dapo_math", "exact", "regex", "countdown", "command"})),
      rl_only(field("reward.pattern", G4_SLOT(rl.reward_pattern),
            "regex reward: pattern ({answer} is the escaped ground truth)")),
      rl_only(field("reward.command", G4_SLOT(rl.reward_command),
            "command reward: shell command reading JSONL rollouts on stdin, writing one reward per line")),
      rl_only(field("reward.timeout_s", G4_SLOT(rl.reward_timeout_s), "command reward: seconds before it is killed",
            kPositive)),
      rl_only(field("train.global_batch_size", G4_SLOT(rl.global_batch_size),
            "samples per optimizer step (0: all of a GRPO step's, one update per step)", kNonNegative)),
      rl_only(field("train.micro_batch_tokens", G4_SLOT(rl.micro_batch_tokens),
            "tokens per packed row of the training forward (rollouts packed up to it)", kPositive)),
  };
  // Block diffusion (a recipe with a dllm section): NeMo Automodel's names (docs/diffusion.md).
  for (RecipeKey& k : std::vector<RecipeKey>{
           field("dllm.mode", G4_SLOT(dllm.mode), "the diffusion objective (Automodel's dllm.mode)", {},
                 {"block_diffusion"}),
           field("dllm.block_size", G4_SLOT(dllm.block_size),
                 "tokens per denoised block (0: the model's canvas_length)", kNonNegative),
           field("dllm.eps", G4_SLOT(dllm.eps), "lowest corruption level t (t = eps + (1 - eps) u)", kUnit),
           field("dllm.self_conditioning_p", G4_SLOT(dllm.self_conditioning_p),
                 "chance that an example's second pass is self-conditioned on the first", kFraction),
           field("dllm.encoder_loss_weight", G4_SLOT(dllm.encoder_loss_weight),
                 "weight of the encoder's next-token (AR) loss", kNonNegative),
           field("dllm.supervise_padding", G4_SLOT(dllm.supervise_padding),
                 "the pad tail of each row counts as supervised"),
           field("dllm.pad_block_size", G4_SLOT(dllm.pad_block_size),
                 "responses are filled with EOS to whole blocks of this (0: dllm.block_size)", kNonNegative),
           field("dllm.pad_seq_len_divisible", G4_SLOT(dllm.pad_seq_len_divisible),
                 "rows are padded to a multiple of lcm(this, dllm.pad_block_size) (0 or 1: not)",
                 kNonNegative),
           field("seed", G4_SLOT(dllm.seed), "base seed of the corruption, block-selection and coin draws"),
           field("data.prompt_tokens", G4_SLOT(dllm.prompt_tokens),
                 "plain text: prompt tokens of each (prompt, continuation) example", kPositive),
           field("data.continuation_tokens", G4_SLOT(dllm.continuation_tokens),
                 "plain text: continuation tokens of each example (0: dllm.block_size)", kNonNegative),
       })
    s.push_back(dllm_only(std::move(k)));
  return s;
}
// clang-format on

#undef G4_SLOT

const RecipeKey* find_key(const std::string& path, Command c) {
  for (const RecipeKey& k : recipe_schema(c))
    if (k.path == path) return &k;
  return nullptr;
}

bool is_section(const std::string& path, Command c) {
  for (const RecipeKey& k : recipe_schema(c))
    if (k.path.starts_with(path + ".")) return true;
  return false;
}

// What a recipe for `c` is, in messages.
std::string recipe_kind(Command c) {
  return c == Command::kDiffusion ? "a block-diffusion recipe (dllm.mode: block_diffusion)"
                                  : std::string("g4 ") + command_name(c);
}

// Indexed by KeyType, in its order.
constexpr const char* kTypeNames[] = {"int",        "uint",   "float", "bool", "string", "list of strings",
                                      "two floats", "mapping"};
static_assert(std::size(kTypeNames) == static_cast<size_t>(KeyType::Mapping) + 1);

std::string type_name(KeyType t) {
  return kTypeNames[static_cast<size_t>(t)];
}

bool has_type(KeyType t, const json& v) {
  const auto number = [](const json& x) { return x.is_number(); };
  switch (t) {
    case KeyType::Int:
      return v.is_number_integer();
    case KeyType::UInt:
      return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
    case KeyType::Float:
      return number(v);
    case KeyType::Bool:
      return v.is_boolean();
    case KeyType::String:
      return v.is_string();
    case KeyType::StringList:
      return v.is_string() ||
             (v.is_array() && std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_string(); }));
    case KeyType::FloatPair:
      return v.is_array() && v.size() == 2 && number(v[0]) && number(v[1]);
    case KeyType::Mapping:
      return v.is_object();
  }
  return false;
}

std::string join_choices(const std::vector<std::string>& c, const char* sep, const char* last) {
  std::string s;
  for (size_t i = 0; i < c.size(); ++i) s += (i == 0 ? "" : i + 1 == c.size() ? last : sep) + c[i];
  return s;
}

// A value for a message, cut short: a mistyped key may hold a whole document.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Checks one user value against its key; errors name the file and the key path.
void check_value(const RecipeKey& k, const json& v, const std::string& source) {
  G4_CHECK(has_type(k.type, v), source, ": recipe key '", k.path, "' has the wrong type (value ", shown(v),
           "; expected ", type_name(k.type), ")");
  if (!k.choices.empty()) {
    const auto s = v.get<std::string>();
    G4_CHECK(std::find(k.choices.begin(), k.choices.end(), s) != k.choices.end(), source, ": recipe key '", k.path,
             "' must be ", join_choices(k.choices, ", ", " or "), ", got '", s, "'");
  }
  if (k.type == KeyType::Int || k.type == KeyType::UInt || k.type == KeyType::Float || k.type == KeyType::FloatPair) {
    for (const json& x : v.is_array() ? v : json::array({v}))
      G4_CHECK(k.range.contains(x.get<double>()), source, ": recipe key '", k.path, "' must be ", k.range.text(),
               ", got ", std::isfinite(x.get<double>()) ? x.dump() : number_text(x.get<double>()), " (", k.doc,
               ")");  // JSON writes NaN and infinities as null
  }
}

// Walks the user's tree: every leaf must be a schema key, every inner node a section of them.
void collect(const json& node, const std::string& path, const std::string& source, Command c,
             std::map<std::string, const json*>& values) {
  G4_CHECK(node.is_object(), source, ": '", path.empty() ? "(top level)" : path, "' must be a mapping");
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = path.empty() ? it.key() : path + "." + it.key();
    if (const RecipeKey* k = find_key(key, c)) {
      check_value(*k, it.value(), source);
      values[key] = &it.value();
    } else if (is_section(key, c)) {
      collect(it.value(), key, source, c, values);
    } else {
      std::optional<Command> theirs;
      for (Command o : kCommands)
        if (!theirs && o != c && (find_key(key, o) || is_section(key, o))) theirs = o;
      if (theirs) {
        // A whole section of the other command is named by its first key, the one the user wrote.
        std::string named = key;
        for (const json* v = &it.value(); is_section(named, *theirs) && v->is_object() && !v->empty();
             v = &v->begin().value())
          named += "." + v->begin().key();
        G4_FAIL(source, ": recipe key '", named, "' is for ", recipe_kind(*theirs), ", not ", recipe_kind(c), " (g4 ",
                command_name(c), " --list-keys lists its keys)");
      }
      G4_FAIL(source, ": unknown recipe key '", key, "' (g4 ", command_name(c), " --list-keys lists them)");
    }
  }
}

void set_path(json& root, const std::string& path, json value) {
  json* node = &root;
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1)
    node = &(*node)[path.substr(start, dot - start)];
  (*node)[path.substr(start)] = std::move(value);
}

// Limits on a recipe and on what its YAML expands to. yaml-cpp keeps an alias (*a) as a second
// reference to the anchored node, so a few lines of nested aliases ("billion laughs") stand for
// billions of nodes once converted: the conversion counts every node it makes and stops at the
// limit. Real recipes are a few hundred bytes of < 100 values, nesting 3 deep.
constexpr size_t kMaxRecipeBytes = 1 << 20;
constexpr int64_t kMaxRecipeNodes = 100000;

// The line/column yaml-cpp reports, as "line L, column C: " (1-based), or "" when it has none.
std::string yaml_place(const YAML::Mark& m) {
  if (m.is_null()) return "";
  return "line " + std::to_string(m.line + 1) + ", column " + std::to_string(m.column + 1) + ": ";
}

// YAML node -> JSON, keeping scalars typed (int, float, bool, string) as YAML reads them. `what`
// names the recipe (or the override) in errors.
class YamlToJson {
 public:
  explicit YamlToJson(std::string what) : what_(std::move(what)) {}

  json operator()(const YAML::Node& n) { return convert(n, 0); }

 private:
  json convert(const YAML::Node& n, int depth) {
    G4_CHECK(++nodes_ <= kMaxRecipeNodes, what_, " expands to more than ", kMaxRecipeNodes,
             " YAML values (aliases of aliases?); a recipe holds a few dozen");
    G4_CHECK(depth <= io::kMaxJsonDepth, what_, " nests YAML mappings/sequences deeper than the limit of ",
             io::kMaxJsonDepth, " levels (", yaml_place(n.Mark()), "the value that goes too deep)");
    switch (n.Type()) {
      case YAML::NodeType::Null:
      case YAML::NodeType::Undefined:
        return nullptr;
      case YAML::NodeType::Sequence: {
        json a = json::array();
        for (const auto& e : n) a.push_back(convert(e, depth + 1));
        return a;
      }
      case YAML::NodeType::Map: {
        json o = json::object();
        for (const auto& kv : n) {
          G4_CHECK(kv.first.IsScalar(), what_, ": ", yaml_place(kv.first.Mark()),
                   "a mapping key must be a plain name, not a list or mapping");
          const std::string& key = utf8(kv.first);
          // YAML keys are unique; yaml-cpp keeps both, and the later one would silently replace the
          // earlier (a second `train:` section would reset every key of the first).
          G4_CHECK(!o.contains(key), what_, ": ", yaml_place(kv.first.Mark()), "the key '", key,
                   "' appears twice in one mapping (merge the two into one)");
          o[key] = convert(kv.second, depth + 1);
        }
        return o;
      }
      case YAML::NodeType::Scalar:
        return scalar(n);
    }
    return nullptr;
  }

  // YAML text is Unicode, and every string of a recipe ends up in JSON (the resolved recipe saved
  // with each checkpoint, model.config in config.json), which cannot hold other bytes.
  const std::string& utf8(const YAML::Node& n) const {
    const std::string& s = n.Scalar();
    const size_t bad = io::utf8_error_offset(s);
    G4_CHECK(bad == s.size(), what_, ": ", yaml_place(n.Mark()), "the value is not valid UTF-8 (byte ", bad + 1,
             " of it)");
    return s;
  }

  json scalar(const YAML::Node& n) const {
    const std::string& s = utf8(n);
    if (n.Tag() == "!") return s;  // quoted
    if (s == "true" || s == "True") return true;
    if (s == "false" || s == "False") return false;
    if (s == "null" || s == "~") return nullptr;
    try {
      size_t used = 0;
      const long long i = std::stoll(s, &used);
      if (used == s.size()) return i;
    } catch (...) {
    }
    try {
      size_t used = 0;
      const double d = std::stod(s, &used);
      // stod also reads "inf" and "nan", which YAML reads as text (its own .inf and .nan are refused
      // as well): no recipe number is meant to be infinite, and eps = inf would train nothing.
      if (used == s.size() && std::isfinite(d)) return d;
    } catch (...) {
    }
    return s;
  }

  std::string what_;
  int64_t nodes_ = 0;
};

// Parses YAML text into JSON; a syntax error names `what` and the place, in our words.
json parse_yaml(std::string_view text, const std::string& what) {
  // YAML::Load reads the first document only; one after it would be dropped unread. A document
  // marker is a line that starts "---" or "..." at column 0 (never inside a scalar), so a second
  // document shows as a marker after content. (yaml-cpp's LoadAll ran for minutes on fuzzed input.)
  bool content = false, ended = false;
  for (size_t at = 0, line_no = 1; at < text.size(); ++line_no) {
    const size_t eol = std::min(text.find('\n', at), text.size());
    const std::string_view line = text.substr(at, eol - at);
    at = eol + 1;
    const bool marker = (line.substr(0, 3) == "---" || line.substr(0, 3) == "...") &&
                        (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
    const size_t from = line.find_first_not_of(" \t\r", marker ? 3 : 0);
    const bool has_content = from != std::string_view::npos && line[from] != '#' && !(!content && line[0] == '%');
    G4_CHECK(!(marker && line[0] == '-' && content) && !(has_content && ended), what,
             " holds more than one YAML document (another starts at line ", line_no, "); a recipe is one");
    if (marker && line[0] == '.') ended = content;
    content = content || has_content;
  }
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::DeepRecursion& e) {  // yaml-cpp's own guard, deeper than ours; it says "bad file"
    G4_FAIL(what, " nests YAML mappings/sequences deeper than the limit of ", io::kMaxJsonDepth, " levels (",
            yaml_place(e.mark), "the value that goes too deep)");
  } catch (const YAML::Exception& e) {
    G4_FAIL(what, " is not valid YAML (", yaml_place(e.mark), e.msg, ")");
  }
  return YamlToJson(what)(root);
}

// train.device: cuda, after the parallel keys.
void check_cuda_device(const Recipe& r, const std::string& source) {
#ifdef G4_WITH_CUDA
  const char* why = "no CUDA GPU is visible on this machine";
#else
  const char* why = "this g4 was built without the CUDA backend (no nvcc at build time)";
#endif
  G4_CHECK(cuda_available(), source, ": recipe key 'train.device' is cuda, but ", why);
}

// g4 rl's rules that join several keys (the loss options are checked again, with the same names,
// by rl::check when the run starts).
void check_rl(Recipe& r, const std::string& source) {
  RlSettings& rl = r.rl;
  G4_CHECK(rl.prompts_train.empty() != rl.task.empty(), source,
           ": set exactly one of 'prompts.train' (a JSONL prompt set) and 'prompts.task' (a built-in task)");
  G4_CHECK(rl.dynamic_sampling || rl.batch_multiplier == 1.0, source, ": 'grpo.batch_multiplier' is ",
           rl.batch_multiplier, " but 'grpo.use_dynamic_sampling' is false (more prompts per round only serve "
           "dynamic sampling)");
  // A group of one sample is its own baseline: every advantage would be 0 and no step would learn.
  G4_CHECK(rl.generations_per_prompt >= 2, source, ": 'grpo.num_generations_per_prompt' is ",
           rl.generations_per_prompt, ", but GRPO compares the samples of a prompt with each other: with one sample "
           "its baseline is its own reward, every advantage is 0 and the policy never changes; use 2 or more");
  const int64_t samples = rl.prompts_per_step * rl.generations_per_prompt;
  G4_CHECK(rl.global_batch_size == 0 || samples % rl.global_batch_size == 0, source, ": 'train.global_batch_size' ",
           rl.global_batch_size, " must divide the samples of a step (grpo.num_prompts_per_step x "
           "grpo.num_generations_per_prompt = ", samples, ")");
  if (rl.max_response_length == 0) rl.max_response_length = rl.max_new_tokens;
  G4_CHECK(!rl.overlong_shaping || rl.overlong_buffer_length > 0, source,
           ": 'grpo.reward_shaping.enabled' needs 'grpo.reward_shaping.overlong_buffer_length' > 0");
  G4_CHECK(!rl.overlong_shaping || rl.overlong_buffer_length <= rl.max_response_length, source,
           ": 'grpo.reward_shaping.overlong_buffer_length' ", rl.overlong_buffer_length,
           " exceeds 'grpo.reward_shaping.max_response_length' ", rl.max_response_length);
  G4_CHECK(!rl.reward_scaling || rl.scaling_source_max > rl.scaling_source_min, source,
           ": 'grpo.reward_scaling.source_max' must exceed 'grpo.reward_scaling.source_min'");
  // NeMo-RL takes any target range; an inverted one rewards wrong answers and an empty one gives every
  // sample the same reward (no advantage anywhere), neither of which a recipe means.
  G4_CHECK(!rl.reward_scaling || rl.scaling_target_max > rl.scaling_target_min, source,
           ": 'grpo.reward_scaling.target_max' (", rl.scaling_target_max, ") must exceed 'grpo.reward_scaling.target_min' (",
           rl.scaling_target_min, "): an inverted range would reward wrong answers, an empty one nothing");
  G4_CHECK(rl.reward != "regex" || !rl.reward_pattern.empty(), source, ": 'reward.kind' regex needs 'reward.pattern'");
  for (const std::string& stop : rl.stop_strings)
    G4_CHECK(!stop.empty(), source, ": 'generation.stop_strings' holds an empty string (it would end every response "
             "before its first token)");
  G4_CHECK(rl.reward != "command" || !rl.reward_command.empty(), source,
           ": 'reward.kind' command needs 'reward.command'");
}

void check_lora(Recipe& r, const std::string& source) {
  model::validate_lora(r.lora, source);
  // With a regex, lora.targets can only add the routed experts' weights: any other entry would go unused.
  if (!r.lora.target_regex.empty()) {
    const std::vector<std::string> experts = r.lora.expert_targets();
    for (const std::string& t : r.lora.targets)
      G4_CHECK(std::find(experts.begin(), experts.end(), t) != experts.end(), source, ": 'lora.targets' entry '", t,
               "' is unused beside 'lora.target_regex', which picks the projections; beside a regex, lora.targets "
               "names only routed-expert weights (experts.gate_up_proj, experts.down_proj)");
  }
  r.lora.base_model = r.model_path.empty() ? r.model_name : r.model_path;
}

// LoRA keys set while lora.rank is 0 (LoRA off, every weight trains): most likely a forgotten rank, which
// would run a full fine-tune and write full checkpoints. A note, not an error: a recipe may keep its
// LoRA settings and switch LoRA off by the rank alone.
void warn_unused_lora_keys(const Recipe& r, const std::string& source) {
  std::string set;
  for (const RecipeKey& k : recipe_schema())
    if (k.path.rfind("lora.", 0) == 0 && k.path != "lora.rank" && k.get(r) != k.default_value())
      set += (set.empty() ? "" : ", ") + k.path;
  if (!set.empty())
    G4_LOG("warning: ", source, " sets ", set, " but lora.rank is 0: LoRA is off and every weight trains");
}

// The rules that join several keys; each key alone has passed its schema line.
void check_combinations(Recipe& r, const std::string& source) {
  G4_CHECK(r.model_name.empty() != r.model_path.empty(), source,
           ": set exactly one of 'model.name' (a built-in shape) and 'model.path' (a Hugging Face checkpoint)");
  if (r.tokenizer.empty()) r.tokenizer = r.model_path;
  G4_CHECK(!r.tokenizer.empty(), source, ": 'tokenizer' is required when training a built-in model");
  if (r.command != Command::kRl) G4_CHECK(!r.data.files.empty(), source, ": 'data.train' names no file");
  // Automodel trains block diffusion with the router frozen (freeze_router).
  if (r.command == Command::kDiffusion) r.freeze.insert(r.freeze.end(), {"router", "router_scale"});
  if (r.command == Command::kRl) check_rl(r, source);
  G4_CHECK(!(r.fsdp && r.data_parallel == 1), source,
           ": 'parallel.fsdp' shards over the data-parallel ranks, but 'parallel.data_parallel' is 1, so there is "
           "nothing to shard over; drop one of the two keys");
  if (r.device == Device::CUDA) check_cuda_device(r, source);
  if (r.lora.rank > 0) check_lora(r, source);
  else warn_unused_lora_keys(r, source);
  if (r.warmup_steps >= r.steps && r.warmup_steps > 0)
    G4_LOG("warning: ", source, ": 'schedule.warmup_steps' (", r.warmup_steps, ") is not below 'train.steps' (",
           r.steps, "): the learning rate never reaches optimizer.lr");
}


}  // namespace

bool Range::contains(double v) const {
  return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
}

std::string Range::text() const {
  const bool low = lo > -kInf, high = hi < kInf;
  if (low && high)
    return "in " + std::string(lo_open ? "(" : "[") + number_text(lo) + ", " + number_text(hi) + (hi_open ? ")" : "]");
  if (low) return (lo_open ? "> " : ">= ") + number_text(lo);
  if (high) return (hi_open ? "< " : "<= ") + number_text(hi);
  return "";
}

std::string RecipeKey::type_text() const {
  if (!choices.empty()) return join_choices(choices, "|", "|");
  const std::string r = range.text();
  return type_name(type) + (r.empty() ? "" : " " + r);
}

const char* command_name(Command c) {
  return c == Command::kRl ? "rl" : "train";
}

const std::vector<RecipeKey>& recipe_schema(Command c) {
  static const auto schemas = [] {
    std::array<std::vector<RecipeKey>, kCommands.size()> by_command;
    for (const ScopedKey& k : make_schema())
      for (Command cmd : kCommands)
        if (k.scope & bit(cmd)) by_command[static_cast<size_t>(cmd)].push_back(k.key);
    return by_command;
  }();
  return schemas[static_cast<size_t>(c)];
}

std::string recipe_key_listing(Command c) {
  size_t wk = 3, wt = 4, wd = 7;
  for (const RecipeKey& k : recipe_schema(c)) {
    wk = std::max(wk, k.path.size());
    wt = std::max(wt, k.type_text().size());
    wd = std::max(wd, k.default_value().dump().size());
  }
  auto row = [&](const std::string& key, const std::string& type, const std::string& def, const std::string& doc) {
    std::string line = key + std::string(wk + 2 - key.size(), ' ') + type + std::string(wt + 2 - type.size(), ' ') +
                       def + std::string(wd + 2 - def.size(), ' ') + doc;
    return line + "\n";
  };
  std::string out =
      "Recipe keys: nested in the YAML file (optimizer: {lr: 3.0e-4}) or overridden on the command line "
      "(optimizer.lr=3e-4).\n\n";
  out += row("key", "type", "default", "meaning");
  for (const RecipeKey& k : recipe_schema(c)) out += row(k.path, k.type_text(), k.default_value().dump(), k.doc);
  return out;
}

bool wildcard_match(const std::string& p, const std::string& t) {
  size_t pi = 0, ti = 0, star = std::string::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

Recipe recipe_from_json(const json& user, const std::string& source, Command c) {
  if (c == Command::kTrain && user.contains("dllm")) c = Command::kDiffusion;
  std::map<std::string, const json*> values;
  collect(user, "", source, c, values);
  Recipe r;
  r.source = source;
  r.command = c;
  for (const RecipeKey& k : recipe_schema(c)) {
    if (const auto it = values.find(k.path); it != values.end()) k.set(r, *it->second);
    set_path(r.resolved, k.path, k.get(r));
  }
  check_combinations(r, source);
  return r;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides, Command c) {
  G4_CHECK(std::filesystem::exists(path), "recipe file ", path, " does not exist");
  return recipe_from_yaml(io::read_regular_file(path, "recipe", kMaxRecipeBytes), path, overrides, c);
}

Recipe recipe_from_yaml(std::string_view text, const std::string& source, const std::vector<std::string>& overrides,
                        Command c) {
  G4_CHECK(text.size() <= kMaxRecipeBytes, "recipe ", source, " is ", text.size(), " bytes, more than the limit of ",
           kMaxRecipeBytes, " (a recipe is a few hundred)");
  json user = parse_yaml(text, "recipe " + source);
  if (user.is_null()) user = json::object();
  G4_CHECK(user.is_object(), source, ": '(top level)' must be a mapping");
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    G4_CHECK(eq != std::string::npos && eq > 0, "override '", o, "' must look like key.path=value");
    const std::string key = o.substr(0, eq);
    json value = parse_yaml(o.substr(eq + 1), "override '" + o + "'");
    json* node = &user;
    size_t start = 0;
    while (true) {
      const size_t dot = key.find('.', start);
      const std::string part = key.substr(start, dot - start);
      if (dot == std::string::npos) {
        (*node)[part] = value;
        break;
      }
      if (!(*node)[part].is_object()) (*node)[part] = json::object();
      node = &(*node)[part];
      start = dot + 1;
    }
  }
  // Paths inside a recipe are relative to the working directory, like every path on the command line.
  return recipe_from_json(user, source, c);
}

}  // namespace g4::train

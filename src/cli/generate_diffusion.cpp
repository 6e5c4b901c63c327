#include "cli/generate_diffusion.h"

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "diffusion/sampler.h"
#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

namespace {

using nlohmann::json;

// The flag of each DiffusionGemmaGenerationConfig field a command line may set.
struct FieldFlag {
  const char* flag;
  const char* key;
  std::string DiffusionGenerateOptions::*value;
};
const FieldFlag kFieldFlags[] = {
    {"--max-denoising-steps", "max_denoising_steps", &DiffusionGenerateOptions::max_denoising_steps},
    {"--t-min", "t_min", &DiffusionGenerateOptions::t_min},
    {"--t-max", "t_max", &DiffusionGenerateOptions::t_max},
    {"--entropy-bound", "entropy_bound", &DiffusionGenerateOptions::entropy_bound},
    {"--stability-threshold", "stability_threshold", &DiffusionGenerateOptions::stability_threshold},
    {"--confidence-threshold", "confidence_threshold", &DiffusionGenerateOptions::confidence_threshold},
    {"--eos-token-id", "eos_token_id", &DiffusionGenerateOptions::eos_token_id},
    {"--pad-token-id", "pad_token_id", &DiffusionGenerateOptions::pad_token_id},
};

// Flags `generate` has for both kinds of model.
const std::set<std::string> kSharedFlags = {"model_dir", "--prompt-ids", "--prompt",    "--tokenizer",
                                            "--max-new-tokens", "--seed", "--prompts", "--out",
                                            "--overwrite", "--device", "--help"};

// Diffusion-only flags that are not generation-config fields.
const std::set<std::string> kDiffusionOnlyFlags = {"--rng", "--decoder-input-ids", "--self-conditioning-logits"};

// One prompt per line: {"prompt_ids": [...]} or {"prompt": "text"} (BOS added, as for --prompt); ids
// in [0, vocab_size), each one outside named with its line and as written (an id past int64 read
// as the -1 it wraps to before).
std::vector<std::vector<int64_t>> read_prompts(const std::string& path, const io::Tokenizer* tok, int64_t vocab_size) {
  const std::string text = io::read_regular_file(path, "prompts file", 1024 * io::kMiB);
  std::vector<std::vector<int64_t>> prompts;
  std::stringstream lines(text);
  std::string line;
  for (int64_t n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + " line " + std::to_string(n);
    const json j = io::parse_json(line, where, io::kMaxJsonLineBytes);
    G4_CHECK(j.is_object() && j.size() == 1 && (j.contains("prompt_ids") || j.contains("prompt")), where,
             ": a line must be {\"prompt_ids\": [ids]} or {\"prompt\": \"text\"}");
    std::vector<int64_t> ids;
    if (j.contains("prompt")) {
      G4_CHECK(j.at("prompt").is_string(), where, ": 'prompt' must be a string");
      G4_CHECK(tok, where, ": 'prompt' needs a tokenizer, and the model directory has none (pass --tokenizer)");
      ids.push_back(tok->bos_id);
      for (int32_t id : tok->encode(j.at("prompt").get<std::string>())) ids.push_back(id);
    } else {
      const json& a = j.at("prompt_ids");
      G4_CHECK(a.is_array() && !a.empty(), where, ": 'prompt_ids' must be a non-empty list of token ids");
      for (const json& x : a) {
        G4_CHECK(x.is_number_integer(), where, ": 'prompt_ids' holds ", x.dump(), ", not a token id");
        const bool in_vocab = x.is_number_unsigned() ? x.get<uint64_t>() < static_cast<uint64_t>(vocab_size)
                                                     : x.get<int64_t>() >= 0 && x.get<int64_t>() < vocab_size;
        G4_CHECK(in_vocab, where, ": prompt token id ", x.dump(), " is outside the vocabulary [0, ", vocab_size, ")");
        ids.push_back(x.get<int64_t>());
      }
    }
    prompts.push_back(std::move(ids));
  }
  G4_CHECK(!prompts.empty(), path, " holds no prompt");
  return prompts;
}

}  // namespace

std::shared_ptr<DiffusionGenerateOptions> add_diffusion_generate_options(CLI::App* generate) {
  auto o = std::make_shared<DiffusionGenerateOptions>();
  const char* group = "diffusion_gemma checkpoints (defaults: the model's generation_config.json; none = None)";
  generate->add_option("--max-denoising-steps", o->max_denoising_steps, "denoising steps per block (N)")->group(group);
  generate->add_option("--t-min", o->t_min, "temperature at the last step")->group(group);
  generate->add_option("--t-max", o->t_max, "temperature at the first step")->group(group);
  generate->add_option("--entropy-bound", o->entropy_bound, "entropy-bound sampler's bound (> 0)")->group(group);
  generate->add_option("--stability-threshold", o->stability_threshold, "adaptive stopping: stable steps")
      ->group(group);
  generate->add_option("--confidence-threshold", o->confidence_threshold, "adaptive stopping: mean entropy below")
      ->group(group);
  generate->add_option("--eos-token-id", o->eos_token_id, "EOS id(s), comma-separated")->group(group);
  generate->add_option("--pad-token-id", o->pad_token_id, "pad id of finished rows")->group(group);
  generate
      ->add_option("--rng", o->rng, "philox (g4's, per-row seeds seed + row) or torch-cpu (transformers' CPU draws)")
      ->check(CLI::IsMember({"philox", "torch-cpu"}))
      ->group(group);
  generate
      ->add_option("--decoder-input-ids", o->decoder_input_ids,
                   "the first block's starting canvas instead of random tokens: C ids for every row, or B*C row by row")
      ->group(group);
  generate
      ->add_option("--self-conditioning-logits", o->self_conditioning_logits,
                   "safetensors file with self_conditioning_logits [B,C,V]: the first step's self-conditioning input")
      ->group(group);
  return o;
}

bool is_diffusion_model(const std::string& model_dir) {
  try {
    const json j =
        io::read_json_file((std::filesystem::path(model_dir) / "config.json").string(), "config", io::kMaxConfigBytes);
    return j.is_object() && j.value("model_type", "") == "diffusion_gemma";
  } catch (const std::exception&) {
    return false;
  }
}

void check_generate_flags(const CLI::App* generate, bool diffusion) {
  for (const CLI::Option* opt : generate->get_options()) {
    if (opt->count() == 0) continue;
    const std::string name = opt->get_name();
    const bool diffusion_only =
        kDiffusionOnlyFlags.count(name) ||
        std::any_of(std::begin(kFieldFlags), std::end(kFieldFlags), [&](const FieldFlag& f) { return name == f.flag; });
    if (diffusion && !diffusion_only && !kSharedFlags.count(name))
      throw CLI::ValidationError(name,
                                 "does not apply to a diffusion_gemma checkpoint (its sampler takes "
                                 "--t-min/--t-max, --entropy-bound, ...)");
    if (!diffusion && diffusion_only) throw CLI::ValidationError(name, "applies only to diffusion_gemma checkpoints");
  }
}

void run_diffusion_generate(const DiffusionGenerateOptions& o) {
  const bool from_file = !o.prompts.empty();
  G4_CHECK(from_file || !o.prompt_ids.empty() || !o.prompt.empty(),
           "generate needs --prompt-ids, --prompt or --prompts");
  json overrides = json::object();
  if (o.max_new_tokens) overrides["max_new_tokens"] = *o.max_new_tokens;
  for (const FieldFlag& f : kFieldFlags) {
    const std::string& text = o.*(f.value);
    if (text.empty()) continue;
    auto [key, value] = diffusion::generation_option(f.key, text, f.flag);
    overrides[key] = std::move(value);
  }
  // Flags are checked before the model is loaded (the prompt length only matters for max_length).
  diffusion::parse_generation_config(overrides, "the command line");
  if (!o.out.empty()) {
    if (!runs_in_this_rank("g4 generate", "--out")) return;
    check_output_file(o.out, "--out", o.overwrite, o.model);
    G4_CHECK(o.overwrite || !std::filesystem::exists(o.out), "--out ", o.out,
             " already exists; pass --overwrite to replace it");
    check_output_not_input(o.out, "--out", o.prompts, "--prompts");
    check_output_not_input(o.out, "--out", o.tokenizer, "--tokenizer");
    check_output_file_creatable(o.out, "--out");
  }
  if (from_file) io::check_regular_file(o.prompts, "prompts file");  // read once the tokenizer is loaded

  std::unique_ptr<model::Gemma4> m = model::load_hf_model(o.model);
  // On the GPU the model computes in bf16 and each step's vocabulary-wide work stays there.
  if (o.device == "cuda") m = m->copy_to(Device::CUDA, DType::BF16);
  const std::unique_ptr<io::Tokenizer> tok = model_tokenizer(o.model, o.tokenizer);
  const io::ModelConfig& mc = m->config();
  std::vector<std::vector<int64_t>> prompts;
  if (from_file) {
    prompts = read_prompts(o.prompts, tok.get(), mc.vocab_size);
  } else if (!o.prompt.empty()) {
    G4_CHECK(tok, "--prompt needs a tokenizer: none in ", o.model, " (pass --tokenizer)");
    prompts.push_back({tok->bos_id});
    for (int32_t id : tok->encode(o.prompt)) prompts[0].push_back(id);
  } else {
    prompts.push_back(parse_token_ids(o.prompt_ids, "--prompt-ids"));
  }
  // (read_prompts checked a file's ids, naming their lines.)
  if (!from_file)
    for (const auto& p : prompts)
      for (int64_t id : p)
        G4_CHECK(id >= 0 && id < mc.vocab_size, "prompt token id ", id, " (--prompt-ids) is outside the vocabulary [0, ",
                 mc.vocab_size, ")");
  // All prompts are one batch, left-padded as transformers' tokenizers pad (mask 0 on the pads).
  const int64_t B = static_cast<int64_t>(prompts.size());
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const int64_t P = static_cast<int64_t>(longest);
  std::vector<int64_t> ids(static_cast<size_t>(B * P), mc.pad_token_id), mask(ids.size(), 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = P - static_cast<int64_t>(prompts[b].size());
    std::copy(prompts[b].begin(), prompts[b].end(), ids.begin() + b * P + pad);
    std::fill(mask.begin() + b * P + pad, mask.begin() + (b + 1) * P, 1);
  }
  const std::string model_where = (std::filesystem::path(o.model) / "generation_config.json").string();
  const diffusion::GenerationConfig cfg =
      diffusion::resolve_generation_config(mc.generation_config, model_where, overrides, "the command line", P);

  // An id past the vocabulary is never sampled: an EOS there would never stop a row, and a pad
  // there would be written into the output as a token the model does not have.
  auto in_vocab = [&](int64_t id, const char* key, const char* flag) {
    G4_CHECK(id >= 0 && id < mc.vocab_size, key, " ", id, " (", flag, " or ", model_where,
             ") is outside the vocabulary [0, ", mc.vocab_size, ")");
  };
  if (cfg.eos_token_id)
    for (int64_t id : *cfg.eos_token_id) in_vocab(id, "eos_token_id", "--eos-token-id");
  if (cfg.pad_token_id) in_vocab(*cfg.pad_token_id, "pad_token_id", "--pad-token-id");

  std::unique_ptr<diffusion::CanvasDraws> draws;
  if (o.rng == "torch-cpu") {
    draws = std::make_unique<diffusion::TorchCpuDraws>(o.seed);
  } else {
    std::vector<uint64_t> seeds;
    for (int64_t b = 0; b < B; ++b) seeds.push_back(o.seed + static_cast<uint64_t>(b));
    draws = std::make_unique<diffusion::PhiloxDraws>(std::move(seeds));
  }
  diffusion::GenerateInputs inputs;
  inputs.attention_mask = Tensor::from_vector(mask, {B, P});
  const int64_t C = mc.canvas_length;
  if (!o.decoder_input_ids.empty()) {
    std::vector<int64_t> canvas = parse_token_ids(o.decoder_input_ids, "--decoder-input-ids");
    const int64_t n = static_cast<int64_t>(canvas.size());
    G4_CHECK(n == C || n == B * C, "--decoder-input-ids holds ", n, " ids: give C = ", C,
             " (every row) or B * C = ", B * C, " (row by row)");
    for (int64_t id : canvas)
      G4_CHECK(id >= 0 && id < mc.vocab_size, "--decoder-input-ids: token id ", id, " is outside the vocabulary [0, ",
               mc.vocab_size, ")");
    if (n == C)
      for (int64_t b = 1; b < B; ++b) canvas.insert(canvas.end(), canvas.begin(), canvas.begin() + C);
    inputs.decoder_input_ids = Tensor::from_vector(canvas, {B, C});
  }
  if (!o.self_conditioning_logits.empty()) {
    const io::SafetensorsReader f = io::SafetensorsReader::open(o.self_conditioning_logits);
    G4_CHECK(f.has("self_conditioning_logits"), "--self-conditioning-logits: ", o.self_conditioning_logits,
             " has no 'self_conditioning_logits' tensor");
    inputs.self_conditioning_logits = f.get_f32("self_conditioning_logits", {B, C, mc.vocab_size});
  }
  const diffusion::GenerateOutput out = diffusion::generate(*m, Tensor::from_vector(ids, {B, P}), inputs, cfg, *draws);

  const int64_t L = out.sequences.size(1);
  std::string jsonl;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = out.sequences.data<int64_t>() + b * L;
    const std::vector<int64_t> fresh(row + P, row + L);
    if (o.out.empty()) {
      for (size_t i = 0; i < fresh.size(); ++i) std::cout << (i ? "," : "") << fresh[i];
      std::cout << "\n";
      if (tok) std::cout << decode_generated(*tok, fresh) << "\n";
      continue;
    }
    json line = {{"prompt_ids", prompts[b]},
                 {"output_ids", fresh},
                 {"tokens_per_forward", out.tokens_per_forward[b]},
                 {"steps_per_block", out.steps_per_block}};
    if (tok) line["text"] = decode_generated(*tok, fresh);
    jsonl += line.dump() + "\n";
  }
  if (!o.out.empty()) io::write_file_atomic(o.out, jsonl);
  std::cerr << "g4 generate: " << B << " rows, " << out.steps_per_block.size() << " blocks, steps per block";
  for (int64_t s : out.steps_per_block) std::cerr << " " << s;
  std::cerr << "; tokens per forward";
  for (float t : out.tokens_per_forward) std::cerr << " " << t;
  std::cerr << (o.out.empty() ? "" : " -> " + o.out) << "\n";
}

}  // namespace g4::cli

#include "train/run_setup.h"

#include <cmath>
#include <fstream>
#include <iostream>
#include <set>

#include "io/json_input.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"
#include "parallel/context_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/gpu_world.h"
#include "parallel/world.h"
#include "train/adamw.h"
#include "train/trainer.h"

namespace g4::train {

namespace fs = std::filesystem;

void Progress::save(const fs::path&, nlohmann::json& state) {
  state["elapsed_s"] = elapsed_s;
  state["skipped_steps"] = skipped_steps;
  if (lora_model) state["lora_dropout_calls"] = lora_model->lora_calls();
  state["recipe"] = recipe;
}

void Progress::load(const fs::path& dir, const nlohmann::json& state) {
  step = io::json_int(state, "step", trainer_state_path(dir));
  skipped_steps = io::json_int(state, "skipped_steps", trainer_state_path(dir), 0);
  elapsed_s = io::json_number(state, "elapsed_s", trainer_state_path(dir), 0.0);
  if (lora_model)
    lora_model->set_lora_calls(
        static_cast<uint64_t>(io::json_int(state, "lora_dropout_calls", trainer_state_path(dir), 0)));
}

std::vector<std::string> trainable_names(const model::Gemma4& m, const std::vector<std::string>& freeze) {
  std::vector<std::string> names;
  std::vector<bool> used(freeze.size(), false);
  for (const std::string& n : m.params().order) {
    const model::ParamKind kind = m.params().kind(n);
    bool frozen = m.lora() && !model::is_lora(kind);
    const std::string hf = model::hf_name(m.config(), n);
    for (size_t i = 0; i < freeze.size(); ++i) {
      const std::string& p = freeze[i];
      const bool match = wildcard_match(p, n) || wildcard_match(p, hf) || p == model::param_kind_name(kind);
      used[i] = used[i] || match;
      frozen = frozen || match;
    }
    if (!frozen) names.push_back(n);
  }
  // A pattern that matches nothing is a typo or another model's name: it would freeze nothing and
  // train what was meant to stay fixed.
  for (size_t i = 0; i < freeze.size(); ++i)
    G4_CHECK(used[i], "'train.freeze' pattern '", freeze[i], "' matches no parameter of the model (patterns match ",
             "Hugging Face names such as '", model::hf_name(m.config(), m.params().order.front()),
             "', g4's names or a parameter kind such as 'norm')");
  return names;
}

void require_grad_only(model::Gemma4& m, const std::vector<std::string>& trainable) {
  const std::set<std::string> names(trainable.begin(), trainable.end());
  for (const std::string& n : m.params().order) m.params().at(n).set_requires_grad(names.count(n) > 0);
}

io::ImageProcessorOptions data_image_processor(const std::string& model_dir, const io::ModelConfig& config) {
  return config.vision ? io::model_image_processor_options(model_dir, *config.vision) : io::ImageProcessorOptions{};
}

io::VideoProcessorOptions data_video_processor(const std::string& model_dir, const io::ModelConfig& config) {
  const bool has_file = !model_dir.empty() && fs::exists(fs::path(model_dir) / "processor_config.json");
  io::VideoProcessorOptions opt = has_file ? io::load_video_processor_options(model_dir) : io::VideoProcessorOptions{};
  if (!config.vision) return opt;
  if (!has_file) {
    opt.frame.patch_size = config.vision->patch_size;
    opt.frame.pooling_kernel_size = config.vision->pooling_kernel_size;
  }
  G4_CHECK(opt.frame.patch_size == config.vision->patch_size &&
               opt.frame.pooling_kernel_size == config.vision->pooling_kernel_size,
           model_dir, ": the video processor's patch_size ", opt.frame.patch_size, " and pooling_kernel_size ",
           opt.frame.pooling_kernel_size, " differ from the vision tower's ", config.vision->patch_size, " and ",
           config.vision->pooling_kernel_size);
  return opt;
}

void check_multimodal_data(const Recipe& r, const io::ModelConfig& config, const io::Tokenizer& tok, bool images,
                           bool audio, bool videos) {
  if (!images && !audio && !videos) return;
  // load_documents checked that the tokenizer has the tokens of the media present.
  const auto same = [&](const char* token, bool tower, int64_t model_id, const char* kind) {
    G4_CHECK(tower, r.source, ": data.train holds ", kind, " parts, but the model has no ", kind, " tower");
    const int32_t id = *tok.token_to_id(token);
    G4_CHECK(id == model_id, r.source, ": the tokenizer's ", token, " is id ", id, " but the model's is ", model_id,
             " (tokenizer ", r.tokenizer, ")");
  };
  if (images) same("<|image|>", config.vision.has_value(), config.vision ? config.vision->image_token_id : -1, "image");
  if (audio) same("<|audio|>", config.conditional && config.has_audio, config.audio_token_id, "audio");
  if (videos) same("<|video|>", config.vision.has_value(), config.vision ? config.vision->video_token_id : -1, "video");
}

void refuse_earlier_run(const std::string& source, const std::string& run_dir) {
  const std::vector<std::string> checkpoints = complete_checkpoints((fs::path(run_dir) / "checkpoints").string());
  int64_t records = 0;
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  if (fs::is_regular_file(metrics)) {
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) records += line.empty() ? 0 : 1;
  }
  if (checkpoints.empty() && records == 0) return;
  std::string what;
  if (!checkpoints.empty())
    what = std::to_string(checkpoints.size()) + " checkpoint(s), the newest " + checkpoints.front();
  if (records > 0) what += (what.empty() ? "" : "; ") + metrics.string() + " with " + std::to_string(records) + " record(s)";
  G4_FAIL(source, ": checkpoint.dir ", run_dir, " holds an earlier run (", what,
          "). Add --resume to continue it, or remove it or choose another checkpoint.dir to start afresh: a new run "
          "there would cut its metrics.jsonl, and its newer checkpoints would outlive the new run's (checkpoint.keep "
          "deletes the oldest step numbers) and be what a later --resume continues");
}

namespace {

// The device mesh of the launched ranks, checked against the recipe's parallel degrees.
std::unique_ptr<parallel::DeviceMesh> make_mesh(const Recipe& r, parallel::Communicator& world, int64_t row_len) {
  const int64_t ep = r.expert_parallel, cp = r.context_parallel;
  // Each cp rank holds one contiguous slice of every row; rows are padded to a multiple of cp.
  G4_CHECK(row_len <= 0 || row_len >= cp, r.source, ": data.seq_len ", row_len, " is shorter than ",
           "parallel.context_parallel ", cp, ": every rank of a cp group needs at least one token of each row");
  G4_CHECK(world.size() % (ep * cp) == 0, r.source, ": parallel.expert_parallel is ", ep,
           " and parallel.context_parallel ", cp, " but ", world.size(),
           " ranks were launched (the ranks must split into groups of ", ep, " x ", cp, " = ", ep * cp, ")");
  const int64_t replicas = r.data_parallel > 0 ? r.data_parallel : world.size() / (ep * cp);
  G4_CHECK(replicas * ep * cp == world.size(), r.source, ": parallel.data_parallel is ", replicas,
           ", parallel.expert_parallel ", ep, " and parallel.context_parallel ", cp, ", which needs ",
           replicas * ep * cp, " ranks, but ", world.size(), " were launched");
  return std::make_unique<parallel::DeviceMesh>(
      world, parallel::MeshShape{static_cast<int>(replicas), static_cast<int>(ep), static_cast<int>(cp)});
}

// AdamW's hyper-parameters and state storage from the optimizer.* keys.
AdamWOptions adamw_options(const Recipe& r) {
  // The recipe allows "float32" and "bfloat16" only.
  const auto storage = [](const std::string& name) { return name == "bfloat16" ? DType::BF16 : DType::F32; };
  AdamWOptions o;
  o.beta1 = r.beta1;
  o.beta2 = r.beta2;
  o.eps = r.eps;
  o.weight_decay = r.weight_decay;
  o.exp_avg_dtype = storage(r.exp_avg_dtype);
  o.exp_avg_sq_dtype = storage(r.exp_avg_sq_dtype);
  o.store_param_remainders = r.store_param_remainders;
  return o;
}

}  // namespace

RunParts::RunParts(const Recipe& recipe, int64_t row_len, bool resume) : r(recipe) {
  // One process per replica (mpirun / srun / g4 launch); a plain launch is one rank. GPU ranks
  // take their GPU first and join over NCCL or host-staged MPI (parallel/gpu_world.h).
  world = r.device == Device::CUDA ? parallel::make_gpu_world_communicator() : parallel::make_world_communicator();
  if (main_rank()) {
    lock = std::make_unique<DirectoryLock>(r.output_dir);
    // Under the lock, so that no other run adds to the directory between the look and the start.
    if (!resume) refuse_earlier_run(r.source, r.output_dir);
    // metrics.jsonl (rewritten on --resume) and loss.svg are replaced whole, through a temporary file.
    remove_killed_writes(r.output_dir, {"metrics.jsonl", "loss.svg"});
  }
  mesh = make_mesh(r, *world, row_len);
  set_up_model(row_len);
  parameters = model->params().numel();
  tok = io::load_tokenizer(r.tokenizer);
  check_tokenizer_fits(*tok, r.tokenizer, model->config().vocab_size);
}

void check_tokenizer_fits(const io::Tokenizer& tok, const std::string& name, int64_t vocab_size) {
  G4_CHECK(tok.vocab_size() <= vocab_size, "tokenizer ", name, " has ", tok.vocab_size(),
           " tokens but the model's vocabulary is ", vocab_size);
}

void RunParts::set_up_model(int64_t row_len) {
  // Checked before a large model is loaded: positions past the context length were never trained.
  const io::ModelConfig config = model_config(r);
  const int64_t context = config.max_position_embeddings;  // 0 = not given
  G4_CHECK(context <= 0 || row_len <= context, r.source, ": data.seq_len ", row_len,
           " exceeds the model's context length (max_position_embeddings ", context, ")");
  if (r.device == Device::CUDA) {
    set_up_gpu_model(config);
  } else {
    model = build_model(r, mesh->local_experts(config));
    if (r.lora.rank > 0) model->enable_lora(r.lora);
  }
  if (r.lora.rank > 0) progress.lora_model = model.get();
  // An adapter-only checkpoint names the whole base; a rank of an expert-parallel group holds only
  // its experts, so the fingerprint is taken from model.path itself, streamed.
  if (r.lora.rank > 0 && !r.model_path.empty() && mesh->shape().ep > 1)
    base_fingerprint = lora_base_fingerprint_of(r.model_path);
  if (row_len > 0) {
    const int64_t padded_len = parallel::padded_length(row_len, mesh->shape().cp);
    mesh->validate_for_model(model->config().enable_moe_block ? model->config().num_experts : 0, padded_len);
  }
  if (mesh->shape().ep > 1) parallel::enable_expert_parallel(*model, mesh->ep_group());
  if (mesh->shape().cp > 1) parallel::enable_context_parallel(*model, mesh->cp_group());
  model->set_recompute(r.recompute);
}

void RunParts::set_up_gpu_model(const io::ModelConfig& config) {
  // `model` is the bf16 GPU copy that computes; `host` (CPU, f32) holds what the optimizer's
  // masters start from. Which parameters train decides what that is: a model of the shapes that
  // allocates no weight (only its adapters) tells.
  const model::ExpertRange experts = mesh->local_experts(config);
  const auto nothing = [](const std::string&) { return false; };
  model::Gemma4 probe(config, experts, DType::F32, Device::CPU, nothing);
  if (r.lora.rank > 0) probe.enable_lora(r.lora);
  const std::vector<std::string> names = trainable_names(probe, r.freeze);
  const std::set<std::string> trainable(names.begin(), names.end());
  // The host keeps the trainable parameters and the adapters (small; a freeze pattern may hold
  // some still); the sharded optimizer takes its master slices from a whole host model.
  const auto kept = [&](const std::string& n) {
    return trainable.count(n) > 0 || model::is_lora(probe.params().kind(n));
  };
  bool frozen = false;
  for (const std::string& n : probe.params().order) frozen = frozen || !kept(n);
  if (!frozen || r.fsdp) {
    // Every weight trains (or is sharded): the host is the whole model as built or loaded.
    host = build_model(r, experts);
    if (r.lora.rank > 0) host->enable_lora(r.lora);
    model = host->copy_to(Device::CUDA, DType::BF16);
    return;
  }
  // Frozen weights exist only as their bf16 GPU copies: a checkpoint streams in tensor by tensor
  // (the f32 host peak is one tensor), each frozen one converted straight onto the device.
  // The adapter checkpoints' base fingerprint, from the f32 values as they stream (an expert-parallel
  // rank streams only its experts: set_up_model takes that one from model.path whole).
  const bool fingerprint = r.lora.rank > 0 && !r.model_path.empty() && mesh->shape().ep == 1;
  std::map<std::string, FingerprintSample> samples;
  model = std::make_unique<model::Gemma4>(config, experts, DType::BF16, Device::CUDA);
  auto to_device = [&](const std::string& n, const Tensor& value) {
    if (kept(n)) return;  // the optimizer copies it from the host with its master
    Tensor& copy = model->params().at(n).mutable_value();
    copy.copy_from(value.to(copy.dtype()));
    if (fingerprint) samples.emplace(n, fingerprint_sample(value));
  };
  if (!r.model_path.empty()) {
    host = std::make_unique<model::Gemma4>(config, experts, DType::F32, Device::CPU, kept);
    model::load_hf_weights(*host, io::SafetensorsReader::open(r.model_path), to_device);
  } else {
    // A built-in shape's random weights are drawn whole on the host (init_weights), then the
    // frozen ones leave it.
    host = build_model(r, experts);
    for (const std::string& n : host->params().order) {
      Tensor& value = host->params().at(n).mutable_value();
      if (kept(n)) continue;
      to_device(n, value);
      value = Tensor();
    }
  }
  if (r.lora.rank > 0) {
    host->enable_lora(r.lora);
    model->enable_lora(r.lora);
  }
  // The trainable weights' copies and the buffers now, so the model computes before the optimizer
  // exists (g4 rl's reference policy, validation); the optimizer sets the copies again, alike.
  load_parameter_values(host->params(), model->params());
  if (fingerprint) base_fingerprint = lora_base_fingerprint(*host, samples);
}

void RunParts::set_up_training(CheckpointPart& objective) {
  OptimizerSetup os;
  os.trainable = trainable_names(host ? *host : *model, r.freeze);
  trainable_tensors = os.trainable.size();
  // Frozen weights take no gradient at all (4 bytes per parameter on the GPU).
  require_grad_only(*model, os.trainable);
  os.model = model.get();
  os.host = std::move(host);
  os.mesh = mesh.get();
  os.adamw = adamw_options(r);
  os.sharded = r.fsdp;
  opt = make_optimizer(std::move(os));

  // A built-in shape's random base (model.name) is on no disk: its LoRA checkpoints keep it.
  const std::string lora_base = r.lora.rank > 0 ? r.model_path : "";
  weights = std::make_unique<WeightsCheckpoint>(*opt, *mesh, r.tokenizer, lora_base,
                                                !lora_base.empty() && !r.lora_save_base, base_fingerprint);
  progress.recipe = r.resolved;
  checkpoints = std::make_unique<CheckpointManager>((fs::path(r.output_dir) / "checkpoints").string(),
                                                    r.keep_checkpoints, *world);
  // Weights before the optimizer: its state (a sharded optimizer's master slices) reads them.
  for (CheckpointPart* part : std::initializer_list<CheckpointPart*>{weights.get(), opt.get(), &objective, &progress})
    checkpoints->add(*part);
}

namespace {

// The leaves where two resolved recipes differ, as "key old -> new".
void recipe_differences(const nlohmann::json& was, const nlohmann::json& is, const std::string& prefix,
                        std::vector<std::string>& out) {
  if (was.is_object() && is.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, v] : was.items()) keys.insert(k);
    for (const auto& [k, v] : is.items()) keys.insert(k);
    for (const std::string& k : keys)
      recipe_differences(was.contains(k) ? was[k] : nlohmann::json(), is.contains(k) ? is[k] : nlohmann::json(),
                         prefix.empty() ? k : prefix + "." + k, out);
    return;
  }
  if (was == is) return;
  // Keys that do not change what the steps compute: extending a run (train.steps), its bookkeeping.
  for (const char* free : {"train.steps", "checkpoint.", "log."})
    if (prefix.rfind(free, 0) == 0) return;
  out.push_back(prefix + " " + (was.is_null() ? std::string("(unset)") : was.dump()) + " -> " + is.dump());
}

}  // namespace

std::optional<std::string> RunParts::resume_if_asked(bool resume) {
  if (!resume) return std::nullopt;
  const std::optional<std::string> from = checkpoints->resume();
  if (from) {
    if (main_rank()) std::cerr << "resuming from " << *from << " (step " << progress.step << ")\n";
    // A recipe changed since the checkpoint (other data, batch, learning rate) is allowed, but the
    // continuation is then not the run the checkpoint began: say so, with the keys.
    const nlohmann::json state = main_rank() ? read_trainer_state(*from) : nlohmann::json();
    if (state.contains("recipe") && state["recipe"].is_object()) {
      std::vector<std::string> changed;
      recipe_differences(state["recipe"], r.resolved, "", changed);
      if (!changed.empty()) {
        std::cerr << "note: the recipe differs from the one " << *from << " was trained with:";
        for (const std::string& c : changed) std::cerr << "\n  " << c;
        std::cerr << "\n(the resumed run will not match an uninterrupted run of either recipe)\n";
      }
    }
  } else if (main_rank()) {
    std::cerr << "no checkpoint in " << checkpoints->dir() << "; starting from scratch\n";
  }
  return from;
}

void RunParts::check_finite(const StepResult& s) {
  if (s.finite) return;
  if (r.skip_nonfinite_steps) {
    ++progress.skipped_steps;
    if (main_rank()) std::cerr << "step " << progress.step << ": skipped (non-finite loss or gradient norm)\n";
    return;
  }
  std::string what;
  for (const auto& [name, value] : s.metrics)
    if (!std::isfinite(value)) what += name + " " + std::to_string(value) + ", ";
  if (!std::isfinite(s.grad_norm)) what += "gradient norm " + std::to_string(s.grad_norm) + ", ";
  const auto last = checkpoints->latest();
  G4_FAIL(r.source, ": step ", progress.step, " has a non-finite ", what.substr(0, what.size() - 2),
          "; stopped before its update. The newest checkpoint (", last ? *last : std::string("none"),
          ") is intact. Lower optimizer.lr or raise schedule.warmup_steps, or set train.skip_nonfinite_steps: true "
          "to skip such steps");
}

}  // namespace g4::train

#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include "autograd/variable.h"
#include "core/device_memory.h"
#include "core/log.h"
#include "generate/generator.h"
#include "model/named_configs.h"
#include "model/state_dict_adapter.h"
#include "parallel/context_parallel.h"
#include "parallel/data_parallel.h"
#include "parallel/expert_parallel.h"
#include "parallel/world.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"

namespace g4::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A model holding experts `range` of `full` (the other parameters and buffers copied).
std::unique_ptr<model::Gemma4> keep_experts(const model::Gemma4& full, model::ExpertRange range) {
  auto m = std::make_unique<model::Gemma4>(full.config(), range);
  for (const std::string& n : m->params().order) {
    const Tensor& v = full.params().at(n).value();
    m->params().at(n).mutable_value().copy_from(model::is_expert_parameter(n) ? v.slice0(range.begin, range.count) : v);
  }
  for (const auto& [n, b] : full.params().buffers)
    if (n.find("per_expert_scale") == std::string::npos) m->params().buffers[n] = b.clone();
  return m;
}

// Collective over `ep`: the whole model (every expert), gathered from the EP group's slices.
std::unique_ptr<model::Gemma4> gather_experts(const model::Gemma4& m, parallel::Communicator& ep) {
  auto full = std::make_unique<model::Gemma4>(m.config());
  for (const std::string& n : m.params().order) {
    const Tensor& v = m.params().at(n).value();
    full->params().at(n).mutable_value().copy_from(model::is_expert_parameter(n) ? ep.all_gather(v) : v);
  }
  for (const auto& [n, b] : m.params().buffers)
    if (n.find("per_expert_scale") == std::string::npos) full->params().buffers[n] = b.clone();
  return full;
}

}  // namespace

io::ModelConfig model_config(const Recipe& r) {
  if (!r.model_path.empty()) return model::load_hf_config(r.model_path);
  io::ModelConfig cfg = io::parse_model_config(model::named_config(r.model_name, r.model_overrides),
                                               "built-in model '" + r.model_name + "'");
  cfg.raw = nlohmann::json();  // exported from the fields, so overrides show up in config.json
  return cfg;
}

std::unique_ptr<model::Gemma4> build_model(const Recipe& r, model::ExpertRange experts) {
  if (!r.model_path.empty()) {
    G4_CHECK(r.model_overrides.empty(), r.source, ": 'model.config' overrides apply to built-in models only");
    return model::load_hf_model(r.model_path, experts);
  }
  auto m = std::make_unique<model::Gemma4>(model_config(r));
  // The whole model is initialised, then sliced, so every EP size starts from the same weights.
  m->init_weights(r.init_seed, model::named_config(r.model_name, r.model_overrides).value("initializer_range", 0.02));
  if (experts.count == 0 || experts.count == m->config().num_experts) return m;
  return keep_experts(*m, experts);
}

double evaluate_loss(const model::Gemma4& model, const std::vector<data::Batch>& batches, int64_t* tokens) {
  ag::NoGrad no_grad;
  double sum = 0;
  int64_t count = 0;
  for (const data::Batch& b : batches) {
    model::ForwardInputs in{b.input_ids, Tensor(), b.position_ids, b.labels};
    // The GPU computes its loss by the fused LM head + loss either way; asking for no logits
    // spares the [B, S, V] tensor. The CPU keeps its reference path (logits, then the loss).
    in.return_logits = model.device() == Device::CPU;
    const model::ForwardOutputs out = model.forward(in);
    sum += out.loss.value().item() * static_cast<double>(out.counted_tokens);
    count += out.counted_tokens;
  }
  if (tokens) *tokens = count;
  return count > 0 ? sum / static_cast<double>(count) : std::nan("");
}

namespace {

std::vector<std::string> trainable_names(const model::Gemma4& m, const std::vector<std::string>& freeze) {
  std::vector<std::string> names;
  for (const std::string& n : m.params().order) {
    bool frozen = false;
    // Patterns may name either the native or the Hugging Face parameter.
    const auto hf = model::export_hf_tensor(m.config(), n, m.params().at(n).value());
    for (const std::string& p : freeze) frozen = frozen || wildcard_match(p, n) || wildcard_match(p, hf[0].first);
    if (!frozen) names.push_back(n);
  }
  return names;
}

std::string render_samples(const model::Gemma4& m, const io::Tokenizer& tok, const Recipe& r) {
  std::string out;
  std::vector<int32_t> prompt_ids = tok.encode(r.sample_prompt);
  for (int64_t i = 0; i < r.samples; ++i) {
    std::vector<int64_t> prompt = {tok.bos_id};
    prompt.insert(prompt.end(), prompt_ids.begin(), prompt_ids.end());
    gen::GenerateOptions opt;
    opt.max_new_tokens = r.sample_tokens;
    opt.sampling.greedy = false;
    opt.sampling.temperature = 0.8;
    opt.sampling.top_p = 0.95;
    opt.sampling.seed = static_cast<uint64_t>(i + 1);
    opt.stop_ids = {tok.eos_id};
    const auto ids = gen::generate(m, {prompt}, opt)[0];
    std::vector<int32_t> gen_ids(ids.begin() + 1, ids.end());
    if (!gen_ids.empty() && gen_ids.back() == tok.eos_id) gen_ids.pop_back();
    std::string text = tok.decode(gen_ids, /*skip_special=*/true);
    for (char& c : text)
      if (c == '\n') c = ' ';
    out += "  " + std::to_string(i + 1) + ". " + text + "\n";
  }
  return out;
}

// One micro-batch as this rank feeds it to the model. Under context parallelism (cp > 1) the rows
// are padded to a multiple of cp and the rank keeps its contiguous slice, with the labels shifted
// over the whole row first (targets) and global position ids.
struct RankBatch {
  model::ForwardInputs inputs;
  Tensor targets;  // shifted labels of this rank's tokens: what its loss counts
};

RankBatch rank_batch(const data::Batch& b, int cp_rank, int cp, int64_t pad_id) {
  RankBatch rb;
  if (cp == 1) {
    rb.inputs = {b.input_ids, Tensor(), b.position_ids, b.labels};
    rb.targets = model::shift_labels(b.labels);
    return rb;
  }
  const parallel::PaddedRows rows = parallel::pad_to_multiple(b.input_ids, b.position_ids, b.labels, cp, pad_id);
  const parallel::ContextShard s = parallel::shard_batch(rows.input_ids, rows.position_ids, rows.labels, cp_rank, cp);
  rb.inputs = {s.input_ids, Tensor(), s.position_ids, Tensor(), s.targets};
  rb.targets = s.targets;
  return rb;
}

// Mean validation loss over `batches`, each split over the cp group (collective over `cp`).
double evaluate_loss_cp(const model::Gemma4& model, const std::vector<data::Batch>& batches,
                        parallel::Communicator& cp, int64_t pad_id) {
  ag::NoGrad no_grad;
  Tensor sums = Tensor::zeros({2}, DType::F64);  // loss * tokens, tokens
  for (const data::Batch& b : batches) {
    const model::ForwardOutputs out = model.forward(rank_batch(b, cp.rank(), cp.size(), pad_id).inputs);
    sums.data<double>()[0] += out.loss.value().item() * static_cast<double>(out.counted_tokens);
    sums.data<double>()[1] += static_cast<double>(out.counted_tokens);
  }
  cp.all_reduce(sums);
  return sums.data<double>()[1] > 0 ? sums.data<double>()[0] / sums.data<double>()[1] : std::nan("");
}

// Collective over `world`: the step's token rows per expert of every MoE layer, summed over all
// ranks (a rank counts the rows its own experts processed: under expert parallelism those came
// from its whole EP group, otherwise from its own tokens), into rec["expert_tokens"] =
// {layer: [rows of expert 0, 1, ...]} and rec["expert_load_max"] = the busiest expert's rows over
// the mean (1 is perfect balance; top-k routing sends every token to k experts).
void add_expert_load(nlohmann::json& rec, const std::map<int64_t, std::vector<int64_t>>& rows,
                     const model::Gemma4& model, parallel::Communicator& world) {
  const int64_t E = model.config().num_experts, first = model.experts().begin;
  Tensor all = Tensor::zeros({static_cast<int64_t>(rows.size()), E}, DType::F64);
  int64_t i = 0;
  for (const auto& [layer, counts] : rows) {
    for (size_t e = 0; e < counts.size(); ++e)
      all.data<double>()[i * E + first + static_cast<int64_t>(e)] = static_cast<double>(counts[e]);
    ++i;
  }
  if (world.size() > 1) world.all_reduce(all);
  nlohmann::json per_layer = nlohmann::json::object();
  double worst = 0;
  i = 0;
  for (const auto& [layer, counts] : rows) {
    std::vector<int64_t> total(static_cast<size_t>(E));
    double sum = 0, max = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double v = all.data<double>()[i * E + e];
      total[static_cast<size_t>(e)] = static_cast<int64_t>(v);
      sum += v;
      max = std::max(max, v);
    }
    if (sum > 0) worst = std::max(worst, max / (sum / static_cast<double>(E)));
    per_layer[std::to_string(layer)] = total;
    ++i;
  }
  rec["expert_tokens"] = per_layer;
  rec["expert_load_max"] = worst;
}

}  // namespace

TrainResult run_training(const Recipe& r, bool resume) {
  const auto t_start = Clock::now();
  const bool gpu = r.device == Device::CUDA;
  // The recipe refuses the parallel keys with cuda; this catches a plain `mpirun -np N` (or
  // g4 launch -n N) of a cuda recipe, before MPI is started for it.
  const int launched = parallel::detect_launch().size;
  G4_CHECK(!gpu || launched == 1, r.source, ": 'train.device' is cuda but ", launched, " ranks were launched: "
           "multi-GPU training is not supported yet (g4 train runs on one GPU, in one process)");
  // One process per replica (mpirun / srun); a plain launch is one rank.
  const std::unique_ptr<parallel::Communicator> world = parallel::make_world_communicator();
  const int64_t ep = r.expert_parallel, cp = r.context_parallel;
  // Each cp rank holds one contiguous slice of every row; rows are padded to a multiple of cp.
  G4_CHECK(r.data.seq_len >= cp, r.source, ": data.seq_len ", r.data.seq_len, " is shorter than ",
           "parallel.context_parallel ", cp, ": every rank of a cp group needs at least one token of each row");
  G4_CHECK(world->size() % (ep * cp) == 0, r.source, ": parallel.expert_parallel is ", ep,
           " and parallel.context_parallel ", cp, " but ", world->size(),
           " ranks were launched (the ranks must split into groups of ", ep, " x ", cp, " = ", ep * cp, ")");
  const int64_t replicas = r.data_parallel > 0 ? r.data_parallel : world->size() / (ep * cp);
  G4_CHECK(replicas * ep * cp == world->size(), r.source, ": parallel.data_parallel is ", replicas,
           ", parallel.expert_parallel ", ep, " and parallel.context_parallel ", cp, ", which needs ",
           replicas * ep * cp, " ranks, but ", world->size(), " were launched");
  const int64_t padded_len = parallel::padded_length(r.data.seq_len, static_cast<int>(cp));
  parallel::DeviceMesh mesh(*world, parallel::MeshShape{static_cast<int>(replicas), static_cast<int>(ep),
                                                        static_cast<int>(cp)});
  const int64_t rank = world->rank(), ranks = world->size();
  // The cp ranks of one (dp, ep) pair share their rows: rank / cp numbers the row streams.
  const int64_t data_rank = rank / cp, data_ranks = ranks / cp;
  const int cp_rank = mesh.coord().cp;
  const bool main_rank = rank == 0;  // the one that logs, samples and writes checkpoints
  std::unique_ptr<model::Gemma4> model = build_model(r, mesh.local_experts(model_config(r)));
  // On the GPU, `host` keeps the model as built or loaded (CPU, f32) and `model` becomes its GPU
  // copy. AdamW's masters start from host's f32 values, checkpoints export host after the masters
  // are copied back into it (never the bf16 copies), and samples are drawn from it: the generator
  // reads f32 logits on the host.
  std::unique_ptr<model::Gemma4> host;
  if (gpu) {
    host = std::move(model);
    model = host->copy_to(Device::CUDA, DType::BF16);
  }
  mesh.validate_for_model(model->config().enable_moe_block ? model->config().num_experts : 0, padded_len);
  if (ep > 1) parallel::enable_expert_parallel(*model, mesh.ep_group());
  if (cp > 1) parallel::enable_context_parallel(*model, mesh.cp_group());
  model->set_recompute(r.recompute);
  model->set_router_aux_loss(r.router_aux_loss);
  const std::unique_ptr<io::Tokenizer> tok = io::load_tokenizer(r.tokenizer);
  G4_CHECK(tok->vocab_size() <= model->config().vocab_size, "tokenizer ", r.tokenizer, " has ", tok->vocab_size(),
           " tokens but the model's vocabulary is ", model->config().vocab_size);
  const data::PackedDataset data(r.data, *tok);
  G4_CHECK(data.train_rows() > 0, "the training data (", r.data.files[0], "...) yields no training rows");

  const std::vector<std::string> names = trainable_names(host ? *host : *model, r.freeze);
  {
    // Frozen weights take no gradient at all: no gradient buffer (4 bytes per parameter on the GPU)
    // and no weight-gradient products; the activations' gradients still flow through them.
    const std::set<std::string> trainable(names.begin(), names.end());
    for (const std::string& n : model->params().order)
      model->params().at(n).set_requires_grad(trainable.count(n) > 0);
  }
  const int64_t model_numel = model->params().numel();
  // One of the two optimizers: replicated AdamW, or sharded over the dp group (parallel.fsdp).
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<ShardedAdamW> sharded;
  const AdamWOptions adamw_options{r.beta1, r.beta2, r.eps, r.weight_decay};
  if (r.fsdp)
    sharded = std::make_unique<ShardedAdamW>(*model, mesh, names,
                                             no_weight_decay(model->params(), model->config()), adamw_options);
  else
    opt = std::make_unique<AdamW>(model->params(), names, no_weight_decay(model->params(), model->config()),
                                  adamw_options);
  if (host) opt->load_parameters(host->params());  // the masters take the f32 values, not their rounding
  // The whole parameters, for code that reads them between steps (checkpoints, rank 0 alone);
  // released again, the model gathers block by block as it runs (training, validation).
  auto gather = [&] {
    if (sharded) sharded->gather_parameters();
  };
  auto release = [&] {
    if (sharded) sharded->release_parameters();
  };

  TrainerState state;
  state.recipe = r.resolved;
  const std::string ckpt_dir = (fs::path(r.output_dir) / "checkpoints").string();
  if (resume) {
    const auto latest = latest_checkpoint(ckpt_dir);
    if (latest) {
      // On the GPU the checkpoint's f32 weights go into host, the masters and the GPU copies.
      state = sharded ? load_checkpoint(*latest, *model, *sharded, rank, ranks)
              : host  ? load_checkpoint_with_masters(*latest, *host, *opt, rank, ranks)
                      : load_checkpoint(*latest, *model, *opt, rank, ranks);
      state.recipe = r.resolved;
      if (main_rank) std::cerr << "resuming from " << *latest << " (step " << state.step << ")\n";
    } else if (main_rank) {
      std::cerr << "no checkpoint in " << ckpt_dir << "; starting from scratch\n";
    }
  }
  std::optional<MetricsLog> log;
  if (main_rank) log.emplace((fs::path(r.output_dir) / "metrics.jsonl").string(), state.step);

  const int64_t tokens_per_step = r.batch_size * r.grad_accumulation * r.data.seq_len * data_ranks;
  if (main_rank) std::printf("model      %s: %lld parameters (%zu trainable tensors), %lld layers\n",
              r.model_path.empty() ? r.model_name.c_str() : r.model_path.c_str(),
              static_cast<long long>(model_numel), names.size(),
              static_cast<long long>(model->config().num_layers));
  if (main_rank) std::printf("data       %lld documents, %lld tokens, %lld train rows + %lld validation rows of %lld\n",
              static_cast<long long>(data.documents()), static_cast<long long>(data.tokens()),
              static_cast<long long>(data.train_rows()), static_cast<long long>(data.validation_rows()),
              static_cast<long long>(r.data.seq_len));
  if (main_rank) std::printf("baseline   unigram entropy of the training tokens: %.4f nats\n", data.unigram_entropy());
  if (main_rank)
    std::printf("training   %lld steps x %lld tokens (%lld data-parallel %s%s x %lld expert-parallel x %lld "
                "context-parallel), lr %.2e (%s), recompute %s\n",
                static_cast<long long>(r.steps), static_cast<long long>(tokens_per_step),
                static_cast<long long>(replicas), r.fsdp ? "shard" : "replica", replicas > 1 ? "s" : "",
                static_cast<long long>(ep), static_cast<long long>(cp), r.lr, r.schedule.c_str(),
                r.recompute ? "on" : "off");
  if (main_rank && gpu)
    std::printf("device     cuda: bf16 compute, fp32 master weights, gradients and AdamW moments\n");
  if (main_rank && padded_len != r.data.seq_len)
    std::printf("context    rows of %lld tokens padded to %lld for %lld slices of %lld\n",
                static_cast<long long>(r.data.seq_len), static_cast<long long>(padded_len), static_cast<long long>(cp),
                static_cast<long long>(padded_len / cp));
  std::fflush(stdout);

  const std::vector<data::Batch> val_batches =
      data.validation_rows() > 0 ? data.validation_batches(r.batch_size, r.validation_batches) : std::vector<data::Batch>{};
  ProgressBar bar(r.steps);
  TrainResult result;
  result.unigram_entropy = data.unigram_entropy();
  const double elapsed_before = state.elapsed_s;
  if (gpu) {
    device_synchronize();
    reset_device_memory_peak();  // the training loop's peak, not the loading's
  }
  const auto t_loop = Clock::now();
  const int64_t first_step = state.step;
  // Seconds spent in steps (validation and checkpoints excluded), for the summary's throughput. On
  // the GPU a step's time ends at the host's last wait on it (its losses and gradient norm); its
  // AdamW update finishes under the next step's clock.
  double train_s = 0;

  while (state.step < r.steps) {
    const auto t0 = Clock::now();
    // Row stream `data_rank` (every (dp, ep) pair of the mesh; its cp ranks share the rows, one
    // slice each) takes micro-batch data_index * data_ranks + data_rank: together the ranks see
    // exactly the rows one rank with data_ranks x batch_size would.
    std::vector<RankBatch> micro;
    int64_t counted = 0;
    for (int64_t a = 0; a < r.grad_accumulation; ++a) {
      const data::Batch b = data.train_batch(r.batch_size, state.data_index++ * data_ranks + data_rank);
      micro.push_back(rank_batch(b, cp_rank, static_cast<int>(cp), tok->pad_id));
      // The GPU trains on the fused LM head + loss: logits exist one chunk at a time, never as
      // [B, S, V]. The batch stays on the host: forward shifts the labels and derives document ids
      // there, then uploads ids, positions and targets once.
      micro.back().inputs.return_logits = !gpu;
      counted += parallel::global_target_count(micro.back().targets, *world);
    }
    double loss_sum = 0, aux_sum = 0;
    // Rows each of this rank's experts processed this step, per MoE layer (over the micro-batches).
    std::map<int64_t, std::vector<int64_t>> expert_rows;
    release();
    for (const RankBatch& b : micro) {
      model::ForwardOutputs out = model->forward(b.inputs);
      for (const auto& [layer, counts] : out.expert_tokens) {
        std::vector<int64_t>& acc = expert_rows[layer];
        acc.resize(counts.size(), 0);
        for (size_t e = 0; e < counts.size(); ++e) acc[e] += counts[e];
      }
      // Only a micro-batch without a counted token anywhere is skipped, by every rank alike: a rank
      // whose own rows or slice count none still runs the backward (with weight 0), because its
      // EP and CP peers' backward exchanges need it.
      if (counted == 0) {
        ag::clear_tape();
        continue;
      }
      // The step's loss is the mean over every trained token of all micro-batches and replicas.
      const double weight = static_cast<double>(out.counted_tokens) / static_cast<double>(counted);
      loss_sum += out.cross_entropy * weight;
      aux_sum += out.router_aux * weight;
      ag::backward(out.loss, weight);
    }
    if (sharded) sharded->reduce_gradients();  // also frees the whole replicated parameters
    if (ranks > 1) {
      if (!sharded) parallel::reduce_gradients(model->params(), mesh);
      Tensor sums = Tensor::from_vector<double>({loss_sum, aux_sum}, {2});
      world->all_reduce(sums);
      loss_sum = sums.data<double>()[0];
      aux_sum = sums.data<double>()[1];
    }
    const double lr = learning_rate(r.schedule, r.lr, state.step, r.steps, r.warmup_steps, r.min_lr_ratio);
    double grad_norm = 0;
    if (gpu) {
      // The norm comes back to the host once (the step's one synchronisation besides the losses);
      // the clipping coefficient is applied inside the AdamW update, not by a pass of its own.
      const GradNorm gn = grad_norm_and_scale(model->params(), names, r.grad_clip);
      grad_norm = gn.norm;
      opt->step(lr, gn.scale);
    } else if (sharded) {
      grad_norm = sharded->clip_grad_norm(r.grad_clip);
      sharded->step(lr);
    } else {
      grad_norm = clip_grad_norm(model->params(), names, r.grad_clip, ep > 1 ? &mesh.ep_group() : nullptr);
      opt->step(lr);
    }
    model->params().zero_grad();
    ++state.step;
    result.last_train_loss = loss_sum;

    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    train_s += step_s;
    const double loop_s = std::chrono::duration<double>(Clock::now() - t_loop).count();
    state.elapsed_s = elapsed_before + loop_s;
    const double tps = static_cast<double>(tokens_per_step) / step_s;
    const double eta = loop_s / static_cast<double>(state.step - first_step) * static_cast<double>(r.steps - state.step);
    if (state.step % r.log_every == 0 || state.step == r.steps) {
      nlohmann::json rec = {{"step", state.step}, {"loss", loss_sum}, {"lr", lr}, {"grad_norm", grad_norm},
                            {"tokens", state.step * tokens_per_step}, {"tokens_per_s", tps}, {"step_s", step_s}};
      if (r.router_aux_loss > 0) rec["router_aux_loss"] = aux_sum;
      if (gpu) rec["device_peak_mib"] = static_cast<double>(device_memory_stats().peak) / (1 << 20);
      if (!expert_rows.empty()) add_expert_load(rec, expert_rows, *model, *world);
      if (main_rank) {
        log->write(rec);
        bar.update(state.step, loss_sum, lr, grad_norm, tps, eta);
      }
    }
    const bool validate = !val_batches.empty() && r.validation_every > 0 &&
                          (state.step % r.validation_every == 0 || state.step == r.steps);
    if (validate) {
      release();
      result.last_validation_loss = cp > 1 ? evaluate_loss_cp(*model, val_batches, mesh.cp_group(), tok->pad_id)
                                           : evaluate_loss(*model, val_batches);
      if (main_rank)
        log->write({{"step", state.step}, {"validation_loss", result.last_validation_loss},
                    {"validation_perplexity", std::exp(result.last_validation_loss)}});
    }
    maybe_fault("step", state.step);
    const bool save = state.step == r.steps || (r.checkpoint_every > 0 && state.step % r.checkpoint_every == 0);
    if (save) {
      // Under EP the first EP group gathers its slices so rank 0 writes every expert; each rank
      // then keeps its own optimizer moments in its own file.
      gather();
      std::unique_ptr<model::Gemma4> full;
      if (ep > 1 && mesh.coord().dp == 0 && cp_rank == 0) full = gather_experts(*model, mesh.ep_group());
      if (host) opt->copy_masters_to(host->params());  // the fp32 masters are what a checkpoint keeps
      const model::Gemma4* export_model = full ? full.get() : host ? host.get() : model.get();
      result.checkpoint =
          sharded ? save_checkpoint(ckpt_dir, export_model, *sharded, state, r.tokenizer, r.keep_checkpoints, *world)
                  : save_checkpoint(ckpt_dir, export_model, *opt, state, r.tokenizer, r.keep_checkpoints, *world,
                                    /*per_rank_optimizer=*/ep > 1);
      // Ranks do not race ahead of a checkpoint they might resume from.
      world->barrier();
    }
  }
  result.steps = state.step;
  result.tokens_per_s = train_s > 0 ? static_cast<double>((state.step - first_step) * tokens_per_step) / train_s : 0.0;
  if (gpu) result.device_peak_bytes = device_memory_stats().peak;
  gather();
  // Rank 0 alone evaluates and samples below; under EP it does so on the gathered whole model.
  std::unique_ptr<model::Gemma4> gathered;
  if (ep > 1 && mesh.coord().dp == 0 && cp_rank == 0) gathered = gather_experts(*model, mesh.ep_group());
  if (!main_rank) return result;
  if (gathered) model = std::move(gathered);
  // Alone now: whole sequences on this rank (decoding refuses a context-parallel model).
  model->set_context_attention(nullptr);
  bar.finish();

  // The loss picture, from the whole log (earlier runs of a resumed training included).
  std::vector<CurvePoint> train_pts, val_pts;
  for (const auto& rec : log->read_all()) {
    if (rec.contains("loss")) train_pts.push_back({rec["step"].get<double>(), rec["loss"].get<double>()});
    if (rec.contains("validation_loss"))
      val_pts.push_back({rec["step"].get<double>(), rec["validation_loss"].get<double>()});
  }
  const std::string svg = (fs::path(r.output_dir) / "loss.svg").string();
  write_loss_svg(svg, train_pts, val_pts, "g4 training loss");
  if (val_pts.empty() && !val_batches.empty()) result.last_validation_loss = evaluate_loss(*model, val_batches);

  const double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::printf("\n== summary ==\n");
  std::printf("steps            %lld (%lld tokens)\n", static_cast<long long>(result.steps),
              static_cast<long long>(result.steps * tokens_per_step));
  std::printf("train loss       %.4f\n", result.last_train_loss);
  if (!val_batches.empty())
    std::printf("validation loss  %.4f (perplexity %.2f); unigram entropy %.4f\n", result.last_validation_loss,
                std::exp(result.last_validation_loss), result.unigram_entropy);
  std::printf("time             %s this run\n", format_duration(total_s).c_str());
  if (state.step > first_step)
    std::printf("throughput       %.0f tokens/s (this run's %lld steps, validation and checkpoints not counted)\n",
                result.tokens_per_s, static_cast<long long>(state.step - first_step));
  if (gpu)
    std::printf("peak memory      %.1f MiB of tensors on the GPU during training (%.1f MiB reserved), %.1f MiB on "
                "the host (activation recompute %s)\n",
                static_cast<double>(result.device_peak_bytes) / (1 << 20),
                static_cast<double>(device_memory_stats().reserved) / (1 << 20),
                static_cast<double>(host_memory_stats().peak) / (1 << 20), r.recompute ? "on" : "off");
  else
    std::printf("peak memory      %.1f MiB of tensors (activation recompute %s)\n",
                static_cast<double>(host_memory_stats().peak) / (1 << 20), r.recompute ? "on" : "off");
  std::printf("checkpoint       %s\n", result.checkpoint.c_str());
  std::printf("metrics          %s\nloss curve       %s\n", log->path().c_str(), svg.c_str());
  if (r.samples > 0) {
    // The generator reads f32 logits on the host, so on the GPU it samples from host, which takes
    // the trained masters first.
    if (host) opt->copy_masters_to(host->params());
    std::printf("samples:\n%s", render_samples(host ? *host : *model, *tok, r).c_str());
  }
  std::fflush(stdout);
  return result;
}

}  // namespace g4::train

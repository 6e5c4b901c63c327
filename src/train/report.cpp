#include "train/report.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/device_memory.h"
#include "generate/generator.h"
#include "train/metrics.h"

namespace g4::train {

namespace fs = std::filesystem;

std::string describe_data(const data::PackedDataset& data, int64_t seq_len, double validation_fraction) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "data       %lld documents, %lld tokens, %lld train rows + %lld validation rows of %lld\n"
                "baseline   unigram entropy of the training tokens: %.4f nats\n",
                static_cast<long long>(data.documents()), static_cast<long long>(data.tokens()),
                static_cast<long long>(data.train_rows()), static_cast<long long>(data.validation_rows()),
                static_cast<long long>(seq_len), data.unigram_entropy());
  std::string out = buf;
  if (data.images() + data.audio_clips() > 0)
    out.insert(out.find('\n'), ", " + std::to_string(data.images()) + " images and " +
                                   std::to_string(data.audio_clips()) + " audio clips in them");
  if (data.videos() > 0) out.insert(out.find('\n'), ", " + std::to_string(data.videos()) + " videos");
  // Validation holds out whole documents: a fraction of too few rounds to none, and the run would
  // otherwise just never report a validation loss.
  if (data.validation_rows() == 0 && validation_fraction > 0) {
    char note[160];
    std::snprintf(note, sizeof note, " (no validation: data.validation_fraction %g of %lld document(s) holds out none)",
                  validation_fraction, static_cast<long long>(data.documents()));
    out.insert(out.find('\n'), note);
  }
  return out;
}

void print_plan(const Recipe& r, const model::Gemma4& model, int64_t parameters, size_t trainable_tensors,
                const std::string& data_lines, const parallel::MeshShape& mesh, int64_t tokens_per_step,
                int64_t padded_len) {
  std::printf("model      %s: %lld parameters (%zu trainable tensors), %lld layers\n",
              r.model_path.empty() ? r.model_name.c_str() : r.model_path.c_str(),
              static_cast<long long>(parameters), trainable_tensors,
              static_cast<long long>(model.config().num_layers));
  std::printf("%s", data_lines.c_str());
  std::printf("training   %lld steps x %lld tokens (%lld data-parallel %s%s x %lld expert-parallel x %lld "
              "context-parallel), lr %.2e (%s), recompute %s\n",
              static_cast<long long>(r.steps), static_cast<long long>(tokens_per_step),
              static_cast<long long>(mesh.dp_shard), r.fsdp ? "shard" : "replica", mesh.dp_shard > 1 ? "s" : "",
              static_cast<long long>(mesh.ep), static_cast<long long>(mesh.cp), r.lr, r.schedule.c_str(),
              r.recompute ? "on" : "off");
  // AdamW's moments as the recipe stores them (optimizer.exp_avg_dtype / exp_avg_sq_dtype).
  const auto short_name = [](const std::string& dtype) { return std::string(dtype == "bfloat16" ? "bf16" : "fp32"); };
  const std::string moments = r.exp_avg_dtype == r.exp_avg_sq_dtype
                                  ? short_name(r.exp_avg_dtype)
                                  : "exp_avg " + short_name(r.exp_avg_dtype) + ", exp_avg_sq " +
                                        short_name(r.exp_avg_sq_dtype);
  if (r.device == Device::CUDA)
    std::printf("device     cuda: bf16 compute, fp32 master weights%s and gradients, AdamW moments in %s\n",
                r.store_param_remainders ? " (kept as the bf16 weights + 16-bit remainders)" : "", moments.c_str());
  else if (moments != "fp32")
    std::printf("optimizer  AdamW moments in %s\n", moments.c_str());
  if (padded_len != r.data.seq_len)
    std::printf("context    rows of %lld tokens padded to %lld for %lld slices of %lld\n",
                static_cast<long long>(r.data.seq_len), static_cast<long long>(padded_len),
                static_cast<long long>(mesh.cp), static_cast<long long>(padded_len / mesh.cp));
  std::fflush(stdout);
}

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
  if (world.size() > 1) parallel::all_reduce_values(world, all);
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

std::string write_loss_picture(const std::string& output_dir, const std::vector<nlohmann::json>& log) {
  std::vector<CurvePoint> train_pts, val_pts;
  for (const auto& rec : log) {
    if (rec.contains("loss")) train_pts.push_back({rec["step"].get<double>(), rec["loss"].get<double>()});
    if (rec.contains("validation_loss"))
      val_pts.push_back({rec["step"].get<double>(), rec["validation_loss"].get<double>()});
  }
  const std::string svg = (fs::path(output_dir) / "loss.svg").string();
  write_loss_svg(svg, train_pts, val_pts, "g4 training loss");
  return svg;
}

void print_summary(const Recipe& r, const TrainResult& result, const SummaryFacts& f) {
  const bool gpu = r.device == Device::CUDA;
  std::printf("\n== summary ==\n");
  std::printf("steps            %lld (%lld tokens)\n", static_cast<long long>(result.steps),
              static_cast<long long>(result.steps * f.tokens_per_step));
  std::printf("train loss       %.4f\n", result.last_train_loss);
  if (f.has_validation)
    std::printf("validation loss  %.4f (perplexity %.2f); unigram entropy %.4f\n", result.last_validation_loss,
                std::exp(result.last_validation_loss), result.unigram_entropy);
  std::printf("time             %s this run\n", format_duration(f.total_s).c_str());
  if (f.steps_this_run > 0)
    std::printf("throughput       %.0f tokens/s (this run's %lld steps, validation and checkpoints not counted)\n",
                result.tokens_per_s, static_cast<long long>(f.steps_this_run));
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
  std::printf("metrics          %s\nloss curve       %s\n", f.metrics_path.c_str(), f.svg_path.c_str());
}

std::string render_samples(const model::Gemma4& m, const io::Tokenizer& tok, const Recipe& r) {
  std::string out;
  std::vector<int32_t> prompt_ids = tok.encode(r.sample_prompt);
  for (int64_t i = 0; i < r.samples; ++i) {
    std::vector<int64_t> prompt = {tok.bos_id};
    prompt.insert(prompt.end(), prompt_ids.begin(), prompt_ids.end());
    gen::GenerateOptions opt;
    opt.max_new_tokens = r.sample_tokens;
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

}  // namespace g4::train

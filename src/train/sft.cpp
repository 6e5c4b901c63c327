#include "train/sft.h"

#include <cmath>
#include <utility>

#include "io/json_input.h"
#include "parallel/context_parallel.h"
#include "train/checkpoint.h"

namespace g4::train {

namespace {

// One micro-batch as this rank feeds it to the model. Under context parallelism (cp > 1) the rows
// are padded to a multiple of cp and the rank keeps its contiguous slice, with the labels shifted
// over the whole row first (targets) and global position ids.
model::ForwardInputs rank_inputs(const data::Batch& b, int cp_rank, int cp, int64_t pad_id) {
  model::ForwardInputs in = batch_inputs(b);
  if (cp == 1) return in;
  const parallel::PaddedRows rows = parallel::pad_to_multiple(b.input_ids, b.position_ids, b.labels, cp, pad_id);
  const parallel::ContextShard s = parallel::shard_batch(rows.input_ids, rows.position_ids, rows.labels, cp_rank, cp);
  in.input_ids = s.input_ids;
  in.position_ids = s.position_ids;
  in.labels = Tensor();
  in.targets = s.targets;
  // Media: every rank gets the whole micro-batch's (the towers run on whole images and clips, and
  // the model takes the soft tokens of its slice's placeholders); the token types are cut like the
  // ids, padded as text.
  if (b.mm_token_type_ids.defined())
    in.mm_token_type_ids =
        parallel::sequence_shard(parallel::pad_columns(b.mm_token_type_ids, rows.input_ids.size(1), 0), cp_rank, cp);
  return in;
}

struct SftBatch final : StepBatch {
  std::vector<model::ForwardInputs> micro;
  int64_t counted = 0;  // trained tokens of the whole step, over every rank
  int64_t micro_batches() const override { return static_cast<int64_t>(micro.size()); }
};

}  // namespace

model::ForwardInputs batch_inputs(const data::Batch& b) {
  model::ForwardInputs in{b.input_ids, Tensor(), b.position_ids, b.labels};
  // The media keep their names from the batch to the model.
  using In = model::ForwardInputs;
  using B = data::Batch;
  for (const auto& [to, from] :
       {std::pair{&In::pixel_values, &B::pixel_values}, std::pair{&In::image_position_ids, &B::image_position_ids},
        std::pair{&In::mm_token_type_ids, &B::mm_token_type_ids}, std::pair{&In::input_features, &B::input_features},
        std::pair{&In::input_features_mask, &B::input_features_mask},
        std::pair{&In::pixel_values_videos, &B::pixel_values_videos},
        std::pair{&In::video_position_ids, &B::video_position_ids}})
    in.*to = b.*from;
  return in;
}

SftObjective::SftObjective(std::unique_ptr<BatchSource> source, SftOptions options, parallel::DeviceMesh& mesh)
    : source_(std::move(source)), opt_(std::move(options)), mesh_(mesh) {}

void SftObjective::configure(model::Gemma4& model) {
  model.set_router_aux_loss(opt_.router_aux_loss);
  // The GPU trains on the fused LM head + loss: logits exist one chunk at a time, never as
  // [B, S, V]. The CPU keeps its reference path (logits, then the loss).
  fused_loss_ = model.device() != Device::CPU;
}

std::unique_ptr<StepBatch> SftObjective::next_batch() {
  // The cp ranks of one (dp, ep) pair share their rows: world rank / cp numbers the row streams.
  // Stream `r` takes micro-batch index * streams + r, so together the ranks see exactly the rows
  // one rank with `streams` x batch_size would.
  const int cp = mesh_.shape().cp;
  const int64_t stream = mesh_.world().rank() / cp, streams = mesh_.world().size() / cp;
  auto b = std::make_unique<SftBatch>();
  for (int64_t a = 0; a < opt_.grad_accumulation; ++a) {
    const data::Batch rows = source_->batch(opt_.batch_size, data_index_++ * streams + stream);
    b->micro.push_back(rank_inputs(rows, mesh_.coord().cp, cp, opt_.pad_id));
    // The batch stays on the host: forward derives document ids there, then uploads once.
    b->micro.back().return_logits = !fused_loss_;
    const model::ForwardInputs& in = b->micro.back();
    b->counted += parallel::global_target_count(in.targets.defined() ? in.targets : model::shift_labels(in.labels),
                                                mesh_.world());
  }
  return b;
}

MicroLoss SftObjective::forward(const model::Gemma4& model, const StepBatch& batch, int64_t i) {
  const auto& b = static_cast<const SftBatch&>(batch);
  model::ForwardOutputs out = model.forward(b.micro[static_cast<size_t>(i)]);
  MicroLoss r;
  r.expert_tokens = std::move(out.expert_tokens);
  // The step's loss is the mean over every trained token of all micro-batches and ranks. A rank
  // whose own rows or slice count none still runs the backward (with weight 0), because its EP
  // and CP peers' backward exchanges need it; only a step without a counted token anywhere skips
  // it, on every rank alike.
  const double weight =
      b.counted > 0 ? static_cast<double>(out.counted_tokens) / static_cast<double>(b.counted) : 0.0;
  r.metrics["loss"] = out.cross_entropy * weight;
  if (opt_.router_aux_loss > 0) r.metrics["router_aux_loss"] = out.router_aux * weight;
  if (b.counted > 0) {
    r.loss = out.loss;
    r.weight = weight;
  }
  return r;
}

Metrics SftObjective::validate(const model::Gemma4& model) {
  if (opt_.validation.empty()) return {};
  ag::NoGrad no_grad;
  parallel::Communicator& cp = mesh_.cp_group();
  Tensor sums = Tensor::zeros({2}, DType::F64);  // loss * tokens, tokens
  for (const data::Batch& rows : opt_.validation) {
    model::ForwardInputs in = rank_inputs(rows, cp.rank(), cp.size(), opt_.pad_id);
    in.return_logits = !fused_loss_;
    const model::ForwardOutputs out = model.forward(in);
    sums.data<double>()[0] += out.loss.value().item() * static_cast<double>(out.counted_tokens);
    sums.data<double>()[1] += static_cast<double>(out.counted_tokens);
  }
  if (cp.size() > 1) parallel::all_reduce_values(cp, sums);
  const double tokens = sums.data<double>()[1];
  const double loss = tokens > 0 ? sums.data<double>()[0] / tokens : std::nan("");
  return {{"validation_loss", loss}, {"validation_perplexity", std::exp(loss)}};
}

void SftObjective::save(const std::filesystem::path&, nlohmann::json& state) { state["data_index"] = data_index_; }

void SftObjective::load(const std::filesystem::path& dir, const nlohmann::json& state) {
  data_index_ = io::json_int(state, "data_index", trainer_state_path(dir));
}

double evaluate_loss(const model::Gemma4& model, const std::vector<data::Batch>& batches, int64_t* tokens) {
  ag::NoGrad no_grad;
  double sum = 0;
  int64_t count = 0;
  for (const data::Batch& b : batches) {
    model::ForwardInputs in = batch_inputs(b);
    // The GPU computes its loss by the fused LM head + loss either way; asking for no logits
    // spares the [B, S, V] tensor.
    in.return_logits = model.device() == Device::CPU;
    const model::ForwardOutputs out = model.forward(in);
    sum += out.loss.value().item() * static_cast<double>(out.counted_tokens);
    count += out.counted_tokens;
  }
  if (tokens) *tokens = count;
  return count > 0 ? sum / static_cast<double>(count) : std::nan("");
}

}  // namespace g4::train

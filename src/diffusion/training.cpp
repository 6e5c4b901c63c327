#include "diffusion/training.h"

#include <cmath>
#include <cstdio>
#include <map>

#include "core/log.h"
#include "core/torch_generator.h"

namespace g4::diffusion {

namespace {

// Fisher-Yates driven by torch's generator: the same order on every platform and rank.
template <class T>
void shuffle(std::vector<T>& v, uint64_t seed) {
  TorchGenerator g(seed);
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i)
    std::swap(v[static_cast<size_t>(i)], v[static_cast<size_t>(g.randint(0, i + 1))]);
}

// A document's examples: the conversation's single reply, or plain text's fixed-length windows.
std::vector<DllmExample> examples_of(const data::Document& d, int64_t prompt_tokens, int64_t continuation_tokens) {
  std::vector<DllmExample> out;
  const auto n = static_cast<int64_t>(d.ids.size());
  int64_t first = -1, last = -1, runs = 0;
  for (int64_t k = 0; k < n; ++k) {
    if (!d.trained[static_cast<size_t>(k)]) continue;
    if (k == 0 || !d.trained[static_cast<size_t>(k - 1)]) ++runs;
    if (first < 0) first = k;
    last = k;
  }
  if (first == 0 && last == n - 1 && runs == 1) {  // plain text: every token trained
    const int64_t len = prompt_tokens + continuation_tokens;
    for (int64_t k = 0; k + len <= n; k += len)
      out.push_back({std::vector<int64_t>(d.ids.begin() + k, d.ids.begin() + k + len), prompt_tokens});
    return out;
  }
  G4_CHECK(runs == 1, d.source,
           ": block-diffusion training takes single-turn conversations (one assistant reply), "
           "this one has ",
           runs);
  out.push_back({std::vector<int64_t>(d.ids.begin(), d.ids.begin() + last + 1), first});
  return out;
}

}  // namespace

DllmExamples load_examples(const data::DataOptions& opt, const io::Tokenizer& tok, int64_t prompt_tokens,
                           int64_t continuation_tokens) {
  G4_CHECK(prompt_tokens > 0 && continuation_tokens > 0, "data: data.prompt_tokens (", prompt_tokens,
           ") and data.continuation_tokens (", continuation_tokens, ") must be positive");
  G4_CHECK(prompt_tokens + continuation_tokens <= opt.seq_len, "data: data.prompt_tokens + data.continuation_tokens (",
           prompt_tokens + continuation_tokens, ") exceed data.seq_len (", opt.seq_len, ")");
  std::vector<data::Document> docs = data::load_documents(opt, tok);
  // The denoiser has no soft-token merge (the checkpoint's vision tower is a pass-through): a
  // conversation with images or audio would train on bare placeholders.
  for (const data::Document& d : docs)
    G4_CHECK(d.media == nullptr, d.source, ": images and audio are not supported in block-diffusion training data");
  DllmExamples out;
  out.documents = static_cast<int64_t>(docs.size());
  G4_CHECK(!docs.empty(), "data: no documents in ", opt.files[0], "...");
  // Whole documents go to validation, so no text is partly seen in training.
  shuffle(docs, opt.seed);
  const auto n = static_cast<int64_t>(docs.size());
  const int64_t n_validation = std::min(n - 1, static_cast<int64_t>(std::llround(opt.validation_fraction * n)));
  std::map<int64_t, int64_t> counts;
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (DllmExample& e : examples_of(docs[static_cast<size_t>(i)], prompt_tokens, continuation_tokens)) {
      if (e.prompt >= opt.seq_len || e.prompt == static_cast<int64_t>(e.ids.size())) {
        ++out.skipped;
        continue;
      }
      const bool validation = i < n_validation;
      if (!validation) {
        const int64_t end = std::min<int64_t>(static_cast<int64_t>(e.ids.size()), opt.seq_len);
        for (int64_t k = e.prompt; k < end; ++k) ++counts[e.ids[static_cast<size_t>(k)]];
        total += end - e.prompt;
      }
      (validation ? out.validation : out.train).push_back(std::move(e));
    }
  }
  if (out.skipped > 0)
    G4_LOG("data: skipped ", out.skipped, " example(s) with no response token within data.seq_len ", opt.seq_len);
  G4_CHECK(!out.train.empty(), "data: ", opt.files[0],
           "... yields no training example (plain text needs documents of "
           "at least data.prompt_tokens + data.continuation_tokens = ",
           prompt_tokens + continuation_tokens, " tokens, a conversation a prompt shorter than data.seq_len ",
           opt.seq_len, "; ", out.skipped, " example(s) had no response token within it)");
  shuffle(out.train, opt.seed + 1);
  for (const auto& [id, c] : counts) {
    const double p = static_cast<double>(c) / static_cast<double>(total);
    out.unigram_entropy -= p * std::log(p);
  }
  return out;
}

train::CustomObjective recipe_objective(const train::Recipe& r, const io::Tokenizer& tok, parallel::DeviceMesh& mesh) {
  const train::DllmSettings& d = r.dllm;
  G4_CHECK(mesh.shape().cp == 1 && mesh.shape().ep == 1, r.source,
           ": block diffusion trains with data parallelism only (no expert or context parallelism)");
  const io::ModelConfig cfg = train::model_config(r);
  G4_CHECK(cfg.diffusion, r.source, ": a block-diffusion recipe (dllm section) needs a diffusion_gemma model; ",
           r.model_path.empty() ? r.model_name : r.model_path,
           " is not one (g4 convert --to-diffusion adapts an "
           "autoregressive checkpoint)");
  DiffusionOptions o;
  o.block_size = d.block_size > 0 ? d.block_size : cfg.canvas_length;
  o.eps = d.eps;
  o.self_conditioning_p = d.self_conditioning_p;
  o.encoder_loss_weight = d.encoder_loss_weight;
  o.collate.pad_block_size = d.pad_block_size > 0 ? d.pad_block_size : o.block_size;
  // A block longer than a row is never whole: the rows are cut at data.seq_len, so the scored
  // block and the EOS fill would be cut with them.
  G4_CHECK(o.block_size <= r.data.seq_len, r.source, ": dllm.block_size ", o.block_size,
           d.block_size > 0 ? "" : " (0: the model's canvas_length)", " exceeds data.seq_len ", r.data.seq_len,
           ": a block must fit in a row (set dllm.block_size, or adapt with g4 convert --canvas-length)");
  G4_CHECK(o.collate.pad_block_size <= r.data.seq_len, r.source, ": dllm.pad_block_size ", o.collate.pad_block_size,
           " exceeds data.seq_len ", r.data.seq_len);
  o.collate.pad_seq_len_divisible = d.pad_seq_len_divisible;
  o.collate.max_seq_len = r.data.seq_len;
  o.collate.supervise_padding = d.supervise_padding;
  o.collate.eos_id = tok.eos_id;
  o.collate.pad_id = tok.pad_id;
  o.seed = d.seed;
  o.batch_size = r.batch_size;
  o.grad_accumulation = r.grad_accumulation;
  o.validation_batches = r.validation_batches;
  data::DataOptions data = r.data;
  data.add_eos = false;  // a continuation ends where its window ends
  DllmExamples ex =
      load_examples(data, tok, d.prompt_tokens, d.continuation_tokens > 0 ? d.continuation_tokens : o.block_size);
  int64_t tokens = 0;
  for (const DllmExample& e : ex.train) tokens += std::min<int64_t>(static_cast<int64_t>(e.ids.size()), r.data.seq_len);
  char lines[512];
  std::snprintf(lines, sizeof lines,
                "data       %lld documents: %lld training + %lld validation examples (block diffusion, blocks of "
                "%lld, sequences up to %lld)\nbaseline   unigram entropy of the training responses: %.4f nats\n",
                static_cast<long long>(ex.documents), static_cast<long long>(ex.train.size()),
                static_cast<long long>(ex.validation.size()), static_cast<long long>(o.block_size),
                static_cast<long long>(r.data.seq_len), ex.unigram_entropy);
  train::CustomObjective c;
  c.data_lines = lines;
  c.tokens_per_step =
      tokens / static_cast<int64_t>(ex.train.size()) * r.batch_size * r.grad_accumulation * mesh.world().size();
  c.unigram_entropy = ex.unigram_entropy;
  c.has_validation = !ex.validation.empty();
  o.train = std::move(ex.train);
  o.validation = std::move(ex.validation);
  c.objective = std::make_unique<DiffusionObjective>(std::move(o), mesh.world());
  return c;
}

}  // namespace g4::diffusion

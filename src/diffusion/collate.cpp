#include "diffusion/collate.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "core/error.h"

namespace g4::diffusion {

namespace {

int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

int64_t at(const Tensor& t, int64_t b, int64_t j) {
  return t.data<int64_t>()[b * t.size(1) + j];
}
int64_t& at(Tensor& t, int64_t b, int64_t j) {
  return t.data<int64_t>()[b * t.size(1) + j];
}

}  // namespace

DllmBatch collate(const std::vector<DllmExample>& examples, const CollateOptions& opt) {
  G4_CHECK(!examples.empty(), "collate: no examples");
  G4_CHECK(opt.pad_block_size > 0 && opt.pad_seq_len_divisible >= 0 && opt.max_seq_len > 0,
           "collate: dllm.pad_block_size and the sequence length must be positive, dllm.pad_seq_len_divisible not "
           "negative");
  const int64_t B = static_cast<int64_t>(examples.size()), pb = opt.pad_block_size;
  std::vector<int64_t> content(examples.size()), fill_end(examples.size());
  for (size_t b = 0; b < examples.size(); ++b) {
    const DllmExample& e = examples[b];
    const int64_t n = static_cast<int64_t>(e.ids.size());
    G4_CHECK(e.prompt >= 0 && e.prompt <= n, "collate: example ", b, " has a prompt of ", e.prompt, " tokens in ", n);
    content[b] = std::min(n, opt.max_seq_len);
    // The response is rounded up to whole blocks counted from its own start (not from position 0).
    const int64_t resp = std::max<int64_t>(content[b] - e.prompt, 0);
    fill_end[b] = resp > 0 ? e.prompt + round_up(resp, pb) : content[b];
  }
  // Automodel aligns only for a divisor above 1 (None, 0 and 1: the longest fill end).
  const int64_t multiple = opt.pad_seq_len_divisible > 1 ? std::lcm(pb, opt.pad_seq_len_divisible) : 1;
  const int64_t S = std::min(round_up(*std::max_element(fill_end.begin(), fill_end.end()), multiple), opt.max_seq_len);
  DllmBatch out{Tensor::empty({B, S}, DType::I64), Tensor::empty({B, S}, DType::I64),
                Tensor::empty({B, S}, DType::I64)};
  for (int64_t b = 0; b < B; ++b) {
    const DllmExample& e = examples[static_cast<size_t>(b)];
    for (int64_t k = 0; k < S; ++k) {
      int64_t id = opt.pad_id, loss = opt.supervise_padding ? 1 : 0, attend = 0;
      if (k < content[b]) {
        id = e.ids[static_cast<size_t>(k)];
        loss = k >= e.prompt;
        attend = 1;
      } else if (k < fill_end[b]) {
        id = opt.eos_id;
        loss = 1;
        attend = 1;
      }
      at(out.input_ids, b, k) = id;
      at(out.loss_mask, b, k) = loss;
      at(out.attention_mask, b, k) = attend;
    }
  }
  return out;
}

int64_t SamplePlace::global_index(int64_t row) const {
  const int64_t gbs = local_batch_size * dp_size * grad_acc_steps;
  return step * gbs + dp_rank + (microbatch * local_batch_size + row) * dp_size;
}

std::vector<AutomodelCorruptionDraws> corruption_draws(uint64_t base_seed, const SamplePlace& p, int64_t rows,
                                                       int64_t seq_len, int64_t vocab_size, double eps) {
  std::vector<AutomodelCorruptionDraws> d;
  for (int64_t j = 0; j < rows; ++j) {
    const uint64_t seed = automodel_corruption_seed(base_seed, p.step, p.dp_rank, p.dp_size, p.local_batch_size,
                                                    p.grad_acc_steps, p.microbatch, j);
    d.push_back(automodel_corruption_draws(seed, seq_len, vocab_size, eps));
  }
  return d;
}

Tensor corrupt(const DllmBatch& batch, const std::vector<AutomodelCorruptionDraws>& draws) {
  const int64_t B = batch.rows(), S = batch.length();
  G4_CHECK(static_cast<int64_t>(draws.size()) == B, "corrupt: ", draws.size(), " rows of draws for ", B, " rows");
  Tensor noisy = batch.input_ids.clone();
  for (int64_t b = 0; b < B; ++b) {
    const AutomodelCorruptionDraws& d = draws[static_cast<size_t>(b)];
    G4_CHECK(d.u.numel() == S && d.replacement.numel() == S, "corrupt: draws of ", d.u.numel(), " positions for ", S);
    for (int64_t k = 0; k < S; ++k)
      if (d.u.data<float>()[k] < d.t && at(batch.loss_mask, b, k) != 0)
        at(noisy, b, k) = d.replacement.data<int64_t>()[k];
  }
  return noisy;
}

int64_t ResponseWindow::scored() const {
  const int64_t* p = loss_sel.data<int64_t>();
  return std::accumulate(p, p + loss_sel.numel(), int64_t{0});
}

namespace {

// The window with row b scoring block pick(b, blocks of row b).
ResponseWindow window(const DllmBatch& batch, const Tensor& noisy, int64_t block_size,
                      const std::function<int64_t(int64_t, int64_t)>& pick) {
  const int64_t B = batch.rows(), S = batch.length();
  G4_CHECK(block_size > 0, "response_window: dllm.block_size must be positive, got ", block_size);
  ResponseWindow w;
  w.block_size = block_size;
  int64_t R = 1;
  for (int64_t b = 0; b < B; ++b) {
    int64_t prefix = S, eff = 0;
    for (int64_t k = S - 1; k >= 0; --k)
      if (at(batch.loss_mask, b, k) != 0) prefix = k;
    for (int64_t k = 0; k < S; ++k) eff += at(batch.attention_mask, b, k);
    w.prefix.push_back(prefix);
    w.response.push_back(std::max<int64_t>(eff - prefix, 0));
    R = std::max(R, w.response.back());
  }
  for (Tensor* t : {&w.canvas_ids, &w.target_ids, &w.positions, &w.valid, &w.loss_sel})
    *t = Tensor::empty({B, R}, DType::I64);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t resp = w.response[static_cast<size_t>(b)], prefix = w.prefix[static_cast<size_t>(b)];
    const int64_t blocks = std::max<int64_t>(1, (resp - 1) / block_size + 1);
    const int64_t sel = pick(b, blocks);
    w.selected.push_back(sel);
    for (int64_t j = 0; j < R; ++j) {
      const int64_t a = prefix + j, g = std::min(a, S - 1);
      const bool valid = j < resp;  // j < resp implies a < eff
      at(w.canvas_ids, b, j) = at(noisy, b, g);
      at(w.target_ids, b, j) = at(batch.input_ids, b, g);
      at(w.positions, b, j) = g;
      at(w.valid, b, j) = valid;
      at(w.loss_sel, b, j) = valid && at(batch.loss_mask, b, g) != 0 && j / block_size == sel;
    }
  }
  return w;
}

}  // namespace

ResponseWindow response_window(const DllmBatch& batch, const Tensor& noisy, int64_t block_size, const Tensor& sel_u) {
  const int64_t B = batch.rows();
  G4_CHECK(sel_u.numel() == B && sel_u.dtype() == DType::F32, "response_window: sel_u ", sel_u.describe(), " must be [",
           B, "] f32");
  return window(batch, noisy, block_size, [&](int64_t b, int64_t blocks) {
    // Automodel multiplies in float32 and truncates.
    return static_cast<int64_t>(std::floor(sel_u.data<float>()[b] * static_cast<float>(blocks)));
  });
}

ResponseWindow response_window_at(const DllmBatch& batch, const Tensor& noisy, int64_t block_size,
                                  const Tensor& selected) {
  const int64_t B = batch.rows();
  G4_CHECK(selected.numel() == B && !is_floating(selected.dtype()), "selected_block ", selected.describe(),
           " must be [", B, "] integers (one scored block per row)");
  return window(batch, noisy, block_size, [&](int64_t b, int64_t blocks) {
    const int64_t sel = element_as_int(selected, b);
    G4_CHECK(sel >= 0 && sel < blocks, "selected_block[", b, "] = ", sel, " is not one of the row's ", blocks,
             " response blocks of ", block_size);
    return sel;
  });
}

int64_t ar_count(const DllmBatch& batch) {
  int64_t n = 0;
  for (int64_t b = 0; b < batch.rows(); ++b)
    for (int64_t t = 0; t + 1 < batch.length(); ++t)
      n += at(batch.attention_mask, b, t) != 0 && at(batch.attention_mask, b, t + 1) != 0;
  return n;
}

Tensor ar_targets(const DllmBatch& batch) {
  const int64_t B = batch.rows(), S = batch.length();
  Tensor t = Tensor::full({B, S}, -100.0, DType::I64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k + 1 < S; ++k)
      if (at(batch.attention_mask, b, k) != 0 && at(batch.attention_mask, b, k + 1) != 0)
        at(t, b, k) = at(batch.input_ids, b, k + 1);
  return t;
}

std::vector<model::StackAttention::Block> training_blocks(const ResponseWindow& w, int64_t S, int64_t sliding_window) {
  const int64_t B = w.canvas_ids.size(0), R = w.length(), bs = w.block_size;
  std::vector<model::StackAttention::Block> blocks;
  for (int64_t begin = 0, qb = 0; begin < R; begin += bs, ++qb) {
    const int64_t end = std::min(R, begin + bs), n = end - begin;
    model::StackAttention::Block blk{begin, end, {}};
    Tensor full = Tensor::zeros({B, S + n}, DType::I64), slid = Tensor::zeros({B, S + n}, DType::I64);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t prefix = w.prefix[static_cast<size_t>(b)], resp = w.response[static_cast<size_t>(b)];
      // The sliding layers' window: the last sliding_window - 1 keys before the block's first position.
      const int64_t first_slid = sliding_window > 0 ? prefix + qb * bs - sliding_window + 1 : 0;
      for (int64_t k = 0; k < S; ++k) {
        const int64_t rel = k - prefix, eb = rel >= 0 ? rel / bs : -1;
        const bool keep = qb > eb && rel < resp;
        at(full, b, k) = keep;
        at(slid, b, k) = keep && k >= first_slid;
      }
      const bool scored_rows = begin < resp;
      for (int64_t c = begin; c < end; ++c) {
        const bool keep = !scored_rows || c < resp;
        at(full, b, S + c - begin) = keep;
        at(slid, b, S + c - begin) = keep;
      }
    }
    blk.key_valid[static_cast<size_t>(model::AttnKind::kFull)] = full;
    blk.key_valid[static_cast<size_t>(model::AttnKind::kSliding)] = slid;
    blocks.push_back(std::move(blk));
  }
  return blocks;
}

}  // namespace g4::diffusion

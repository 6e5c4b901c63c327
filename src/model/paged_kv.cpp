#include "model/paged_kv.h"

namespace g4::model {

namespace {
AttnKind own_kind(const io::ModelConfig& cfg, int64_t l) {
  return cfg.layers[static_cast<size_t>(l)].sliding && cfg.sliding_window > 0 ? AttnKind::kSliding : AttnKind::kFull;
}
}  // namespace

AttnKind layer_kind(const io::ModelConfig& cfg, int64_t l) {
  const io::LayerSpec& ls = cfg.layers[static_cast<size_t>(l)];
  const AttnKind kind = own_kind(cfg, l);
  // A full layer reading a sliding layer's pages would miss the keys given back.
  if (ls.kv_shared)
    G4_CHECK(own_kind(cfg, ls.kv_source) == kind, "paged KV: KV-shared layer ", l, " and its source layer ",
             ls.kv_source, " are of different attention kinds");
  return kind;
}

int64_t page_bytes(const io::ModelConfig& cfg, DType dtype, AttnKind kind, int64_t page_size) {
  int64_t elems = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const io::LayerSpec& ls = cfg.layers[static_cast<size_t>(l)];
    if (!ls.kv_shared && layer_kind(cfg, l) == kind) elems += 2 * page_size * ls.num_kv_heads * ls.head_dim;
  }
  return elems * static_cast<int64_t>(dtype_size(dtype));
}

PagedKV allocate_paged_kv(const io::ModelConfig& cfg, DType dtype, Device device, std::array<int64_t, kAttnKinds> pages,
                          int64_t page_size) {
  G4_CHECK(page_size > 0, "paged KV: page_size must be > 0, got ", page_size);
  PagedKV kv;
  kv.page_size = page_size;
  kv.k.resize(static_cast<size_t>(cfg.num_layers));
  kv.v.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const io::LayerSpec& ls = cfg.layers[static_cast<size_t>(l)];
    const int64_t kind = static_cast<int64_t>(layer_kind(cfg, l));
    if (ls.kv_shared) continue;
    kv.pages[static_cast<size_t>(kind)] = pages[static_cast<size_t>(kind)];
    const Shape shape{pages[static_cast<size_t>(kind)], page_size, ls.num_kv_heads, ls.head_dim};
    kv.k[static_cast<size_t>(l)] = Tensor::empty(shape, dtype, device);
    kv.v[static_cast<size_t>(l)] = Tensor::empty(shape, dtype, device);
  }
  return kv;
}

void PagedKV::copy_page(AttnKind kind, int64_t src, int64_t dst, const io::ModelConfig& cfg) {
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    if (!k[static_cast<size_t>(l)].defined() || layer_kind(cfg, l) != kind) continue;
    for (Tensor* pool : {&k[static_cast<size_t>(l)], &v[static_cast<size_t>(l)]}) {
      Tensor to = pool->slice0(dst, 1);
      to.copy_from(pool->slice0(src, 1));
    }
  }
}

}  // namespace g4::model

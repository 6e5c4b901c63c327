// Gemma 4 config.json -> ModelConfig, following transformers 5.17's Gemma4TextConfig: which key
// wins, which default applies, and how the per-layer table (head dims, KV heads, KV sharing,
// MLP widths, RoPE) is derived. Anything g4 does not implement is an error, never ignored.
#include "io/hf_config.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/log.h"
#include "io/json_input.h"

namespace g4::io {

using nlohmann::json;

namespace {

constexpr const char* kSliding = "sliding_attention";
constexpr const char* kFull = "full_attention";
// Bounds far above any real model (Gemma 4 has at most 60 layers, widths below 2^19), so that
// building the layer table and multiplying widths (int64) can never run away or overflow.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxWidth = (int64_t(1) << 31) - 1;

// Typed, null-aware access to one JSON object of a config. `prefix` is the path of that object
// ("text_config." in nested configs), so every error names the key as it appears in the file.
class Fields {
 public:
  // `seen` (optional) collects the name of every key looked up, present or not.
  Fields(const json& j, std::string source, std::string prefix, std::set<std::string>* seen = nullptr)
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)), seen_(seen) {}

  // transformers treats an explicit null like an absent key: the default applies.
  const json* find(const std::string& key) const {
    if (seen_) seen_->insert(key);
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const std::string& key) const { return find(key) != nullptr; }
  std::string name(const std::string& key) const { return prefix_ + key; }

  template <class... Args>
  [[noreturn]] void fail(const std::string& key, const Args&... args) const {
    G4_FAIL("config ", source_, ": key '", name(key), "' ", args...);
  }

  int64_t to_int(const json& v, const std::string& key) const {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
      fail(key, "is ", v.dump(), ", more than the largest integer g4 takes (", INT64_MAX, ")");
    if (v.is_number_integer()) return v.get<int64_t>();
    // Python writes ints, but a hand-edited file may say 64.0; accept integral floats only, and
    // only where a double holds every integer exactly (a cast of 1e300 would be undefined).
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) < 9.0e15)
      return static_cast<int64_t>(v.get<double>());
    fail(key, "must be an integer, got ", v.dump());
  }
  int64_t req_int(const std::string& key) const {
    const json* v = find(key);
    if (!v) fail(key, "is missing (required)");
    return to_int(*v, key);
  }
  int64_t opt_int(const std::string& key, int64_t def) const {
    const json* v = find(key);
    return v ? to_int(*v, key) : def;
  }
  double opt_double(const std::string& key, double def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_number()) fail(key, "must be a number, got ", v->dump());
    return v->get<double>();
  }
  bool opt_bool(const std::string& key, bool def) const {
    const json* v = find(key);
    if (!v) return def;
    if (!v->is_boolean()) fail(key, "must be true or false, got ", v->dump());
    return v->get<bool>();
  }
  std::optional<std::string> opt_string(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(key, "must be a string, got ", v->dump());
    return v->get<std::string>();
  }
  // An int or a list of ints (token ids, per-layer sizes); null/absent gives an empty list.
  std::vector<int64_t> int_or_list(const std::string& key) const {
    const json* v = find(key);
    if (!v) return {};
    if (!v->is_array()) return {to_int(*v, key)};
    std::vector<int64_t> out;
    for (const json& e : *v) out.push_back(to_int(e, key));
    return out;
  }

  const json& j() const { return j_; }
  const std::string& source() const { return source_; }
  const std::string& prefix() const { return prefix_; }

 private:
  const json& j_;
  std::string source_, prefix_;
  std::set<std::string>* seen_;
};

// One entry of rope_parameters: {"rope_type", "rope_theta", "partial_rotary_factor", "factor"}.
RopeSpec parse_rope(const Fields& f, const std::string& layer_type, double default_theta) {
  const std::string key = "rope_parameters." + layer_type;
  const json& v = f.j()["rope_parameters"];
  if (!v.contains(layer_type) || v[layer_type].is_null()) f.fail(key, "is missing (", layer_type, " layers exist)");
  if (!v[layer_type].is_object()) f.fail(key, "must be an object, got ", v[layer_type].dump());
  Fields r(v[layer_type], f.source(), f.name(key) + ".");
  RopeSpec s;
  // "type" is the pre-5.x spelling of "rope_type".
  s.type = r.opt_string("rope_type").value_or(r.opt_string("type").value_or("default"));
  s.theta = r.opt_double("rope_theta", default_theta);
  s.partial_rotary_factor = r.opt_double("partial_rotary_factor", 1.0);
  s.factor = r.opt_double("factor", 1.0);
  if (s.type != "default" && s.type != "proportional" && s.type != "linear")
    r.fail("rope_type", "is '", s.type, "': unsupported rope_type (g4 supports default, proportional, linear)");
  if (s.type == "default") s.factor = 1.0;  // transformers' default rope ignores `factor`
  if (!(s.theta > 0)) r.fail("rope_theta", "must be positive, got ", s.theta);
  if (!(s.partial_rotary_factor > 0 && s.partial_rotary_factor <= 1))
    r.fail("partial_rotary_factor", "must be in (0, 1], got ", s.partial_rotary_factor);
  if (!(s.factor > 0)) r.fail("factor", "must be positive, got ", s.factor);
  return s;
}

void parse_rope_specs(const Fields& f, ModelConfig& c, bool has_sliding, bool has_full) {
  if (f.has("rope_parameters")) {
    if (!f.j()["rope_parameters"].is_object()) f.fail("rope_parameters", "must be an object");
    if (has_sliding) c.rope_sliding = parse_rope(f, kSliding, 10000.0);
    if (has_full) c.rope_full = parse_rope(f, kFull, 1000000.0);
    return;
  }
  // Older configs: one theta per attention kind, proportional RoPE implied on full layers.
  if (f.has("rope_scaling")) f.fail("rope_scaling", "is not supported (unsupported rope_type); use rope_parameters");
  c.rope_sliding = {"default", f.opt_double("rope_local_base_freq", 10000.0), 1.0, 1.0};
  c.rope_full = {"proportional", f.opt_double("rope_theta", 1000000.0), f.opt_double("partial_rotary_factor", 0.25),
                 1.0};
  if (!(c.rope_sliding.theta > 0)) f.fail("rope_local_base_freq", "must be positive");
  if (!(c.rope_full.theta > 0)) f.fail("rope_theta", "must be positive");
  const double prf = c.rope_full.partial_rotary_factor;
  if (!(prf > 0 && prf <= 1)) f.fail("partial_rotary_factor", "must be in (0, 1], got ", prf);
}

std::vector<std::string> parse_layer_types(const Fields& f, int64_t num_layers) {
  std::vector<std::string> types;
  if (const json* v = f.find("layer_types")) {
    if (!v->is_array()) f.fail("layer_types", "must be a list");
    for (const json& t : *v) {
      if (!t.is_string()) f.fail("layer_types", "has a non-string entry ", t.dump());
      types.push_back(t.get<std::string>());
    }
    return types;  // checked (length, values) by resolve
  }
  if (!f.has("sliding_window_pattern")) f.fail("layer_types", "is missing and there is no sliding_window_pattern");
  const int64_t pattern = f.req_int("sliding_window_pattern");
  if (pattern <= 0) f.fail("sliding_window_pattern", "must be positive, got ", pattern);
  for (int64_t i = 0; i < num_layers; ++i) types.push_back((i + 1) % pattern == 0 ? kFull : kSliding);
  if (num_layers > 0) types.back() = kFull;  // the last layer is always global
  return types;
}

// The value the scalar fields give, before any per_layer_config entry.
int64_t default_head_dim(const ModelConfig& c, bool sliding) {
  return !sliding && c.global_head_dim > 0 ? c.global_head_dim : c.head_dim;
}
int64_t default_kv_heads(const ModelConfig& c, bool sliding) {
  if (!sliding && c.attention_k_eq_v && c.num_global_kv_heads > 0) return c.num_global_kv_heads;
  return c.num_kv_heads;
}

// per_layer_config = {"<layer>": {"head_dim": d, "num_key_value_heads": n}}, fields optional.
// Entries are kept only where they change the result, so that the per_layer_config dialect and
// the global_head_dim dialect give equal ModelConfigs.
void parse_layer_overrides(const Fields& f, ModelConfig& c) {
  const json* v = f.find("per_layer_config");
  if (!v) return;
  if (!v->is_object()) f.fail("per_layer_config", "must be an object keyed by layer index");
  for (const auto& [key, entry] : v->items()) {
    const std::string k = "per_layer_config." + key;
    int64_t layer = -1;
    try {
      size_t used = 0;
      layer = std::stoll(key, &used);
      if (used != key.size()) layer = -1;
    } catch (const std::exception&) {
    }
    if (layer < 0 || layer >= c.num_layers) f.fail(k, "is not a layer index in [0, ", c.num_layers, ")");
    if (!entry.is_object()) f.fail(k, "must be an object");
    Fields e(entry, f.source(), f.name(k) + ".");
    for (const auto& field : entry.items())
      if (field.key() != "head_dim" && field.key() != "num_key_value_heads")
        e.fail(field.key(), "is not supported in per_layer_config (only head_dim, num_key_value_heads)");

    const bool sliding = c.layer_types[layer] == kSliding;
    LayerOverride o;
    if (e.has("head_dim")) {
      const int64_t d = e.req_int("head_dim");
      if (d <= 0) e.fail("head_dim", "must be positive, got ", d);
      if (d > kMaxWidth) e.fail("head_dim", "is ", d, ", more than g4 supports (", kMaxWidth, ")");
      if (!sliding && d != default_head_dim(c, false)) o.head_dim = d;
      // transformers sizes sliding layers from head_dim alone; say so rather than surprise.
      if (sliding && d != c.head_dim)
        G4_LOG("config ", f.source(), ": ", e.name("head_dim"), " = ", d, " on a sliding layer is ignored (head_dim ",
               c.head_dim, " applies)");
    }
    if (e.has("num_key_value_heads")) {
      const int64_t n = e.req_int("num_key_value_heads");
      if (n <= 0) e.fail("num_key_value_heads", "must be positive, got ", n);
      if (n > kMaxWidth) e.fail("num_key_value_heads", "is ", n, ", more than g4 supports (", kMaxWidth, ")");
      if (n != default_kv_heads(c, sliding)) o.num_kv_heads = n;
    }
    if (o.head_dim != 0 || o.num_kv_heads != 0) c.layer_overrides[layer] = o;
  }
}

void resolve_impl(ModelConfig& c, const std::string& source, const std::string& prefix) {
  auto fail = [&](const std::string& key, const auto&... args) {
    G4_FAIL("config ", source, ": key '", prefix, key, "' ", args...);
  };
  auto at_most = [&](const char* key, int64_t v, int64_t limit) {
    if (v > limit) fail(key, "is ", v, ", more than g4 supports (", limit, ")");
  };
  auto positive = [&](const char* key, int64_t v) {
    if (v <= 0) fail(key, "must be positive, got ", v);
    at_most(key, v, key == std::string_view("num_hidden_layers") ? kMaxLayers : kMaxWidth);
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("num_hidden_layers", c.num_layers);
  positive("num_attention_heads", c.num_heads);
  positive("num_key_value_heads", c.num_kv_heads);
  positive("head_dim", c.head_dim);
  if (c.global_head_dim < 0) fail("global_head_dim", "must be positive, got ", c.global_head_dim);
  if (c.num_global_kv_heads < 0) fail("num_global_key_value_heads", "must be positive, got ", c.num_global_kv_heads);
  if (c.hidden_size_per_layer_input < 0)
    fail("hidden_size_per_layer_input", "must not be negative, got ", c.hidden_size_per_layer_input);
  for (auto [key, v] : {std::pair{"global_head_dim", c.global_head_dim},
                        std::pair{"num_global_key_value_heads", c.num_global_kv_heads},
                        std::pair{"hidden_size_per_layer_input", c.hidden_size_per_layer_input},
                        std::pair{"vocab_size_per_layer_input", c.vocab_size_per_layer_input},
                        std::pair{"num_experts", c.num_experts}, std::pair{"top_k_experts", c.top_k_experts},
                        std::pair{"moe_intermediate_size", c.moe_intermediate_size},
                        std::pair{"sliding_window", c.sliding_window}})
    at_most(key, v, kMaxWidth);
  if (c.hidden_size_per_layer_input > 0) positive("vocab_size_per_layer_input", c.vocab_size_per_layer_input);
  // 0 is "not given" (no context check); a negative one would silently turn that check off too.
  if (c.max_position_embeddings < 0)
    fail("max_position_embeddings", "must be positive, got ", c.max_position_embeddings);
  if (!(c.rms_norm_eps > 0)) fail("rms_norm_eps", "must be positive, got ", c.rms_norm_eps);
  if (c.final_logit_softcapping && !(*c.final_logit_softcapping > 0))
    fail("final_logit_softcapping", "must be positive or null, got ", *c.final_logit_softcapping);
  if (!c.bidirectional.empty() && c.bidirectional != "vision" && c.bidirectional != "all")
    fail("use_bidirectional_attention", "is '", c.bidirectional, "': expected null, \"vision\" or \"all\"");

  const int64_t L = c.num_layers;
  if (static_cast<int64_t>(c.layer_types.size()) != L)
    fail("layer_types", "has ", c.layer_types.size(), " entries but num_hidden_layers is ", L);
  bool any_sliding = false;
  for (const std::string& t : c.layer_types) {
    if (t != kSliding && t != kFull)
      fail("layer_types", "has unsupported layer type '", t, "' (expected sliding_attention or full_attention)");
    any_sliding |= t == kSliding;
  }
  if (any_sliding) positive("sliding_window", c.sliding_window);

  if (c.intermediate_sizes.empty()) {
    positive("intermediate_size", c.intermediate_size);
  } else {
    if (static_cast<int64_t>(c.intermediate_sizes.size()) != L)
      fail("intermediate_size", "lists ", c.intermediate_sizes.size(), " sizes but num_hidden_layers is ", L);
    for (int64_t v : c.intermediate_sizes) positive("intermediate_size", v);
  }

  if (c.num_kv_shared_layers < 0 || c.num_kv_shared_layers > L)
    fail("num_kv_shared_layers", "must be in [0, ", L, "], got ", c.num_kv_shared_layers);

  if (c.enable_moe_block) {
    for (auto [key, v] : {std::pair{"num_experts", c.num_experts}, std::pair{"top_k_experts", c.top_k_experts},
                          std::pair{"moe_intermediate_size", c.moe_intermediate_size}})
      if (v <= 0)
        fail(key, "must be positive when enable_moe_block is true, got ", v == 0 ? "null/0" : std::to_string(v));
    if (c.top_k_experts > c.num_experts)
      fail("top_k_experts", "is ", c.top_k_experts, ", more than num_experts (", c.num_experts, ")");
  }
  for (const auto& [l, o] : c.layer_overrides)
    if (l < 0 || l >= L) fail("per_layer_config", "names layer ", l, ", outside [0, ", L, ")");

  const int64_t first = c.first_kv_shared_layer();
  c.layers.assign(static_cast<size_t>(L), LayerSpec{});
  for (int64_t l = 0; l < L; ++l) {
    LayerSpec& s = c.layers[static_cast<size_t>(l)];
    s.sliding = c.layer_types[static_cast<size_t>(l)] == kSliding;
    auto ov = c.layer_overrides.find(l);
    const LayerOverride o = ov == c.layer_overrides.end() ? LayerOverride{} : ov->second;
    s.head_dim = o.head_dim > 0 && !s.sliding ? o.head_dim : default_head_dim(c, s.sliding);
    s.num_kv_heads = o.num_kv_heads > 0 ? o.num_kv_heads : default_kv_heads(c, s.sliding);
    if (c.num_heads % s.num_kv_heads != 0)
      fail("num_attention_heads", "(", c.num_heads, ") is not divisible by the ", s.num_kv_heads,
           " key/value heads of layer ", l);
    s.k_eq_v = c.attention_k_eq_v && !s.sliding;
    s.kv_shared = l >= first;
    if (s.kv_shared) {
      for (int64_t src = first - 1; src >= 0 && s.kv_source < 0; --src)
        if (c.layer_types[static_cast<size_t>(src)] == c.layer_types[static_cast<size_t>(l)]) s.kv_source = src;
      if (s.kv_source < 0)
        fail("num_kv_shared_layers", "makes layer ", l, " share K/V, but no earlier layer has type ",
             c.layer_types[static_cast<size_t>(l)]);
      const LayerSpec& src = c.layers[static_cast<size_t>(s.kv_source)];
      if (src.head_dim != s.head_dim || src.num_kv_heads != s.num_kv_heads)
        fail("per_layer_config", "gives layer ", l, " K/V of ", s.num_kv_heads, "x", s.head_dim,
             " but it shares K/V with layer ", s.kv_source, " (", src.num_kv_heads, "x", src.head_dim, ")");
    }
    s.intermediate = c.intermediate_sizes.empty() ? c.intermediate_size : c.intermediate_sizes[static_cast<size_t>(l)];
    if (c.use_double_wide_mlp && s.kv_shared && first > 0) s.intermediate *= 2;
    s.moe = c.enable_moe_block;
    s.rope = s.sliding ? c.rope_sliding : c.rope_full;
  }
}

// DiffusionGemmaTextConfig fixes what Gemma4TextConfig leaves to keys (DIFFUSION.md §A): every
// layer has the routed experts, full layers take their values from k_proj (no v_proj) with
// num_global_key_value_heads heads, full layers' head dim defaults to 512, the softcap to 30, and
// there are no per-layer inputs and no KV sharing. Keys that would say otherwise are refused.
// Gemma4VisionConfig as transformers 5.17 reads it; anything g4's tower would compute differently
// is refused.
VisionConfig parse_vision_config(const Fields& top) {
  if (!top.j()["vision_config"].is_object()) top.fail("vision_config", "must be an object");
  const Fields v(top.j()["vision_config"], top.source(), "vision_config.");
  VisionConfig c;
  const std::string type = v.opt_string("model_type").value_or("gemma4_vision");
  if (type != "gemma4_vision") v.fail("model_type", "is '", type, "': not a gemma4_vision config");
  const std::string act = v.opt_string("hidden_activation").value_or("gelu_pytorch_tanh");
  if (act != "gelu_pytorch_tanh") v.fail("hidden_activation", "is '", act, "': only gelu_pytorch_tanh is supported");
  if (v.opt_bool("attention_bias", false)) v.fail("attention_bias", "is true: attention biases are not supported");
  c.hidden_size = v.opt_int("hidden_size", c.hidden_size);
  c.intermediate_size = v.opt_int("intermediate_size", c.intermediate_size);
  c.num_layers = v.opt_int("num_hidden_layers", c.num_layers);
  c.num_heads = v.opt_int("num_attention_heads", c.num_heads);
  c.head_dim = v.opt_int("head_dim", c.head_dim);
  c.patch_size = v.opt_int("patch_size", c.patch_size);
  c.pooling_kernel_size = v.opt_int("pooling_kernel_size", c.pooling_kernel_size);
  c.position_embedding_size = v.opt_int("position_embedding_size", c.position_embedding_size);
  c.rms_norm_eps = v.opt_double("rms_norm_eps", c.rms_norm_eps);
  c.use_clipped_linears = v.opt_bool("use_clipped_linears", false);
  c.standardize = v.opt_bool("standardize", false);
  const int64_t kv = v.opt_int("num_key_value_heads", c.num_heads);
  if (kv != c.num_heads)
    v.fail("num_key_value_heads", "is ", kv, " but num_attention_heads is ", c.num_heads,
           ": the vision tower has no grouped KV heads");
  if (v.has("rope_parameters")) {
    if (!v.j()["rope_parameters"].is_object()) v.fail("rope_parameters", "must be an object");
    const Fields r(v.j()["rope_parameters"], top.source(), "vision_config.rope_parameters.");
    // transformers rewrites "default" to "axial" (RotaryEmbeddingConfigMixin.standardize_rope_params).
    const std::string rt = r.opt_string("rope_type").value_or("axial");
    if (rt != "axial" && rt != "default") r.fail("rope_type", "is '", rt, "': the vision tower uses axial 2-D RoPE");
    c.rope_theta = r.opt_double("rope_theta", c.rope_theta);
  }
  const std::pair<const char*, int64_t> sizes[] = {{"hidden_size", c.hidden_size},
                                                   {"intermediate_size", c.intermediate_size},
                                                   {"num_hidden_layers", c.num_layers},
                                                   {"num_attention_heads", c.num_heads},
                                                   {"head_dim", c.head_dim},
                                                   {"patch_size", c.patch_size},
                                                   {"pooling_kernel_size", c.pooling_kernel_size},
                                                   {"position_embedding_size", c.position_embedding_size}};
  for (const auto& [key, value] : sizes)
    if (value <= 0 || value > kMaxWidth) v.fail(key, "must be in [1, ", kMaxWidth, "], got ", value);
  // 2-D RoPE splits each head into an x and a y half, each rotated pairwise.
  if (c.head_dim % 4 != 0) v.fail("head_dim", "is ", c.head_dim, ": 2-D RoPE needs a multiple of 4");
  if (!(c.rope_theta > 0)) v.fail("rope_parameters.rope_theta", "must be positive, got ", c.rope_theta);
  c.image_token_id = top.opt_int("image_token_id", c.image_token_id);
  c.video_token_id = top.opt_int("video_token_id", c.video_token_id);
  return c;
}

void parse_diffusion_fields(const Fields& top, const Fields& f, ModelConfig& c) {
  c.canvas_length = top.opt_int("canvas_length", 256);
  if (c.canvas_length <= 0 || c.canvas_length > kMaxWidth)
    top.fail("canvas_length", "must be in [1, ", kMaxWidth, "], got ", c.canvas_length);
  c.image_token_id = top.opt_int("image_token_id", 258880);
  if (!top.opt_bool("tie_word_embeddings", true) || !f.opt_bool("tie_word_embeddings", true))
    top.fail("tie_word_embeddings", "is false: a diffusion_gemma model shares its embedding, encoder and decoder "
             "(NeMo Automodel refuses untied ones too)");
  if (!f.opt_bool("attention_k_eq_v", true))
    f.fail("attention_k_eq_v", "is false: diffusion_gemma's full-attention layers have no v_proj");
  c.attention_k_eq_v = true;
  c.enable_moe_block = true;
  for (const char* key : {"num_experts", "top_k_experts", "moe_intermediate_size"})
    if (!f.has(key)) f.fail(key, "is missing: every diffusion_gemma layer has routed experts");
  if (c.hidden_size_per_layer_input != 0)
    f.fail("hidden_size_per_layer_input", "is ", c.hidden_size_per_layer_input,
           ": diffusion_gemma has no per-layer inputs");
  if (c.num_kv_shared_layers != 0)
    f.fail("num_kv_shared_layers", "is ", c.num_kv_shared_layers, ": diffusion_gemma shares no K/V between layers");
  if (c.bidirectional == "all")
    f.fail("use_bidirectional_attention", "is \"all\": a bidirectional encoder is not supported (nor by Automodel)");
  // DiffusionGemmaTextConfig.__post_init__ pops global_head_dim (default 512) and
  // num_global_key_value_heads and turns them into per_layer_config entries for the full layers,
  // but only when the file has no per_layer_config key at all. With one (even null) it drops the two
  // keys, and full layers without an entry keep head_dim / num_key_value_heads. (DIFFUSION.md §A.2
  // reads as if global_head_dim still applied beside per_layer_config; transformers' code wins.)
  // The kv-head override is gated on getattr(self, "attention_k_eq_v", True), read before any
  // extra key is set, so it always applies; a false attention_k_eq_v is refused above.
  if (f.j().contains("per_layer_config")) {
    for (const char* key : {"global_head_dim", "num_global_key_value_heads"})
      if (f.has(key))
        G4_LOG("config ", f.source(), ": ", f.name(key),
               " is ignored: per_layer_config gives the full layers' shapes (as in transformers)");
    c.global_head_dim = 0;
    c.num_global_kv_heads = 0;
  } else if (!f.has("global_head_dim")) {
    c.global_head_dim = 512;
  }
  if (!c.final_logit_softcapping) c.final_logit_softcapping = 30.0;  // a class attribute, absent from the file at 30
}

AudioConfig parse_audio_config(const Fields& f) {
  AudioConfig a;
  a.hidden_size = f.opt_int("hidden_size", a.hidden_size);
  a.num_layers = f.opt_int("num_hidden_layers", a.num_layers);
  a.num_heads = f.opt_int("num_attention_heads", a.num_heads);
  const std::vector<int64_t> ch = f.int_or_list("subsampling_conv_channels");
  if (!ch.empty() && ch.size() != 2) f.fail("subsampling_conv_channels", "must list 2 channel counts");
  if (!ch.empty()) a.conv_channels0 = ch[0], a.conv_channels1 = ch[1];
  a.conv_kernel_size = f.opt_int("conv_kernel_size", a.conv_kernel_size);
  a.chunk_size = f.opt_int("attention_chunk_size", a.chunk_size);
  a.context_left = f.opt_int("attention_context_left", a.context_left);
  a.logit_cap = f.opt_double("attention_logit_cap", a.logit_cap);
  a.invalid_logit = f.opt_double("attention_invalid_logits_value", a.invalid_logit);
  a.residual_weight = f.opt_double("residual_weight", a.residual_weight);
  a.rms_norm_eps = f.opt_double("rms_norm_eps", a.rms_norm_eps);
  a.gradient_clipping = f.opt_double("gradient_clipping", a.gradient_clipping);
  a.use_clipped_linears = f.opt_bool("use_clipped_linears", a.use_clipped_linears);
  a.output_proj_dims = f.opt_int("output_proj_dims", a.output_proj_dims);
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"hidden_size", a.hidden_size}, {"num_hidden_layers", a.num_layers},
                               {"num_attention_heads", a.num_heads}, {"conv_kernel_size", a.conv_kernel_size},
                               {"attention_chunk_size", a.chunk_size}, {"attention_context_left", a.context_left},
                               {"output_proj_dims", a.output_proj_dims}, {"subsampling_conv_channels", a.conv_channels1}})
    if (v < 1 || v > kMaxWidth) f.fail(key, "is ", v, ": must be between 1 and ", kMaxWidth);
  if (a.hidden_size % a.num_heads != 0)
    f.fail("hidden_size", "is ", a.hidden_size, ": not a multiple of num_attention_heads (", a.num_heads, ")");
  // The subsampler's projection input is (channels[0] / 4) * channels[1], which is the reduced mel
  // count times channels[1] only when channels[0] equals the 128 mel bins.
  if (a.conv_channels0 != 128)
    f.fail("subsampling_conv_channels", "starts with ", a.conv_channels0, ": must equal the 128 mel bins");
  if (f.opt_int("attention_context_right", 0) != 0) f.fail("attention_context_right", "must be 0 (g4's audio attention is causal)");
  if (f.opt_string("hidden_act").value_or("silu") != "silu") f.fail("hidden_act", "must be silu");
  if (!(a.logit_cap > 0)) f.fail("attention_logit_cap", "must be positive");
  return a;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& source, std::set<std::string>* text_keys_read) {
  G4_CHECK(j.is_object(), "config ", source, " is not a JSON object");
  ModelConfig c;
  c.raw = j;
  const Fields top(j, source, "", text_keys_read);
  const std::string model_type = top.opt_string("model_type").value_or("");
  const json* text = &j;
  std::string prefix;
  if (model_type == "gemma4" || model_type == "diffusion_gemma") {
    if (!top.has("text_config") || !j["text_config"].is_object())
      top.fail("text_config", "is missing: a ", model_type, " config nests the text decoder config there");
    c.conditional = model_type == "gemma4";
    c.diffusion = model_type == "diffusion_gemma";
    text = &j["text_config"];
    prefix = "text_config.";
    c.has_vision = top.has("vision_config");
    c.has_audio = top.has("audio_config");
    if (c.has_audio) {
      if (!j["audio_config"].is_object()) top.fail("audio_config", "must be an object");
      c.audio = parse_audio_config(Fields(j["audio_config"], source, "audio_config."));
    }
    if (c.conditional && c.has_vision) c.vision = parse_vision_config(top);
    if (c.conditional && c.has_audio) c.audio_token_id = top.opt_int("audio_token_id", c.audio_token_id);
  } else if (model_type != "gemma4_text") {
    G4_FAIL("config ", source, ": not a Gemma 4 config (model_type '", model_type,
            "'; expected gemma4, gemma4_text or diffusion_gemma)");
  }
  if (text != &j && text_keys_read) text_keys_read->clear();  // the top level is not the text config
  const Fields f(*text, source, prefix, text_keys_read);
  if (text != &j) {
    const std::string want = c.diffusion ? "diffusion_gemma_text" : "gemma4_text";
    const std::string inner = f.opt_string("model_type").value_or(want);
    if (inner != want) f.fail("model_type", "is '", inner, "': not a ", want, " config");
  }

  c.architecture = c.diffusion     ? "DiffusionGemmaForBlockDiffusion"
                   : c.conditional ? "Gemma4ForConditionalGeneration"
                                   : "Gemma4ForCausalLM";
  if (const json* a = top.find("architectures")) {
    if (!a->is_array() || (!a->empty() && !(*a)[0].is_string()))
      top.fail("architectures", "must be a list of class names");
    if (!a->empty()) c.architecture = (*a)[0].get<std::string>();
  }

  // Features g4 does not implement: refuse rather than compute something else.
  std::string act = "gelu_pytorch_tanh";  // the Gemma 4 default
  if (auto a = f.opt_string("hidden_activation"))
    act = *a;
  else if (auto b = f.opt_string("hidden_act"))
    act = *b;
  if (act != "gelu_pytorch_tanh")
    f.fail(f.has("hidden_activation") ? "hidden_activation" : "hidden_act", "is '", act,
           "': only gelu_pytorch_tanh is supported");
  if (f.opt_bool("attention_bias", false)) f.fail("attention_bias", "is true: attention biases are not supported");

  c.vocab_size = f.req_int("vocab_size");
  c.hidden_size = f.req_int("hidden_size");
  c.num_layers = f.req_int("num_hidden_layers");
  c.num_heads = f.req_int("num_attention_heads");
  c.num_kv_heads = f.req_int("num_key_value_heads");
  c.head_dim = f.req_int("head_dim");
  if (!f.has("intermediate_size")) f.fail("intermediate_size", "is missing (required)");
  if (f.find("intermediate_size")->is_array()) {
    c.intermediate_sizes = f.int_or_list("intermediate_size");
    c.intermediate_size = c.intermediate_sizes.empty() ? 0 : c.intermediate_sizes[0];
  } else {
    c.intermediate_size = f.req_int("intermediate_size");
  }
  c.global_head_dim = f.opt_int("global_head_dim", 0);
  c.num_global_kv_heads = f.opt_int("num_global_key_value_heads", 0);
  c.hidden_size_per_layer_input = f.opt_int("hidden_size_per_layer_input", 0);
  c.vocab_size_per_layer_input = f.opt_int("vocab_size_per_layer_input", c.vocab_size);
  c.num_kv_shared_layers = f.opt_int("num_kv_shared_layers", 0);
  c.use_double_wide_mlp = f.opt_bool("use_double_wide_mlp", false);
  c.attention_k_eq_v = f.opt_bool("attention_k_eq_v", false);
  c.enable_moe_block = f.opt_bool("enable_moe_block", false);
  c.num_experts = f.opt_int("num_experts", 0);
  c.top_k_experts = f.opt_int("top_k_experts", 0);
  c.moe_intermediate_size = f.opt_int("moe_intermediate_size", 0);
  c.sliding_window = f.opt_int("sliding_window", 0);
  c.rms_norm_eps = f.opt_double("rms_norm_eps", 1e-6);
  if (f.has("final_logit_softcapping")) c.final_logit_softcapping = f.opt_double("final_logit_softcapping", 0);
  // Gemma4ForConditionalGeneration ties lm_head by the top-level flag alone (default true):
  // transformers ignores text_config.tie_word_embeddings there, so a config whose two flags differ
  // must follow the top one (else g4 asks for an lm_head the checkpoint lacks, or ignores the one it
  // has). A diffusion config requires both true (above); a text config has only its own.
  c.tie_word_embeddings = c.conditional ? top.opt_bool("tie_word_embeddings", true)
                                        : f.opt_bool("tie_word_embeddings", top.opt_bool("tie_word_embeddings", true));
  if (const json* b = f.find("use_bidirectional_attention")) {
    if (b->is_boolean() && !b->get<bool>()) {
      // false: the Gemma 3 spelling of "off".
    } else if (b->is_string()) {
      c.bidirectional = b->get<std::string>();
    } else {
      f.fail("use_bidirectional_attention", "is ", b->dump(), ": expected null, \"vision\" or \"all\"");
    }
  }
  c.pad_token_id = f.opt_int("pad_token_id", c.pad_token_id);
  c.bos_token_id = f.opt_int("bos_token_id", c.bos_token_id);
  c.eos_token_ids = f.int_or_list("eos_token_id");
  c.max_position_embeddings = f.opt_int("max_position_embeddings", 0);

  if (c.diffusion) parse_diffusion_fields(top, f, c);

  if (c.num_layers <= 0) f.fail("num_hidden_layers", "must be positive, got ", c.num_layers);
  // Checked before the layer table is built from it (sliding_window_pattern makes one per layer).
  if (c.num_layers > kMaxLayers)
    f.fail("num_hidden_layers", "is ", c.num_layers, ", more than g4 supports (", kMaxLayers, ")");
  c.layer_types = parse_layer_types(f, c.num_layers);
  if (static_cast<int64_t>(c.layer_types.size()) != c.num_layers)
    f.fail("layer_types", "has ", c.layer_types.size(), " entries but num_hidden_layers is ", c.num_layers);
  bool has_sliding = false, has_full = false;
  for (const std::string& t : c.layer_types) {
    has_sliding |= t == kSliding;
    has_full |= t == kFull;
  }
  parse_rope_specs(f, c, has_sliding, has_full);
  parse_layer_overrides(f, c);
  resolve_impl(c, source, prefix);
  return c;
}

ModelConfig load_model_config(const std::string& config_json_path) {
  std::string path = config_json_path;
  if (std::filesystem::is_directory(path)) path = (std::filesystem::path(path) / "config.json").string();
  return parse_model_config(read_json_file(path, "config", kMaxConfigBytes), path);
}

void resolve_layers(ModelConfig& c, const std::string& source) {
  resolve_impl(c, source, "");
}

namespace {
json rope_to_json(const RopeSpec& r) {
  json j = {{"rope_type", r.type}, {"rope_theta", r.theta}};
  if (r.partial_rotary_factor != 1.0) j["partial_rotary_factor"] = r.partial_rotary_factor;
  if (r.factor != 1.0) j["factor"] = r.factor;
  return j;
}
json int_or_null(int64_t v) {
  return v > 0 ? json(v) : json(nullptr);
}

// The smallest gemma4_vision config (the fixtures' tower). transformers 5.17 cannot build a
// DiffusionGemmaForBlockDiffusion without a vision_config, so a diffusion config g4 writes from
// scratch carries this one: transformers then initialises that tiny tower at random (and says
// so), which text never reaches.
json stub_vision_config() {
  return {{"model_type", "gemma4_vision"},
          {"hidden_size", 8},
          {"intermediate_size", 8},
          {"num_hidden_layers", 1},
          {"num_attention_heads", 1},
          {"num_key_value_heads", 1},
          {"head_dim", 8},
          {"patch_size", 2},
          {"pooling_kernel_size", 1},
          {"position_embedding_size", 4},
          {"rope_parameters", {{"rope_type", "axial"}, {"rope_theta", 100.0}}},
          {"standardize", false},
          {"use_clipped_linears", false}};
}

// DiffusionGemmaConfig around a text config t written for Gemma 4: DiffusionGemmaTextConfig has
// none of Gemma 4's switches (every layer is MoE with K=V full layers, no per-layer inputs, no KV
// sharing), and per_layer_config already gives the full layers' shapes.
json diffusion_config_json(const ModelConfig& c, json t) {
  t["model_type"] = "diffusion_gemma_text";
  for (const char* key :
       {"global_head_dim", "num_global_key_value_heads", "hidden_size_per_layer_input", "vocab_size_per_layer_input",
        "num_kv_shared_layers", "use_double_wide_mlp", "attention_k_eq_v", "enable_moe_block"})
    t.erase(key);
  return {{"architectures", {c.architecture.empty() ? "DiffusionGemmaForBlockDiffusion" : c.architecture}},
          {"model_type", "diffusion_gemma"},
          {"text_config", t},
          {"vision_config", stub_vision_config()},
          {"canvas_length", c.canvas_length},
          {"boi_token_id", 255999},
          {"eoi_token_id", 258882},
          {"image_token_id", c.image_token_id},
          {"tie_word_embeddings", true}};
}
}  // namespace

json model_config_to_json(const ModelConfig& config) {
  if (!config.raw.empty()) return config.raw;
  ModelConfig c = config;
  resolve_layers(c, "model_config_to_json");  // the per-layer table always matches the scalars

  json t;
  t["model_type"] = "gemma4_text";
  t["vocab_size"] = c.vocab_size;
  t["hidden_size"] = c.hidden_size;
  t["intermediate_size"] = c.intermediate_sizes.empty() ? json(c.intermediate_size) : json(c.intermediate_sizes);
  t["num_hidden_layers"] = c.num_layers;
  t["num_attention_heads"] = c.num_heads;
  t["num_key_value_heads"] = c.num_kv_heads;
  t["head_dim"] = c.head_dim;
  t["global_head_dim"] = int_or_null(c.global_head_dim);
  t["num_global_key_value_heads"] = int_or_null(c.num_global_kv_heads);
  t["hidden_size_per_layer_input"] = c.hidden_size_per_layer_input;
  t["vocab_size_per_layer_input"] = c.vocab_size_per_layer_input;
  t["num_kv_shared_layers"] = c.num_kv_shared_layers;
  t["use_double_wide_mlp"] = c.use_double_wide_mlp;
  t["attention_k_eq_v"] = c.attention_k_eq_v;
  t["enable_moe_block"] = c.enable_moe_block;
  t["num_experts"] = int_or_null(c.num_experts);
  t["top_k_experts"] = int_or_null(c.top_k_experts);
  t["moe_intermediate_size"] = int_or_null(c.moe_intermediate_size);
  t["sliding_window"] = c.sliding_window;
  t["rms_norm_eps"] = c.rms_norm_eps;
  t["final_logit_softcapping"] = c.final_logit_softcapping ? json(*c.final_logit_softcapping) : json(nullptr);
  t["tie_word_embeddings"] = c.tie_word_embeddings;
  t["use_bidirectional_attention"] = c.bidirectional.empty() ? json(nullptr) : json(c.bidirectional);
  t["pad_token_id"] = c.pad_token_id;
  t["bos_token_id"] = c.bos_token_id;
  t["eos_token_id"] = c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0])
                      : c.eos_token_ids.empty()   ? json(nullptr)
                                                  : json(c.eos_token_ids);
  if (c.max_position_embeddings > 0) t["max_position_embeddings"] = c.max_position_embeddings;
  t["hidden_activation"] = "gelu_pytorch_tanh";
  t["attention_bias"] = false;
  t["layer_types"] = c.layer_types;
  t["rope_parameters"] = {{kSliding, rope_to_json(c.rope_sliding)}, {kFull, rope_to_json(c.rope_full)}};
  // transformers 5.x dialect: the resolved shape of every full-attention layer, plus the KV
  // head count of any sliding layer that overrides it.
  json per_layer = json::object();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerSpec& s = c.layers[static_cast<size_t>(l)];
    if (!s.sliding)
      per_layer[std::to_string(l)] = {{"head_dim", s.head_dim}, {"num_key_value_heads", s.num_kv_heads}};
    else if (c.layer_overrides.count(l))
      per_layer[std::to_string(l)] = {{"num_key_value_heads", s.num_kv_heads}};
  }
  t["per_layer_config"] = per_layer;

  if (c.diffusion) {
    G4_CHECK(!c.has_audio, "model_config_to_json: a diffusion_gemma model has no audio tower");
    return diffusion_config_json(c, t);
  }
  if (!c.conditional) {
    t["architectures"] = {c.architecture.empty() ? "Gemma4ForCausalLM" : c.architecture};
    return t;
  }
  // Vision/audio towers have no fields here to rebuild their configs from.
  G4_CHECK(!c.has_vision && !c.has_audio,
           "model_config_to_json: cannot write the vision/audio config of a model not read from a config.json");
  return {{"architectures", {c.architecture.empty() ? "Gemma4ForConditionalGeneration" : c.architecture}},
          {"model_type", "gemma4"},
          {"text_config", t},
          {"vision_config", nullptr},
          {"audio_config", nullptr},
          {"tie_word_embeddings", c.tie_word_embeddings}};
}

}  // namespace g4::io

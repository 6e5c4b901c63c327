// load_tokenizer: picks the reader by file, then the bos/eos/pad ids the way transformers does:
// the tokenizer's own <bos>/<eos>/<pad> tokens, overridden by tokenizer_config.json, overridden
// in turn by special_tokens_map.json (transformers lets the map win over the config).
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/hf_tokenizer.h"
#include "io/json_input.h"
#include "io/sentencepiece_tokenizer.h"

namespace g4::io {

namespace {

namespace fs = std::filesystem;

// Sets bos/eos/pad from a tokenizer_config.json or special_tokens_map.json, when it has them.
// Values are a token string or {"content": token, ...}; null leaves the id as it is.
void read_special_tokens(Tokenizer& tok, const fs::path& file) {
  if (!fs::exists(file)) return;
  const nlohmann::json j = read_json_file(file.string(), "tokenizer config", kMaxConfigBytes);
  G4_CHECK(j.is_object(), file.string(), " must be a JSON object");
  const std::pair<const char*, int32_t*> keys[] = {
      {"bos_token", &tok.bos_id}, {"eos_token", &tok.eos_id}, {"pad_token", &tok.pad_id}};
  for (const auto& [key, id] : keys) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    const nlohmann::json& v = it->is_object() && it->contains("content") ? (*it)["content"] : *it;
    G4_CHECK(v.is_string(), file.string(), ": '", key, "' must be a token string or {\"content\": ...}, got ",
             it->dump());
    auto found = tok.token_to_id(v.get<std::string>());
    G4_CHECK(found, file.string(), ": '", key, "' is '", v.get<std::string>(), "', which is not in the tokenizer");
    *id = *found;
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  fs::path file = path;
  if (fs::is_directory(file)) {
    file = fs::exists(file / "tokenizer.json") ? file / "tokenizer.json" : file / "tokenizer.model";
    G4_CHECK(fs::exists(file), "no tokenizer.json or tokenizer.model in ", path);
  }
  G4_CHECK(fs::exists(file), "tokenizer file ", file.string(), " does not exist", relative_path_note(file.string()));

  std::unique_ptr<Tokenizer> tok;
  if (file.extension() == ".json") {
    tok = HfTokenizer::load(file.string());
    const std::pair<const char*, int32_t*> named[] = {
        {"<bos>", &tok->bos_id}, {"<eos>", &tok->eos_id}, {"<pad>", &tok->pad_id}};
    for (const auto& [name, id] : named)
      if (auto found = tok->token_to_id(name)) *id = *found;
  } else if (file.extension() == ".model") {
    tok = std::make_unique<SentencePieceTokenizer>(file.string());  // ids from the model itself
  } else {
    G4_FAIL("tokenizer file ", file.string(), ": unknown kind (expected tokenizer.json or a SentencePiece .model)");
  }
  read_special_tokens(*tok, file.parent_path() / "tokenizer_config.json");
  read_special_tokens(*tok, file.parent_path() / "special_tokens_map.json");
  return tok;
}

}  // namespace g4::io

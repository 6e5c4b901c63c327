// Requests as JSON (the OpenAI API's bodies, and the lines of `g4 generate --prompts`) read into
// engine requests. One reader for both, so a field means the same thing everywhere; every
// mistake is a RequestError naming the field.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "generate/engine.h"
#include "io/hf_config.h"
#include "io/image_processor.h"
#include "io/tokenizer.h"
#include "io/video_processor.h"

namespace g4::serve {

// A request the client got wrong: the HTTP status to answer with, and the OpenAI error's `param`
// (the field at fault, "" when none) and `code` ("" when none).
class RequestError : public Error {
 public:
  RequestError(int status, std::string param, const std::string& message, std::string code = "")
      : Error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_, code_;
};

// Where a request comes from. The API ignores fields it does not know (clients send extras such
// as "user"); a prompts file is ours, so an unknown key there is a mistake and refused.
enum class Api { Completions, Chat, File };

// What the reader needs to know of the model.
struct ModelInfo {
  const io::Tokenizer* tokenizer = nullptr;  // null: text prompts, messages and stop strings are refused
  int64_t vocab_size = 0;
  int64_t context_len = 0;  // max_position_embeddings (0 = unknown, unchecked)
  data::ChatVariant chat_variant = data::ChatVariant::Small;
  std::vector<int64_t> chat_stop_ids;  // ends a chat reply besides the model's eos ids ("<turn|>")
  // Media in chat content parts: the image processor of a model with a vision tower (unset: image
  // parts are refused) and whether it has an audio tower.
  std::optional<io::ImageProcessorOptions> image_processor;
  bool audio = false;
  // Video parts (vLLM's video_url with the frames in a data URL; in prompts files also video parts
  // with files): the model directory's video processor, set with image_processor.
  std::optional<io::VideoProcessorOptions> video_processor;
  // Prompts files: the folder relative "path"s of image, audio and video parts start from ("" refuses
  // path parts: the API takes data URLs and base64 audio only, never the server's files).
  std::string media_folder;
};

// Values for the fields a request leaves out.
// The largest n and logprobs (top_logprobs) a request may ask for, as OpenAI bounds them; `g4
// generate --prompts` holds its --n and --logprobs flags (every line's defaults) to the same.
constexpr int64_t kMaxN = 128;
constexpr int64_t kMaxLogprobs = 20;

struct Defaults {
  gen::RequestOptions options;  // options.max_tokens 0: up to the model's context
  bool random_seed = true;      // a request without a seed gets a fresh random one (else options' seed)
};

// The OpenAI defaults: 16 tokens for completions, up to the context for chat, an unseeded draw.
Defaults api_defaults(Api api);

struct ParsedRequest {
  gen::Request request;
  std::string model;  // "model" as sent ("" when absent)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool chat = false;           // the prompt came from messages
  bool tokens_as_ids = false;  // vLLM's return_tokens_as_token_ids (ResponseHead::tokens_as_ids)
};

// Reads a whole request: prompt (or messages), options, stream flags. Checks the lengths against
// the model's context and the ids against its vocabulary.
ParsedRequest parse_request(const nlohmann::json& body, Api api, const ModelInfo& model, const Defaults& defaults);

// The model facts for a loaded model: its tokenizer (may be null), vocabulary, context, the chat
// template variant (the generation prompt of the large checkpoints opens an empty thought channel),
// the end-of-turn id, and its media (the image processor of `model_dir`, or the defaults with the
// tower's patch sizes). The tokenizer's media placeholders must be the model's ids.
ModelInfo model_info(const io::ModelConfig& config, const io::Tokenizer* tokenizer, const std::string& model_dir = "");

}  // namespace g4::serve

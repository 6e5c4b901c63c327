#include "rl/rollouts.h"

#include <algorithm>
#include <optional>

#include "core/clock.h"
#include "core/error.h"
#include "data/dataset.h"
#include "generate/engine.h"

namespace g4::rl {

uint64_t rollout_seed(uint64_t run_seed, int64_t draw) {
  // splitmix64 of the pair: neighbouring draws get unrelated seeds (k = 0 .. n-1 is added to them).
  uint64_t z = run_seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(draw) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int64_t sequence_limit(int64_t max_total_len, int64_t context) {
  if (max_total_len > 0 && context > 0) return std::min(max_total_len, context);
  return max_total_len > 0 ? max_total_len : context;
}

std::vector<Rollout> generate_rollouts(const model::Gemma4& model, const io::Tokenizer& tok,
                                       const std::vector<PromptExample>& prompts, const std::vector<int64_t>& draws,
                                       int64_t n, const RolloutOptions& o, Reward& reward, RolloutTimes* times) {
  G4_CHECK(prompts.size() == draws.size(), "generate_rollouts: ", prompts.size(), " prompts but ", draws.size(),
           " draw positions");
  if (prompts.empty()) return {};
  const int64_t limit = sequence_limit(o.max_total_len, model.config().max_position_embeddings);
  // A chat reply ends with the template's end of turn; NeMo-RL's vLLM stops there as at EOS.
  const std::optional<int32_t> end_of_turn = data::chat_end_of_turn_id(tok);
  std::vector<gen::Request> requests;
  for (size_t i = 0; i < prompts.size(); ++i) {
    gen::Request q;
    q.prompt = prompts[i].ids;
    const int64_t len = static_cast<int64_t>(q.prompt.size());
    // NeMo-RL's vLLM runs with max_model_len = max_total_sequence_length: a long prompt leaves fewer
    // new tokens.
    q.options.max_tokens = limit > 0 ? std::min(o.max_new_tokens, limit - len) : o.max_new_tokens;
    // PromptStream refuses such prompts as it reads or generates them; this is the last guard.
    G4_CHECK(q.options.max_tokens > 0, prompts[i].where.empty() ? "prompt of draw " + std::to_string(draws[i])
                                                                 : prompts[i].where,
             ": the prompt has ", len, " tokens: no room for a response within generation.max_total_sequence_length "
             "/ the model's context (", limit, ")");
    q.options.sampling.temperature = o.temperature;
    q.options.sampling.top_p = o.top_p;
    q.options.sampling.top_k = o.top_k;
    q.options.sampling.seed = rollout_seed(o.seed, draws[i]);
    q.options.stop_strings = o.stop_strings;
    if (end_of_turn) q.options.stop_ids.push_back(*end_of_turn);
    q.options.logprobs = 0;
    // The distribution the tokens were drawn from (after temperature and filters), as NeMo-RL's
    // vLLM reports them (logprobs_mode processed_logprobs).
    q.options.logprob_mode = gen::LogprobMode::kProcessed;
    q.options.n = n;
    requests.push_back(std::move(q));
  }
  gen::EngineOptions eo;
  eo.page_size = o.page_size;
  // The pool holds at most what these rollouts can use (every sample to its last token), not the
  // memory fraction's whole share: a smaller pool is quicker to allocate at every step and leaves
  // the training step its memory. (A page size the engine refuses is left for its message.)
  for (const gen::Request& q : requests)
    if (o.page_size > 0)
      eo.max_pages += q.options.n * ((static_cast<int64_t>(q.prompt.size()) + q.options.max_tokens + o.page_size - 1) /
                                     o.page_size);
  eo.max_running = o.max_running;
  eo.memory_fraction = o.memory_fraction;
  eo.tokenizer = &tok;
  std::vector<gen::Completion> done;
  {
    const auto t_start = Clock::now();
    std::optional<gen::Engine> engine;  // its KV pages are freed when it goes
    try {
      engine.emplace(model, eo);
    } catch (const Error& e) {
      // The engine's sizes come from these recipe keys; its own message names its fields.
      G4_FAIL("the rollouts' generation engine (generation.page_size ", o.page_size, ", generation.max_running ",
              o.max_running, ", generation.memory_fraction ", o.memory_fraction, "): ", e.what());
    }
    if (times) times->engine_start_s += seconds_since(t_start);
    done = engine->generate(std::move(requests));
    if (times) times->steps += engine->host_times();
  }
  const auto t_reward = Clock::now();
  std::vector<Rollout> out;
  std::vector<RewardInput> inputs;
  out.reserve(done.size());
  for (size_t j = 0; j < done.size(); ++j) {
    const size_t i = j / static_cast<size_t>(n);
    const gen::Completion& c = done[j];
    Rollout r;
    r.draw = draws[i];
    r.sample = static_cast<int64_t>(j % static_cast<size_t>(n));
    r.prompt_ids = prompts[i].ids;
    std::vector<int32_t> ids;
    for (const gen::GeneratedToken& t : c.tokens) {
      r.response_ids.push_back(t.id);
      r.gen_logprobs.push_back(t.logprob);
      // A model's vocabulary may be wider than its tokenizer's; ids past the tokenizer (which only
      // an untrained model samples) have no text.
      if (t.id < tok.vocab_size()) ids.push_back(static_cast<int32_t>(t.id));
    }
    r.truncated = c.finish == gen::FinishReason::kLength;
    RewardInput in;
    in.prompt = prompts[i].prompt;
    // Decoded whole rather than the engine's Completion::text, which ends before a matched stop
    // string: NeMo-RL's rewards see the stop string too (include_stop_str_in_output).
    in.response = tok.decode(ids, /*skip_special=*/true);
    in.answer = prompts[i].answer;
    in.extra = prompts[i].extra;
    inputs.push_back(std::move(in));
    out.push_back(std::move(r));
  }
  const std::vector<double> rewards = reward.score(inputs);
  if (times) times->reward_s += seconds_since(t_reward);
  G4_CHECK(rewards.size() == out.size(), "the reward returned ", rewards.size(), " scores for ", out.size(), " responses");
  for (size_t j = 0; j < out.size(); ++j) out[j].env_reward = rewards[j];
  return out;
}

namespace {

nlohmann::json to_json(const Rollout& r) {
  return {{"d", r.draw}, {"k", r.sample}, {"p", r.prompt_ids}, {"r", r.response_ids},
          {"l", r.gen_logprobs}, {"t", r.truncated}, {"e", r.env_reward}};
}

Rollout from_json(const nlohmann::json& j) {
  Rollout r;
  r.draw = j.at("d").get<int64_t>();
  r.sample = j.at("k").get<int64_t>();
  r.prompt_ids = j.at("p").get<std::vector<int64_t>>();
  r.response_ids = j.at("r").get<std::vector<int64_t>>();
  r.gen_logprobs = j.at("l").get<std::vector<double>>();
  r.truncated = j.at("t").get<bool>();
  r.env_reward = j.at("e").get<double>();
  return r;
}

}  // namespace

std::vector<std::vector<uint8_t>> all_gather_bytes(const std::vector<uint8_t>& mine, parallel::Communicator& world) {
  if (world.size() == 1) return {mine};
  // Variable lengths: the lengths first, then every rank's bytes padded to the longest.
  Tensor len = Tensor::empty({1}, DType::I64);
  len.data<int64_t>()[0] = static_cast<int64_t>(mine.size());
  Tensor lens = Tensor::empty({world.size()}, DType::I64);
  parallel::all_gather_values(world, len, lens);
  int64_t longest = 1;
  for (int r = 0; r < world.size(); ++r) longest = std::max(longest, lens.data<int64_t>()[r]);
  Tensor buf = Tensor::zeros({longest}, DType::U8);
  std::copy(mine.begin(), mine.end(), buf.data<uint8_t>());
  Tensor gathered = Tensor::empty({longest * world.size()}, DType::U8);
  parallel::all_gather_values(world, buf, gathered);
  std::vector<std::vector<uint8_t>> out;
  for (int r = 0; r < world.size(); ++r) {
    const uint8_t* p = gathered.data<uint8_t>() + r * longest;
    out.emplace_back(p, p + lens.data<int64_t>()[r]);
  }
  return out;
}

std::vector<Rollout> gather_rollouts(const std::vector<Rollout>& mine, parallel::Communicator& world) {
  nlohmann::json a = nlohmann::json::array();
  for (const Rollout& r : mine) a.push_back(to_json(r));
  std::vector<Rollout> all;
  for (const std::vector<uint8_t>& part : all_gather_bytes(nlohmann::json::to_cbor(a), world))
    for (const nlohmann::json& j : nlohmann::json::from_cbor(part)) all.push_back(from_json(j));
  std::sort(all.begin(), all.end(), [](const Rollout& a, const Rollout& b) {
    return a.draw != b.draw ? a.draw < b.draw : a.sample < b.sample;
  });
  return all;
}

}  // namespace g4::rl

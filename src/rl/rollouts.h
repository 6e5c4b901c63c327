// Rollouts: n samples of each prompt from the generation engine running on the policy's own
// weights (the model being trained: nothing is copied), with the log-prob of every sampled token
// and the reward of every response.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "generate/engine.h"
#include "io/tokenizer.h"
#include "model/gemma4.h"
#include "parallel/communicator.h"
#include "rl/prompts.h"
#include "rl/rewards.h"

namespace g4::rl {

struct Rollout {
  int64_t draw = 0;    // the prompt's draw position in the run (PromptStream::position)
  int64_t sample = 0;  // 0 .. n - 1
  std::vector<int64_t> prompt_ids, response_ids;
  std::vector<double> gen_logprobs;  // per response token, as the engine sampled it (processed)
  bool truncated = false;            // ended by max_new_tokens or the sequence-length limit
  double env_reward = 0;             // the reward function's score, before scaling and shaping
};

struct RolloutOptions {
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  int64_t max_new_tokens = 64;
  int64_t max_total_len = 0;  // prompt + response at most (0: the model's context)
  std::vector<std::string> stop_strings;
  int64_t page_size = 16, max_running = 256;
  double memory_fraction = 0.5;
  uint64_t seed = 0;
};

// The most tokens a sequence (prompt + response) may hold: generation.max_total_sequence_length
// (`max_total_len`, 0: none) within the model's context (`context`, 0: none); 0 when neither limits.
int64_t sequence_limit(int64_t max_total_len, int64_t context);

// The draws of sample k of draw d: seed(d) + k. Every (run seed, d) pair gets its own stream, so
// a prompt's samples do not depend on which rank or round generates them.
uint64_t rollout_seed(uint64_t run_seed, int64_t draw);

// Where a generate_rollouts call spends its time (seconds, added to by each call): making the engine
// (its page pool), the engine's steps by phase (gen::StepHostTimes: scheduling, queuing the forwards,
// sampling, which waits for the GPU, and bookkeeping), and scoring.
struct RolloutTimes {
  double engine_start_s = 0;
  gen::StepHostTimes steps;
  double reward_s = 0;
};

// Generates n samples of prompts[i] (drawn at draws[i]) and scores them with `reward`. The KV
// pages exist only inside this call. Rollouts come back in (draw, sample) order. `times`, when
// given, is added to.
std::vector<Rollout> generate_rollouts(const model::Gemma4& model, const io::Tokenizer& tok,
                                       const std::vector<PromptExample>& prompts, const std::vector<int64_t>& draws,
                                       int64_t n, const RolloutOptions& options, Reward& reward,
                                       RolloutTimes* times = nullptr);

// Every rank's bytes, on every rank, in rank order (collective; a one-rank world copies).
std::vector<std::vector<uint8_t>> all_gather_bytes(const std::vector<uint8_t>& mine, parallel::Communicator& world);

// Every rank's rollouts, on every rank, in (draw, sample) order (collective).
std::vector<Rollout> gather_rollouts(const std::vector<Rollout>& mine, parallel::Communicator& world);

}  // namespace g4::rl

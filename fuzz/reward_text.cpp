// Model output through the RL rewards (rl/rewards.h): an input is the ground truth (its first
// line) and a response (the rest), scored by DAPO's math verifier, the exact-match, countdown and
// regex rewards. A policy writes anything, so no response may crash a reward, hang it (regex and
// expression recursion) or score other than 0 or 1; the countdown problem's numbers and target
// come from the input too.
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "rl/rewards.h"

namespace {

std::unique_ptr<g4::rl::Reward> reward(const std::string& kind, const std::string& pattern = "") {
  g4::rl::RewardOptions o;
  o.kind = kind;
  o.pattern = pattern;
  return g4::rl::make_reward(o);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto rewards = [] {
    std::vector<std::unique_ptr<g4::rl::Reward>> r;
    for (const char* kind : {"dapo_math", "exact", "countdown"}) r.push_back(reward(kind));
    r.push_back(reward("regex", "Answer:\\s*{answer}\\s*$"));
    return r;
  }();
  const std::string_view text = g4::fuzz::as_view(data, size);
  const size_t nl = text.find('\n');
  g4::rl::RewardInput in;
  in.answer = std::string(text.substr(0, nl == std::string_view::npos ? text.size() : nl));
  in.response = nl == std::string_view::npos ? std::string() : std::string(text.substr(nl + 1));
  in.prompt = "fuzz";
  nlohmann::json numbers = nlohmann::json::array();
  for (size_t i = 0; i < in.answer.size() && i < 6; ++i)
    numbers.push_back(static_cast<unsigned char>(in.answer[i]) % 100);
  in.extra = {{"numbers", numbers}, {"target", static_cast<int64_t>(size % 1000)}};
  g4::fuzz::expect_g4_errors_only([&] { (void)g4::rl::normalize_final_answer(in.response); });
  g4::fuzz::expect_g4_errors_only([&] {
    const double s = g4::rl::dapo_math_score(in.response, in.answer);
    if (s != 0.0 && s != 1.0) std::abort();
  });
  for (const auto& r : rewards)
    g4::fuzz::expect_g4_errors_only([&] {
      for (const double s : r->score({in}))
        if (s != 0.0 && s != 1.0) std::abort();
    });
  return 0;
}

// `g4 forward MODEL --prompt TEXT --image FILE` and `--video FRAMES`: the inputs it makes (input_ids
// with the media's soft tokens, pixel_values, pixel_values_videos) give the same logits as those
// tensors passed through --inputs; bad images and mismatched placeholders are errors naming what is
// wrong. `g4 generate` with images (--prompt --image, and image parts in a --prompts file)
// continues with the forward's argmax.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "io/image_processor.h"
#include "io/safetensors.h"
#include "io/video_processor.h"
#include "support/g4_process.h"
#include "support/png_file.h"
#include "support/tensor_compare.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

namespace fs = std::filesystem;
using test::ProcessResult;

void write_file(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// tiny-mm-e (vision patch 6, image ids 300/301/304 and video 306 in a 320-token vocabulary) with a
// processor config for its patch size (videos: 2 frames) and the plain test tokenizer plus the
// image and video tokens at those ids.
fs::path make_model_dir() {
  const fs::path dir = test::scratch_dir("cli_forward_image");
  const std::string src = test::data_dir() + "/hf-gemma4-mm/tiny-mm-e";
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(src + "/" + f, dir / f);
  write_file(dir / "processor_config.json",
             R"({"image_processor": {"patch_size": 6, "pooling_kernel_size": 3, "max_soft_tokens": 70},)"
             R"( "video_processor": {"patch_size": 6, "pooling_kernel_size": 3, "max_soft_tokens": 70, "num_frames": 2}})");
  std::ifstream in(test::data_dir() + "/tokenizers/plain.json");
  nlohmann::json tok = nlohmann::json::parse(in);
  for (const auto& [id, content] : std::vector<std::pair<int, std::string>>{{300, "<|image>"}, {301, "<image|>"},
                                                                              {304, "<|image|>"}, {306, "<|video|>"}})
    tok["added_tokens"].push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                                   {"rstrip", false}, {"normalized", false}, {"special", true}});
  write_file(dir / "tokenizer.json", tok.dump());
  return dir;
}

// The processor fixture's 97x150 RGBA image: at patch 6 its patch grid stays within the tiny
// tower's 128 positions.
std::string fixture_image() { return test::data_dir() + "/hf-gemma4-mm/processor/rgba_97x150.png"; }

TEST(CliForwardImage, PromptAndImageGiveTheSameLogitsAsTheirTensors) {
  const fs::path dir = make_model_dir(), outs = test::scratch_dir("cli_forward_image_out");
  const std::string out = (outs / "out.safetensors").string();
  ProcessResult r = test::run_g4("forward " + dir.string() + " --prompt 'a b <|image|> c' --image " +
                                 fixture_image() + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("97x150 -> 108x180, 60 soft tokens"), std::string::npos) << r.output;
  const io::SafetensorsReader got = io::SafetensorsReader::open(out);
  const Tensor ids = got.get("input_ids"), types = got.get("mm_token_type_ids");
  ASSERT_EQ(ids.dim(), 2);
  int64_t image_tokens = 0, boi = -1;
  for (int64_t t = 0; t < ids.numel(); ++t) {
    const int64_t id = ids.data<int64_t>()[t];
    image_tokens += id == 304;
    if (id == 300) boi = t;
    EXPECT_EQ(types.data<int64_t>()[t], id == 304 ? 1 : 0) << t;
  }
  EXPECT_EQ(ids.data<int64_t>()[0], 2);  // <bos> put first
  EXPECT_EQ(image_tokens, 60);
  ASSERT_GE(boi, 0);
  EXPECT_EQ(ids.data<int64_t>()[boi + 61], 301);

  // The same tensors through --inputs.
  io::ImageProcessorOptions opt;
  opt.patch_size = 6;
  opt.max_soft_tokens = 70;
  const io::ProcessedImages img = io::process_images({io::read_image(fixture_image())}, opt);
  // --out also holds the processed image it ran on (tools/probe_processors_vs_transformers.py reads it).
  EXPECT_EQ(test::max_diff(got.get("pixel_values"), img.pixel_values), 0.0);
  EXPECT_EQ(test::max_diff(got.get("image_position_ids"), img.image_position_ids), 0.0);
  EXPECT_FALSE(got.has("input_features"));
  const std::string in = (outs / "in.safetensors").string(), out2 = (outs / "out2.safetensors").string();
  io::save_safetensors(in, {{"input_ids", ids.clone()},
                            {"mm_token_type_ids", types.clone()},
                            {"pixel_values", img.pixel_values},
                            {"image_position_ids", img.image_position_ids}});
  r = test::run_g4("forward " + dir.string() + " --inputs " + in + " --out " + out2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(test::max_diff(got.get("logits"), io::SafetensorsReader::open(out2).get("logits")), 0.0);

  // --chat: one user turn, the image first; the budget from the command line.
  r = test::run_g4("forward " + dir.string() + " --chat --prompt ' c ' --image " + fixture_image() +
                   " --max-soft-tokens 140 --out " + out + " --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("97x150 -> 162x252, 126 soft tokens"), std::string::npos) << r.output;

  // An empty prompt with an image: <bos>, then the image's tokens.
  r = test::run_g4("forward " + dir.string() + " --prompt '' --image " + fixture_image() + " --out " + out +
                   " --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor only = io::SafetensorsReader::open(out).get("input_ids");
  ASSERT_EQ(only.numel(), 1 + 62);
  EXPECT_EQ(only.data<int64_t>()[0], 2);
  EXPECT_EQ(only.data<int64_t>()[1], 300);
  EXPECT_EQ(only.data<int64_t>()[62], 301);
  fs::remove_all(dir);
  fs::remove_all(outs);
}

// A video of three 30x40 frames at 1 fps, two of them sampled (the processor config's num_frames):
// frames 0 and 1, "00:00" and "00:01", 63 soft tokens each at patch 6; the same tensors through
// --inputs give the same logits. A folder of frames with --video-frames and --chat runs too.
TEST(CliForwardImage, PromptAndVideoGiveTheSameLogitsAsTheirTensors) {
  const fs::path dir = make_model_dir(), outs = test::scratch_dir("cli_forward_video_out");
  fs::create_directories(outs / "frames");
  std::vector<std::string> frames;
  for (int i = 0; i < 3; ++i) {
    frames.push_back((outs / "frames" / ("f" + std::to_string(i) + ".png")).string());
    test::write_random_png(frames.back(), 40, 30, 60 + static_cast<uint32_t>(i));
  }
  const std::string out = (outs / "out.safetensors").string();
  ProcessResult r = test::run_g4("forward " + dir.string() + " --prompt 'a <|video|> b' --video " + frames[0] + "," +
                                 frames[1] + "," + frames[2] + " --video-fps 1 --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2 of 3 frames, 30x40 -> 126x162, 63 soft tokens per frame"), std::string::npos)
      << r.output;
  const io::SafetensorsReader got = io::SafetensorsReader::open(out);
  const Tensor ids = got.get("input_ids"), types = got.get("mm_token_type_ids");
  int64_t video_tokens = 0, bois = 0;
  for (int64_t t = 0; t < ids.numel(); ++t) {
    const int64_t id = ids.data<int64_t>()[t];
    video_tokens += id == 306;
    bois += id == 300;
    EXPECT_EQ(types.data<int64_t>()[t], id == 306 ? 2 : 0) << t;
  }
  EXPECT_EQ(video_tokens, 2 * 63);
  EXPECT_EQ(bois, 2);

  io::VideoProcessorOptions opt;
  opt.frame.patch_size = 6;
  opt.num_frames = 2;
  const auto [values, positions] = io::stack_videos({io::process_video({frames, 1.0}, opt)});
  EXPECT_EQ(test::max_diff(got.get("pixel_values_videos"), values), 0.0);
  EXPECT_EQ(test::max_diff(got.get("video_position_ids"), positions), 0.0);
  const std::string in = (outs / "in.safetensors").string(), out2 = (outs / "out2.safetensors").string();
  io::save_safetensors(in, {{"input_ids", ids.clone()},
                            {"mm_token_type_ids", types.clone()},
                            {"pixel_values_videos", values},
                            {"video_position_ids", positions}});
  r = test::run_g4("forward " + dir.string() + " --inputs " + in + " --out " + out2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(test::max_diff(got.get("logits"), io::SafetensorsReader::open(out2).get("logits")), 0.0);

  r = test::run_g4("forward " + dir.string() + " --chat --prompt 'same?' --image " + fixture_image() + " --video " +
                   (outs / "frames").string() + " --video-frames 3 --out " + out + " --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("3 of 3 frames"), std::string::npos) << r.output;
  const Tensor chat_types = io::SafetensorsReader::open(out).get("mm_token_type_ids");
  int64_t image = 0, video = 0;
  for (int64_t t = 0; t < chat_types.numel(); ++t)
    image += chat_types.data<int64_t>()[t] == 1, video += chat_types.data<int64_t>()[t] == 2;
  EXPECT_EQ(image, 60);
  EXPECT_EQ(video, 3 * 63);

  r = test::run_g4("forward " + dir.string() + " --prompt x --video " + frames[0] + ",missing.png --out " + out +
                   " --overwrite");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("missing.png does not exist"), std::string::npos) << r.output;
  fs::remove_all(dir);
  fs::remove_all(outs);
}

TEST(CliForwardImage, BadInputsAreNamed) {
  const fs::path dir = make_model_dir();
  const std::string out = (dir / "out.safetensors").string(), bad = (dir / "bad.png").string();
  write_file(bad, "\x89PNG\r\n\x1a\n but not really");
  ProcessResult r = test::run_g4("forward " + dir.string() + " --prompt x --image " + bad + " --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find(bad), std::string::npos) << r.output;
  r = test::run_g4("forward " + dir.string() + " --prompt '<|image|><|image|>' --image " + fixture_image() +
                   " --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--prompt has 2 image placeholder(s)"), std::string::npos) << r.output;
  // The flag is named (it was blamed on processor_config.json), and an explicit 0 (the "not given"
  // of MediaPromptOptions, so silently the default budget) is refused too (tools/probe_cli.py).
  for (const char* budget : {"100", "0", "-70", "x"}) {
    r = test::run_g4("forward " + dir.string() + " --prompt x --image " + fixture_image() + " --max-soft-tokens " +
                     budget + " --out " + out);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.output.find("--max-soft-tokens"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("must be one of 70, 140, 280, 560, 1120"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("processor_config.json"), std::string::npos) << r.output;
  }
  // With --chat the media are parts of their own before the text: a placeholder in the text was
  // reported as "4 image placeholder(s) for 2 image(s)".
  r = test::run_g4("forward " + dir.string() + " --chat --prompt '<|image|>x' --image " + fixture_image() + " --out " +
                   out);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--prompt holds <|image|>, but with --chat"), std::string::npos) << r.output;
  r = test::run_g4("forward " + dir.string() + " --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--inputs or --prompt"), std::string::npos) << r.output;
  fs::remove_all(dir);
}


// The generated ids `g4 generate` printed (the line of comma-separated integers).
std::vector<int64_t> printed_ids(const std::string& output) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.find_first_not_of("0123456789,") != std::string::npos) continue;
    std::vector<int64_t> ids;
    std::istringstream items(line);
    for (std::string item; std::getline(items, item, ',');) ids.push_back(std::stoll(item));
    return ids;
  }
  return {};
}

// `g4 forward` and `g4 generate` (n new tokens) with the same prompt arguments: generate's first
// token must be the argmax of the forward's last logits.
struct ForwardThenGenerate {
  std::vector<int64_t> ids;  // generated
  std::string output;        // generate's
  int64_t prompt_tokens = 0;
};
ForwardThenGenerate forward_then_generate(const fs::path& dir, const std::string& args, const fs::path& outs,
                                          size_t n) {
  const std::string logits_file = (outs / "logits.safetensors").string();
  ProcessResult r = test::run_g4("forward " + dir.string() + args + " --out " + logits_file + " --overwrite");
  if (r.code != 0) {
    ADD_FAILURE() << r.output;
    return {};
  }
  const Tensor logits = io::SafetensorsReader::open(logits_file).get("logits");
  const int64_t S = logits.size(1), V = logits.size(2);
  const float* last = logits.data<float>() + (S - 1) * V;
  r = test::run_g4("generate " + dir.string() + args + " --max-new-tokens " + std::to_string(n));
  EXPECT_EQ(r.code, 0) << r.output;
  ForwardThenGenerate out{printed_ids(r.output), r.output, S};
  EXPECT_EQ(out.ids.size(), n) << r.output;
  if (!out.ids.empty()) {
    EXPECT_EQ(out.ids[0], std::max_element(last, last + V) - last) << "the forward's greedy next token";
  }
  return out;
}

TEST(CliGenerateImage, TokensFollowTheForwardAndAPromptsFileWithImagePartsAgrees) {
  const fs::path dir = make_model_dir(), outs = test::scratch_dir("cli_generate_image_out");
  // One user turn with the image (the chat template), through forward and generate.
  const std::string turn = " --chat --prompt 'What is it?' --image " + fixture_image();
  const ForwardThenGenerate gen = forward_then_generate(dir, turn, outs, 4);
  const std::vector<int64_t>& ids = gen.ids;
  const int64_t S = gen.prompt_tokens;

  // A prompts-file line with the same parts (the image's path relative to the file) agrees.
  fs::copy_file(fixture_image(), outs / "pic.png");
  const std::string in = (outs / "in.jsonl").string(), lines = (outs / "out.jsonl").string();
  write_file(in, R"({"messages": [{"role": "user", "content": [{"type": "image", "path": "pic.png"}, )"
                 R"({"type": "text", "text": "What is it?"}]}]})"
                 "\n");
  ProcessResult r =
      test::run_g4("generate " + dir.string() + " --chat --prompts " + in + " --out " + lines + " --max-new-tokens 4");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream f(lines);
  std::string line;
  ASSERT_TRUE(std::getline(f, line));
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["token_ids"].get<std::vector<int64_t>>(), ids);
  EXPECT_EQ(j["prompt_tokens"].get<int64_t>(), S);

  // Errors name what is wrong: a missing file, a model without a vision tower.
  r = test::run_g4("generate " + dir.string() + " --prompt x --image " + (outs / "none.png").string() +
                   " --max-new-tokens 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("none.png"), std::string::npos) << r.output;
  r = test::run_g4("generate " + test::data_dir() + "/hf-gemma4/tiny-dense-ple --tokenizer " + dir.string() +
                   " --prompt x --image " + fixture_image() + " --max-new-tokens 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--image: the model in"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("has no vision tower"), std::string::npos) << r.output;
  fs::remove_all(dir);
  fs::remove_all(outs);
}

// A 3-frame video (random PNGs at 1 fps, all sampled) between text: g4 generate's first token is
// the argmax of g4 forward's last logits for the same prompt.
TEST(CliGenerateImage, VideoTokensFollowTheForward) {
  const fs::path dir = make_model_dir(), outs = test::scratch_dir("cli_generate_video_out");
  fs::create_directories(outs / "frames");
  std::string frames;
  for (int i = 0; i < 3; ++i) {
    const std::string f = (outs / "frames" / ("f" + std::to_string(i) + ".png")).string();
    test::write_random_png(f, 40, 30, 90 + static_cast<uint32_t>(i));
    frames += (i ? "," : "") + f;
  }
  const std::string prompt = " --prompt 'a <|video|> b' --video " + frames + " --video-fps 1 --video-frames 3";
  EXPECT_NE(forward_then_generate(dir, prompt, outs, 3).output.find("3 of 3 frames"), std::string::npos);

  // Prompts-file lines with the video as its frames and as their folder (the processor config's 2
  // of 3 frames, paths relative to the file) give what --chat --prompt --video gives.
  ProcessResult r = test::run_g4("generate " + dir.string() + " --chat --prompt 'What happens?' --video " + frames +
                                 " --video-fps 1 --max-new-tokens 3");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<int64_t> chat_ids = printed_ids(r.output);
  const std::string in = (outs / "in.jsonl").string(), lines = (outs / "out.jsonl").string();
  const std::string text = R"(, {"type": "text", "text": "What happens?"}]}]})";
  write_file(in, R"({"messages": [{"role": "user", "content": [{"type": "video", "frames": ["frames/f0.png", )"
                 R"("frames/f1.png", "frames/f2.png"], "fps": 1})" + text + "\n" +
                 R"({"messages": [{"role": "user", "content": [{"type": "video", "path": "frames", "fps": 1})" + text + "\n");
  r = test::run_g4("generate " + dir.string() + " --chat --prompts " + in + " --out " + lines + " --max-new-tokens 3");
  ASSERT_EQ(r.code, 0) << r.output;
  std::ifstream f(lines);
  int n = 0;
  for (std::string line; std::getline(f, line); ++n)
    EXPECT_EQ(nlohmann::json::parse(line)["token_ids"].get<std::vector<int64_t>>(), chat_ids) << line;
  EXPECT_EQ(n, 2);
  fs::remove_all(dir);
  fs::remove_all(outs);
}

}  // namespace
}  // namespace g4

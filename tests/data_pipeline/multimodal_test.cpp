// The processor's text side against transformers' Gemma4Processor: the processor fixture's prompt
// (one image, one audio clip, expanded and tokenised with the fixture's stand-in tokenizer) and
// chat messages with image and audio parts.
#include <gtest/gtest.h>

#include <algorithm>

#include "data/dataset.h"
#include "data/multimodal.h"
#include "io/audio_features.h"
#include "io/image_processor.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "io/wav.h"
#include "support/error_message.h"
#include "support/test_paths.h"

namespace g4::data {
namespace {

std::string processor_dir() { return test::data_dir() + "/hf-gemma4-mm/processor"; }

// Image, then text, then audio, then text, as reference.json records the messages; the fixture's
// reduced template renders parts without the newlines around the image that the real one adds.
const std::string kFixtureText =
    "<bos><|turn>user\n<|image|>What is in this picture?<|audio|>Transcribe the clip.<turn|>\n<|turn>model\n";

TEST(MultimodalPrompt, FixturePromptEqualsTransformers) {
  const io::SafetensorsReader ref =
      io::SafetensorsReader::open(processor_dir() + "/reference-audio.safetensors");
  const auto tok = io::load_tokenizer(processor_dir() + "/tokenizer.json");

  // The soft-token counts come from g4's own processors on the fixture's files.
  const io::ProcessedImages images =
      io::process_images({io::read_image(processor_dir() + "/scene_1200x280.jpg")}, io::ImageProcessorOptions{});
  const io::AudioFeatures audio = io::extract_audio_features({io::read_wav_16k(processor_dir() + "/speech_16k.wav")});
  ASSERT_EQ(images.num_soft_tokens, (std::vector<int64_t>{272}));
  ASSERT_EQ(audio.num_soft_tokens, (std::vector<int64_t>{96}));

  const MultimodalIds got = tokenize_multimodal(kFixtureText, MediaSoftTokens{images.num_soft_tokens, audio.num_soft_tokens}, *tok);
  const Tensor ids = ref.get("prompt.input_ids"), types = ref.get("prompt.mm_token_type_ids");
  ASSERT_EQ(int64_t(got.input_ids.size()), ids.numel());
  for (int64_t t = 0; t < ids.numel(); ++t) {
    ASSERT_EQ(got.input_ids[size_t(t)], ids.data<int64_t>()[t]) << "token " << t;
    ASSERT_EQ(got.mm_token_type_ids[size_t(t)], types.data<int64_t>()[t]) << "token " << t;
  }
  const Tensor pos = ref.get("prompt.image_position_ids");
  ASSERT_EQ(pos.numel(), images.image_position_ids.numel());
  for (int64_t i = 0; i < pos.numel(); ++i)
    ASSERT_EQ(images.image_position_ids.data<int64_t>()[i], pos.data<int64_t>()[i]) << i;
}

TEST(MultimodalPrompt, ExpansionLayoutAndCountErrors) {
  EXPECT_EQ(expand_media("a<|image|>b<|audio|>c<|image|>", MediaSoftTokens{{2, 1}, {3}}),
            "a<|image><|image|><|image|><image|>b<|audio><|audio|><|audio|><|audio|><audio|>c"
            "<|image><|image|><image|>");
  EXPECT_EQ(expand_media("plain text", MediaSoftTokens{{}, {}}), "plain text");
  std::string e = test::error_of([] { expand_media("<|image|><|image|>", MediaSoftTokens{{5}, {}}, "prompt.txt"); });
  EXPECT_NE(e.find("prompt.txt has 2 image placeholder(s)"), std::string::npos) << e;
  EXPECT_NE(e.find("1 image(s)"), std::string::npos) << e;
  e = test::error_of([] { expand_media("no audio here", MediaSoftTokens{{}, {7}}); });
  EXPECT_NE(e.find("0 audio placeholder(s)"), std::string::npos) << e;
  // A clip of at most 160 samples has no valid frame (transformers renders it as an empty
  // <|audio><audio|>): refused, naming the clip and why.
  e = test::error_of([] { expand_media("<|audio|><|audio|>", MediaSoftTokens{{}, {3, 0}}, "prompt.txt"); });
  EXPECT_NE(e.find("prompt.txt: audio clip 1 has 0 soft tokens"), std::string::npos) << e;
  EXPECT_NE(e.find("more than 160 samples"), std::string::npos) << e;
}

TEST(MultimodalPrompt, ChatPartsRenderAsTheGemma4Template) {
  ChatMessage user{"user", "", {}};
  user.parts = {{ChatPart::Kind::Image, ""}, {ChatPart::Kind::Text, "  What is this? "}, {ChatPart::Kind::Audio, ""},
                {ChatPart::Kind::Text, "\nAnd this?"}};
  ChatMessage reply{"assistant", "", {}};
  reply.parts = {{ChatPart::Kind::Text, "<|channel>thought\nhm<channel|>A cat."}};
  EXPECT_EQ(render_chat({user, reply}, true),
            "<bos><|turn>user\n\n\n<|image|>\n\nWhat is this?<|audio|>And this?<turn|>\n"
            "<|turn>model\nA cat.<turn|>\n<|turn>model\n");
  ChatMessage system{"system", "", {}};
  system.parts = {{ChatPart::Kind::Image, ""}};
  EXPECT_NE(test::error_of([&] { render_chat({system, user}); }).find("string content"), std::string::npos);

  // Expanded and tokenised with the fixture's tokenizer: the soft tokens sit between boi and eoi.
  const auto tok = io::load_tokenizer(processor_dir() + "/tokenizer.json");
  const MultimodalIds ids = tokenize_multimodal(render_chat({user}, true), MediaSoftTokens{{4}, {2}}, *tok);
  const int32_t boi = *tok->token_to_id("<|image>"), eoi = *tok->token_to_id("<image|>");
  const auto at = std::find(ids.input_ids.begin(), ids.input_ids.end(), boi) - ids.input_ids.begin();
  ASSERT_LT(size_t(at + 5), ids.input_ids.size());
  EXPECT_EQ(ids.input_ids[size_t(at + 5)], eoi);
  int64_t images = 0, audio = 0;
  for (int64_t t : ids.mm_token_type_ids) images += t == 1, audio += t == 3;
  EXPECT_EQ(images, 4);
  EXPECT_EQ(audio, 2);
  EXPECT_EQ(ids.mm_token_type_ids[size_t(at)], 0);  // boi is text
}

// Each <|video|> becomes, per sampled frame, its timestamp and a boi/eoi-bounded run of video soft
// tokens, the frames joined by spaces (replace_video_token); placeholders of each kind take their
// media in order, whatever the order of the kinds.
TEST(MultimodalPrompt, VideoExpansionLayoutAndTypes) {
  const MediaSoftTokens media{{2}, {}, {{2, {"00:00", "00:01", "01:05"}}}};
  const std::string frame = "<|image><|video|><|video|><image|>";
  const std::string want = "a<|image><|image|><|image|><image|>b00:00 " + frame + " 00:01 " + frame + " 01:05 " +
                           frame + "c";
  EXPECT_EQ(expand_media("a<|image|>b<|video|>c", media), want);
  std::string e = test::error_of([&] { expand_media("a<|image|>b", media, "prompt.txt"); });
  EXPECT_NE(e.find("prompt.txt has 0 video placeholder(s) <|video|> for 1 video(s)"), std::string::npos) << e;
  e = test::error_of([] { expand_media("<|video|>", MediaSoftTokens{{}, {}, {{3, {}}}}); });
  EXPECT_NE(e.find("a video has 0 frame(s)"), std::string::npos) << e;

  // A chat turn with an image and a video, as the Gemma 4 template renders them, tokenised with the
  // fixture's tokenizer: image tokens typed 1, video tokens 2, boundaries and timestamps 0, and
  // the soft tokens of each frame one run between its own boi and eoi.
  ChatMessage user{"user", "", {}};
  user.parts = {{ChatPart::Kind::Image, ""}, {ChatPart::Kind::Video, ""}, {ChatPart::Kind::Text, "Same?"}};
  const std::string text = render_chat({user}, true);
  EXPECT_EQ(text, "<bos><|turn>user\n\n\n<|image|>\n\n\n\n<|video|>\n\nSame?<turn|>\n<|turn>model\n");
  const auto tok = io::load_tokenizer(processor_dir() + "/tokenizer.json");
  const MultimodalIds ids = tokenize_multimodal(text, media, *tok);
  const int32_t boi = *tok->token_to_id("<|image>"), eoi = *tok->token_to_id("<image|>"),
                video = *tok->token_to_id("<|video|>");
  std::vector<int64_t> runs, kinds;  // length and type of each run of soft tokens
  int64_t bois = 0, eois = 0;
  for (size_t t = 0; t < ids.input_ids.size(); ++t) {
    const int64_t type = ids.mm_token_type_ids[t];
    EXPECT_EQ(type == 2, ids.input_ids[t] == video) << t;
    bois += ids.input_ids[t] == boi;
    eois += ids.input_ids[t] == eoi;
    if (type == 0) continue;
    if (t == 0 || ids.mm_token_type_ids[t - 1] == 0) {
      EXPECT_EQ(ids.input_ids[t - 1], boi) << t;
      runs.push_back(0);
      kinds.push_back(type);
    }
    ++runs.back();
  }
  EXPECT_EQ(runs, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(kinds, (std::vector<int64_t>{1, 2, 2, 2}));
  EXPECT_EQ(bois, 4);
  EXPECT_EQ(eois, 4);
  // The timestamps are text: "01:05" is there, as characters of the stand-in vocabulary.
  const std::vector<int32_t> stamp = tok->encode(" 01:05 ");
  EXPECT_NE(std::search(ids.input_ids.begin(), ids.input_ids.end(), stamp.begin(), stamp.end()), ids.input_ids.end());
}

}  // namespace
}  // namespace g4::data

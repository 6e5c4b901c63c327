// Chat training data with image, audio and video parts: the reader's errors, a multimodal document's ids,
// trained marks and token types, batches whose media equal the processor's, packing that never
// cuts a multimodal document, and media processed when batches use them (the cache, changed files).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "data/dataset.h"
#include "data/multimodal.h"
#include "io/audio_features.h"
#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io/io_test_util.h"
#include "io/wav.h"
#include "support/error_message.h"
#include "support/png_file.h"
#include "support/wav_file.h"

namespace g4::data {
namespace {

namespace fs = std::filesystem;

// The example recipe's tokenizer: media tokens at tiny-mm-e's ids (image 304, boundaries 300/301).
const io::Tokenizer& tokenizer() {
  static const auto tok = io::load_tokenizer(test::source_dir() + "/recipes/multimodal/data/tokenizer.json");
  return *tok;
}

std::string processor_file(const std::string& name) {
  return test::data_dir() + "/hf-gemma4-mm/processor/" + name;
}

// tiny-mm-e's tower: patch 6, pooling 3; 70 soft tokens at most.
io::ImageProcessorOptions tiny_options() {
  io::ImageProcessorOptions o;
  o.patch_size = 6;
  o.max_soft_tokens = 70;
  return o;
}

DataOptions options_for(const std::string& file, int64_t seq_len = 512) {
  DataOptions o;
  o.files = {file};
  o.format = "chat";
  o.seq_len = seq_len;
  o.validation_fraction = 0;
  o.image_processor = tiny_options();
  return o;
}

std::string image_part(const std::string& path) {
  return R"({"type": "image", "path": ")" + path + R"("})";
}
std::string text_part(const std::string& text) {
  return R"({"type": "text", "text": ")" + text + R"("})";
}
std::string chat_line(const std::string& user_parts, const std::string& reply) {
  return R"({"messages": [{"role": "user", "content": [)" + user_parts + R"(]}, {"role": "assistant", "content": ")" +
         reply + R"("}]})";
}

std::vector<float> write_wav(const std::string& path, size_t samples, uint32_t seed, uint32_t rate = 16000) {
  test::write_random_wav(path, samples, seed, rate);
  return io::read_wav_16k(path);
}

void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  EXPECT_EQ(std::memcmp(got.raw(), want.raw(), got.nbytes()), 0) << what << " differs";
}

// Lengths of the runs of image soft tokens (type 1) of a row-major [B, S] tensor, in order.
std::vector<int64_t> image_runs(const Tensor& types) {
  std::vector<int64_t> runs;
  const int64_t S = types.size(1);
  for (int64_t i = 0; i < types.numel(); ++i) {
    const bool starts = element_as_int(types, i) == 1 && (i % S == 0 || element_as_int(types, i - 1) != 1);
    if (starts) runs.push_back(0);
    if (element_as_int(types, i) == 1) ++runs.back();
  }
  return runs;
}

// The batch's images are those its soft-token runs stand for, in row-major order: `one` is the
// small image alone (60 soft tokens), two.pixel_values[0] the wide one (another count).
void expect_images_in_order(const Batch& b, const io::ProcessedImages& one, const io::ProcessedImages& two) {
  const std::vector<int64_t> runs = image_runs(b.mm_token_type_ids);
  if (runs.empty()) {
    EXPECT_FALSE(b.pixel_values.defined() || b.image_position_ids.defined());
    return;
  }
  ASSERT_TRUE(b.pixel_values.defined() && b.image_position_ids.defined());
  ASSERT_EQ(b.pixel_values.size(0), static_cast<int64_t>(runs.size()));
  const int64_t row = b.pixel_values.size(1) * b.pixel_values.size(2), pos = b.pixel_values.size(1) * 2;
  ASSERT_EQ(row, one.pixel_values.size(1) * one.pixel_values.size(2));
  for (size_t k = 0; k < runs.size(); ++k) {
    const bool wide = runs[k] == two.num_soft_tokens[0];
    EXPECT_TRUE(wide || runs[k] == one.num_soft_tokens[0]) << runs[k];
    const io::ProcessedImages& src = wide ? two : one;
    EXPECT_EQ(std::memcmp(b.pixel_values.data<float>() + static_cast<int64_t>(k) * row, src.pixel_values.data<float>(),
                          static_cast<size_t>(row) * sizeof(float)),
              0)
        << "pixel_values of image " << k;
    EXPECT_EQ(std::memcmp(b.image_position_ids.data<int64_t>() + static_cast<int64_t>(k) * pos,
                          src.image_position_ids.data<int64_t>(), static_cast<size_t>(pos) * sizeof(int64_t)),
              0)
        << "image_position_ids of image " << k;
  }
}

TEST(MultimodalData, ReaderErrorsNameTheLineAndThePart) {
  test::TempDir dir;
  const std::string f = dir / "chat.jsonl";
  const auto error_for = [&](const std::string& line) {
    test::write_text(f, R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})"
                        "\n" +
                            line + "\n");
    return test::error_of([&] { load_documents(options_for(f), tokenizer()); });
  };
  std::string e = error_for(chat_line(R"({"type": "image_url", "image_url": {"url": "x.png"}})", "a"));
  EXPECT_NE(e.find(f + ":2: messages[0].content[0]: part type 'image_url' is not supported"), std::string::npos) << e;
  e = error_for(chat_line(R"({"type": "image"})", "a"));
  EXPECT_NE(e.find(f + ":2: messages[0].content[0]: missing key 'path'"), std::string::npos) << e;
  e = error_for(chat_line(text_part("a") + ", 3", "a"));
  EXPECT_NE(e.find(f + ":2: messages[0].content[1] must be a {type, ...} object"), std::string::npos) << e;
  e = error_for(chat_line(R"({"type": "text", "text": 5})", "a"));
  EXPECT_NE(e.find(f + ":2: messages[0].content[0]: 'text' must be a string"), std::string::npos) << e;
  e = error_for(chat_line(image_part("missing.png"), "a"));
  EXPECT_NE(e.find(f + ":2: "), std::string::npos) << e;
  EXPECT_NE(e.find((dir / "missing.png")), std::string::npos) << e;
  test::write_text(dir / "not-an-image.png", "text");
  e = error_for(chat_line(image_part("not-an-image.png"), "a"));
  EXPECT_NE(e.find(f + ":2: "), std::string::npos) << e;
  EXPECT_NE(e.find("not-an-image.png"), std::string::npos) << e;
}

// Rows that tools/probe_train_media.py found training on something other than they say, or failing
// without naming their file, now stop with an error naming the line and the file.
TEST(MultimodalData, ProbedRowsAreClearErrors) {
  test::TempDir dir;
  const std::string f = dir / "chat.jsonl";
  const auto error_for = [&](const std::string& line, DataOptions o) {
    test::write_text(f, line + "\n");
    return test::error_of([&] { load_documents(o, tokenizer()); });
  };
  const auto error_of_line = [&](const std::string& line) { return error_for(line, options_for(f)); };
  test::write_random_png(dir / "a.png", 12, 20, 1);
  // A placeholder written in the text with no media part: it trained on the token's embedding.
  std::string e = error_of_line(chat_line(text_part("look <|image|> here"), "a"));
  EXPECT_NE(e.find(f + ":1: the text holds <|image|>, a media placeholder with no media part"), std::string::npos)
      << e;
  e = error_of_line(R"({"messages": [{"role": "user", "content": "hear <|audio|>"}, )"
                    R"({"role": "assistant", "content": "ok"}]})");
  EXPECT_NE(e.find(f + ":1: the text holds <|audio|>"), std::string::npos) << e;
  DataOptions text = options_for(f);
  text.format = "jsonl";
  e = error_for(R"({"text": "a <|image|> in plain text"})", text);
  EXPECT_NE(e.find(f + ":1: the text holds <|image|>"), std::string::npos) << e;
  // A boundary token written beside a real image: the span would never be filled.
  e = error_of_line(chat_line(image_part("a.png") + ", " + text_part("<|image> open"), "a"));
  EXPECT_NE(e.find(f + ":1: the text holds <|image>, a media boundary token"), std::string::npos) << e;
  // Keys a part does not read (a typo, another schema), and media listed beside the messages.
  e = error_of_line(chat_line(R"({"type": "image", "path": "a.png", "detial": "high"})", "a"));
  EXPECT_NE(e.find(f + ":1: messages[0].content[0]: unknown key 'detial' in a part of type 'image'"),
            std::string::npos)
      << e;
  e = error_of_line(chat_line(R"({"type": "text", "text": "hi", "path": "a.png"})", "a"));
  EXPECT_NE(e.find("unknown key 'path' in a part of type 'text'"), std::string::npos) << e;
  e = error_of_line(R"({"images": ["a.png"], "messages": [{"role": "user", "content": "what?"}, )"
                    R"({"role": "assistant", "content": "ok"}]})");
  EXPECT_NE(e.find(f + ":1: the row's 'images' is not read"), std::string::npos) << e;
  // Null keys (Arrow's union of the parts' keys) still read.
  test::write_text(f, chat_line(R"({"type": "image", "path": "a.png", "text": null}, )"
                                R"({"type": "text", "text": "what?", "path": null})",
                                "a") +
                          "\n");
  EXPECT_EQ(load_documents(options_for(f), tokenizer()).size(), 1u);
  // A relative path says it was taken from the data file's folder.
  e = error_of_line(chat_line(image_part("elsewhere.png"), "a"));
  EXPECT_NE(e.find(f + ":1: messages[0].content[0]: image file 'elsewhere.png' not found at " +
                   (dir / "elsewhere.png") + " (a relative path in a data file is taken from the data file's folder"),
            std::string::npos)
      << e;
  // A clip too short for a frame names its file (the extractor's error named none).
  test::write_random_wav(dir / "short.wav", 100, 2);
  e = error_of_line(chat_line(R"({"type": "audio", "path": "short.wav"})", "a"));
  EXPECT_NE(e.find(f + ":1: WAV file " + (dir / "short.wav") + " holds 100 samples at 16 kHz"), std::string::npos)
      << e;
  // An image with more patches along a side than the tower has positions (tiny-mm-e: 128); it
  // failed in the tower's forward, naming no file.
  test::write_random_png(dir / "thin.png", 3000, 1, 3);
  DataOptions tower = options_for(f);
  tower.image_processor.position_embedding_size = 128;
  e = error_for(chat_line(image_part("thin.png"), "a"), tower);
  EXPECT_NE(e.find(f + ":1: image " + (dir / "thin.png") +
                   " (1x3000) resized to 18x1260 is 3x210 patches, more along a side than the vision tower's "
                   "position_embedding_size 128"),
            std::string::npos)
      << e;
}

// The image's soft tokens (as many as the processor computes) sit between <|image> and <image|>,
// are typed 1 and never trained; the reply keeps exactly the trained tokens it has without media.
TEST(MultimodalData, DocumentIdsLabelsAndTokenTypes) {
  test::TempDir dir;
  const std::string image = processor_file("rgba_97x150.png");
  test::write_text(dir / "chat.jsonl",
                   chat_line(image_part(image) + ", " + text_part("What is it?"), "A cat.") + "\n" +
                       R"({"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": )"
                       R"([{"type": "text", "text": "A cat."}, )" +
                       image_part(image) + "]}]}\n");
  const std::vector<Document> docs = load_documents(options_for(dir / "chat.jsonl"), tokenizer());
  ASSERT_EQ(docs.size(), 2u);
  const io::ProcessedImages want = io::process_images({io::read_image(image)}, tiny_options());
  ASSERT_EQ(want.num_soft_tokens, (std::vector<int64_t>{60}));
  const io::Tokenizer& tok = tokenizer();
  const int32_t boi = *tok.token_to_id("<|image>"), eoi = *tok.token_to_id("<image|>"),
                soft = *tok.token_to_id("<|image|>");
  for (const Document& d : docs) {
    SCOPED_TRACE(d.source);
    ASSERT_EQ(d.mm_types.size(), d.ids.size());
    ASSERT_TRUE(d.media);
    ASSERT_EQ(d.media->images.size(), 1u);
    EXPECT_EQ(d.media->images[0].path, image);
    // Processed when used: the codes give the processor's pixel_values back bit for bit.
    const ProcessedMedia m = process_document_media(*d.media);
    Tensor values = Tensor::empty(m.pixel_codes.shape(), DType::F32);
    for (int64_t i = 0; i < values.numel(); ++i) values.data<float>()[i] = pixel_value(m.pixel_codes.data<uint8_t>()[i]);
    expect_same(values, want.pixel_values, "pixel_values");
    expect_same(m.image_position_ids, want.image_position_ids, "image_position_ids");
    EXPECT_FALSE(m.input_features.defined());
    int64_t soft_tokens = 0;
    size_t open = 0;
    for (size_t t = 0; t < d.ids.size(); ++t) {
      EXPECT_EQ(d.mm_types[t], d.ids[t] == soft ? 1 : 0) << t;
      if (d.ids[t] == soft || d.ids[t] == boi || d.ids[t] == eoi) {
        EXPECT_EQ(d.trained[t], 0) << t;
      }
      soft_tokens += d.ids[t] == soft;
      if (d.ids[t] == boi) open = t;
    }
    EXPECT_EQ(soft_tokens, 60);
    EXPECT_EQ(d.ids[open + 61], eoi);
  }
  // The reply of the first conversation: trained exactly as the same conversation without media.
  std::vector<int32_t> trained_media, trained_text;
  for (size_t t = 0; t < docs[0].ids.size(); ++t)
    if (docs[0].trained[t]) trained_media.push_back(docs[0].ids[t]);
  const Document text = chat_document(render_chat_marked({{"user", "What is it?"}, {"assistant", "A cat."}}), tok);
  for (size_t t = 0; t < text.ids.size(); ++t)
    if (text.trained[t]) trained_text.push_back(text.ids[t]);
  EXPECT_EQ(trained_media, trained_text);
  ASSERT_FALSE(trained_media.empty());
  EXPECT_EQ(trained_media.back(), *tok.token_to_id("<turn|>"));
  // The second: the reply's text is trained, its image's tokens are not.
  std::vector<int32_t> trained_reply;
  for (size_t t = 0; t < docs[1].ids.size(); ++t)
    if (docs[1].trained[t]) trained_reply.push_back(docs[1].ids[t]);
  const std::vector<int32_t> reply = tok.encode("A cat.");
  ASSERT_GT(trained_reply.size(), reply.size());
  EXPECT_EQ(std::vector<int32_t>(trained_reply.begin(), trained_reply.begin() + static_cast<long>(reply.size())),
            reply);
  for (int32_t id : trained_reply) EXPECT_TRUE(id != soft && id != boi && id != eoi);
}

// Images of several documents in one row and over two rows: the batch's pixel_values are the
// processor's, in the order their soft tokens appear row by row; clips are padded as the feature
// extractor pads the batch of all of them.
TEST(MultimodalData, BatchMediaEqualTheProcessors) {
  test::TempDir dir;
  const std::string small = processor_file("rgba_97x150.png"), wide = processor_file("scene_1200x280.jpg");
  const std::vector<float> short_clip = write_wav(dir / "short.wav", 3000, 1);
  // A 44.1 kHz clip is resampled on the way in (7000 samples at 16 kHz); its soft tokens are counted
  // from its length alone when the dataset is built, and must agree with the features made later.
  const std::vector<float> long_clip = write_wav(dir / "long.wav", 19294, 2, 44100);
  ASSERT_EQ(long_clip.size(), 7001u);
  test::write_text(dir / "chat.jsonl",
                   chat_line(image_part(small) + ", " + text_part("a?"), "b") + "\n" +
                       chat_line(image_part(wide) + ", " + image_part(small) + ", " + text_part("c?"), "d") + "\n" +
                       chat_line(R"({"type": "audio", "path": "short.wav"}, )" + text_part("e?"), "f") + "\n" +
                       chat_line(R"({"type": "audio", "path": "long.wav"}, )" + text_part("g?"), "h") + "\n" +
                       R"({"messages": [{"role": "user", "content": "i?"}, {"role": "assistant", "content": "j"}]})"
                       "\n");
  const io::ImageProcessorOptions o = tiny_options();
  const io::ProcessedImages one = io::process_images({io::read_image(small)}, o);
  const io::ProcessedImages two = io::process_images({io::read_image(wide), io::read_image(small)}, o);
  ASSERT_NE(two.num_soft_tokens[0], two.num_soft_tokens[1]);

  // Rows of 300 tokens (BFD decides which documents share one): every batch of one row holds the
  // images its soft-token runs stand for, in their order; there are 3 images and 2 clips in all.
  const PackedDataset rows(options_for(dir / "chat.jsonl", 300), tokenizer());
  EXPECT_EQ(rows.images(), 3);
  EXPECT_EQ(rows.audio_clips(), 2);
  int64_t images = 0, clip_count = 0;
  for (int64_t i = 0; i < rows.train_rows(); ++i) {
    const Batch b = rows.train_batch(1, i);
    if (!b.mm_token_type_ids.defined()) continue;
    ASSERT_EQ(b.mm_token_type_ids.shape(), b.input_ids.shape());
    expect_images_in_order(b, one, two);
    images += b.pixel_values.defined() ? b.pixel_values.size(0) : 0;
    clip_count += b.input_features.defined() ? b.input_features.size(0) : 0;
  }
  EXPECT_EQ(images, 3);
  EXPECT_EQ(clip_count, 2);

  // All documents in one row of a batch of one: three images, two clips.
  DataOptions all = options_for(dir / "chat.jsonl", 2048);
  const PackedDataset packed(all, tokenizer());
  ASSERT_EQ(packed.train_rows(), 1);
  const Batch b = packed.train_batch(1, 0);
  ASSERT_EQ(b.pixel_values.size(0), 3);
  expect_images_in_order(b, one, two);
  const io::AudioFeatures clips = io::extract_audio_features({short_clip, long_clip});
  const io::AudioFeatures clips_swapped = io::extract_audio_features({long_clip, short_clip});
  ASSERT_TRUE(b.input_features.defined());
  int64_t valid0 = 0, valid1 = 0;
  const int64_t frames = b.input_features_mask.size(1);
  for (int64_t t = 0; t < frames; ++t) {
    valid0 += element_as_int(b.input_features_mask, t);
    valid1 += element_as_int(b.input_features_mask, frames + t);
  }
  const bool short_first = valid0 < valid1;
  expect_same(b.input_features, (short_first ? clips : clips_swapped).input_features, "input_features");
  expect_same(b.input_features_mask, (short_first ? clips : clips_swapped).input_features_mask, "input_features_mask");
  int64_t audio = 0;
  for (int64_t i = 0; i < b.mm_token_type_ids.numel(); ++i) audio += element_as_int(b.mm_token_type_ids, i) == 3;
  EXPECT_EQ(audio, clips.num_soft_tokens[0] + clips.num_soft_tokens[1]);

  // The fingerprint sees the media: another image of the same size changes it.
  const uint64_t before = packed.fingerprint();
  EXPECT_EQ(PackedDataset(all, tokenizer()).fingerprint(), before);
  all.max_soft_tokens = 140;
  EXPECT_NE(PackedDataset(all, tokenizer()).fingerprint(), before);
}

// Offsets move with the expansion: past a placeholder by its expansion's extra length, before it not.
TEST(MultimodalData, ExpansionMovesOffsets) {
  const std::string text = "ab<|image|>cd<|audio|>e";
  std::vector<size_t> offsets = {0, 2, 11, 12, 13, 22, 23};
  const std::string out = expand_media(text, MediaSoftTokens{{2}, {1}}, "prompt", &offsets);
  ASSERT_EQ(out, "ab<|image><|image|><|image|><image|>cd<|audio><|audio|><audio|>e");
  const size_t image = std::string("<|image><|image|><|image|><image|>").size(),
               audio = std::string("<|audio><|audio|><audio|>").size();
  EXPECT_EQ(offsets,
            (std::vector<size_t>{0, 2, 2 + image, 3 + image, 4 + image, 4 + image + audio, 5 + image + audio}));
  EXPECT_EQ(out.substr(offsets[3], 2), "d<");
  std::vector<size_t> past = {text.size() + 1};
  const std::string e = test::error_of([&] { expand_media(text, MediaSoftTokens{{2}, {1}}, "prompt", &past); });
  EXPECT_NE(e.find("prompt: offset 24 is past the end of the text"), std::string::npos) << e;
}

// Two turns, each with an image: both replies trained exactly as without the images.
TEST(MultimodalData, RepliesOfEveryTurnStayTrained) {
  test::TempDir dir;
  const std::string image = processor_file("rgba_97x150.png");
  const std::string user = R"({"role": "user", "content": [)" + image_part(image) + ", " + text_part("Q?") + "]}";
  test::write_text(dir / "chat.jsonl", R"({"messages": [)" + user + R"(, {"role": "assistant", "content": "One."}, )" +
                                           user + R"(, {"role": "assistant", "content": "Two."}]})" + "\n");
  const std::vector<Document> docs = load_documents(options_for(dir / "chat.jsonl"), tokenizer());
  ASSERT_EQ(docs.size(), 1u);
  const Document text = chat_document(
      render_chat_marked({{"user", "Q?"}, {"assistant", "One."}, {"user", "Q?"}, {"assistant", "Two."}}), tokenizer());
  std::vector<int32_t> got, want;
  for (size_t t = 0; t < docs[0].ids.size(); ++t)
    if (docs[0].trained[t]) got.push_back(docs[0].ids[t]);
  for (size_t t = 0; t < text.ids.size(); ++t)
    if (text.trained[t]) want.push_back(text.ids[t]);
  EXPECT_EQ(got, want);
  int64_t soft = 0;
  for (uint8_t type : docs[0].mm_types) soft += type == 1;
  EXPECT_EQ(soft, 120);
  EXPECT_EQ(docs[0].media->images.size(), 2u);
  EXPECT_EQ(process_document_media(*docs[0].media).pixel_codes.size(0), 2);
}

TEST(MultimodalData, TextOnlyBatchesHaveNoMedia) {
  test::TempDir dir;
  test::write_text(dir / "chat.jsonl", chat_line(text_part("a?"), "b") + "\n");
  const PackedDataset ds(options_for(dir / "chat.jsonl"), tokenizer());
  EXPECT_EQ(ds.images() + ds.audio_clips(), 0);
  const Batch b = ds.train_batch(1, 0);
  EXPECT_FALSE(b.mm_token_type_ids.defined() || b.pixel_values.defined() || b.image_position_ids.defined() ||
               b.input_features.defined() || b.input_features_mask.defined());
}

TEST(MultimodalData, OverlongMultimodalDocumentsAreRefused) {
  test::TempDir dir;
  test::write_text(dir / "chat.jsonl", "\n" + chat_line(image_part(processor_file("rgba_97x150.png")), "b") + "\n");
  for (const char* overlong : {"split", "truncate", "error"}) {
    DataOptions o = options_for(dir / "chat.jsonl", 40);
    o.overlong = overlong;
    const std::string e = test::error_of([&] { PackedDataset(o, tokenizer()); });
    EXPECT_NE(e.find((dir / "chat.jsonl") + ":2: multimodal document of "), std::string::npos) << e;
    EXPECT_NE(e.find("longer than seq_len 40"), std::string::npos) << e;
  }
  DataOptions o = options_for(dir / "chat.jsonl");
  o.max_soft_tokens = 100;
  const std::string e = test::error_of([&] { PackedDataset(o, tokenizer()); });
  EXPECT_NE(e.find("data option max_soft_tokens: 100"), std::string::npos) << e;
}

}  // namespace
}  // namespace g4::data

namespace g4::data {
namespace {

// tiny-mm-e's tower for video frames: patch 6, 70 soft tokens, `frames` sampled (0: every frame).
io::VideoProcessorOptions tiny_video_options(int64_t frames) {
  io::VideoProcessorOptions o;
  o.frame = tiny_options();
  o.num_frames = frames;
  o.sample_frames = frames > 0;
  return o;
}

std::string video_folder_part(const std::string& folder, const std::string& fps) {
  return R"({"type": "video", "path": ")" + folder + R"(", "fps": )" + fps + "}";
}

TEST(MultimodalData, VideoReaderErrorsNameTheLineAndThePart) {
  test::TempDir dir;
  const std::string f = dir / "chat.jsonl";
  std::filesystem::create_directories(dir / "empty");
  test::write_random_png(dir / "a.png", 20, 30, 1);
  const auto error_for = [&](const std::string& part) {
    test::write_text(f, "\n" + chat_line(part, "a") + "\n");
    return test::error_of([&] { load_documents(options_for(f), tokenizer()); });
  };
  const std::string at = f + ":2: messages[0].content[0]: ";
  std::string e = error_for(R"({"type": "video", "frames": ["a.png", "gone.png"], "fps": 2})");
  EXPECT_NE(e.find(at + "frame " + (dir / "gone.png") + " does not exist"), std::string::npos) << e;
  e = error_for(R"({"type": "video", "frames": ["a.png"], "fps": 0})");
  EXPECT_NE(e.find(at + "'fps' (the frames' rate) must be a positive number, got 0"), std::string::npos) << e;
  e = error_for(R"({"type": "video", "frames": ["a.png"], "fps": -3})");
  EXPECT_NE(e.find(at + "'fps'"), std::string::npos) << e;
  e = error_for(video_folder_part("empty", "2"));
  EXPECT_NE(e.find(at + "video frame directory " + (dir / "empty") + " holds no frame files"), std::string::npos) << e;
  e = error_for(video_folder_part("nowhere", "2"));
  EXPECT_NE(e.find(at + "video frame directory"), std::string::npos) << e;
  e = error_for(R"({"type": "video", "fps": 2})");
  EXPECT_NE(e.find(at + "a video part takes either 'frames'"), std::string::npos) << e;
  e = error_for(R"({"type": "video", "frames": []})");
  EXPECT_NE(e.find(at + "'frames' must be a non-empty list"), std::string::npos) << e;
}

// A conversation with two videos (a folder of 4 frames at 2 fps, a list of 2 frames without fps),
// every frame kept: each frame's soft tokens typed 2 and untrained, after its timestamp; the batch
// carries the processor's frames, as one [1, 6, P, D] since the videos differ in length, and with
// equal lengths as [videos, frames, P, D].
TEST(MultimodalData, VideoDocumentsAndBatches) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "clip");
  for (int i = 0; i < 4; ++i) test::write_random_png(dir / ("clip/" + std::to_string(i) + ".png"), 40, 30, 10 + i);
  test::write_random_png(dir / "x.png", 40, 30, 20);
  test::write_random_png(dir / "y.png", 40, 30, 21);
  test::write_text(dir / "chat.jsonl",
                   chat_line(video_folder_part("clip", "2") + ", " + text_part("and") + ", " +
                                 R"({"type": "video", "frames": ["x.png", "y.png"]})" + ", " + text_part("same?"),
                             "no") +
                       "\n");
  DataOptions o = options_for(dir / "chat.jsonl", 1024);
  o.video_processor = tiny_video_options(0);
  const std::vector<Document> docs = load_documents(o, tokenizer());
  ASSERT_EQ(docs.size(), 1u);
  const Document& d = docs[0];
  const io::ProcessedVideo a = io::process_video({io::list_video_frames(dir / "clip"), 2.0}, o.video_processor);
  const io::ProcessedVideo b = io::process_video({{dir / "x.png", dir / "y.png"}, 0.0}, o.video_processor);
  ASSERT_EQ(a.soft_tokens_per_frame, 63);  // 30x40 -> 126x162 at patch 6: 21x27 patches
  EXPECT_EQ(a.timestamps, (std::vector<std::string>{"00:00", "00:00", "00:01", "00:01"}));
  EXPECT_EQ(b.timestamps, (std::vector<std::string>{"00:00", "00:00"}));  // 24 fps assumed
  ASSERT_TRUE(d.media);
  EXPECT_EQ(d.media->frames_per_video, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(d.media->video_frames.size(), 6u);  // the sampled frames, each hashed
  int64_t video_tokens = 0;
  const int32_t video = *tokenizer().token_to_id("<|video|>");
  for (size_t t = 0; t < d.ids.size(); ++t) {
    EXPECT_EQ(d.mm_types[t] == 2, d.ids[t] == video) << t;
    if (d.ids[t] == video) {
      EXPECT_EQ(d.trained[t], 0) << t;
    }
    video_tokens += d.ids[t] == video;
  }
  EXPECT_EQ(video_tokens, 6 * 63);

  const PackedDataset ds(o, tokenizer());
  EXPECT_EQ(ds.videos(), 2);
  const Batch batch = ds.train_batch(1, 0);
  ASSERT_TRUE(batch.pixel_values_videos.defined());
  EXPECT_FALSE(batch.pixel_values.defined());
  ASSERT_EQ(batch.pixel_values_videos.shape(), (Shape{1, 6, 630, 108}));
  ASSERT_EQ(batch.video_position_ids.shape(), (Shape{1, 6, 630, 2}));
  const size_t bytes_a = a.pixel_values.nbytes(), pos_a = a.position_ids.nbytes();
  EXPECT_EQ(std::memcmp(batch.pixel_values_videos.raw(), a.pixel_values.raw(), bytes_a), 0);
  EXPECT_EQ(std::memcmp(static_cast<const char*>(batch.pixel_values_videos.raw()) + bytes_a, b.pixel_values.raw(),
                        b.pixel_values.nbytes()),
            0);
  EXPECT_EQ(std::memcmp(batch.video_position_ids.raw(), a.position_ids.raw(), pos_a), 0);
  EXPECT_EQ(std::memcmp(static_cast<const char*>(batch.video_position_ids.raw()) + pos_a, b.position_ids.raw(),
                        b.position_ids.nbytes()),
            0);

  // Two frames of each: [2, 2, P, D]; the fingerprint moves with the sampling.
  const uint64_t all_frames = ds.fingerprint();
  o.video_processor = tiny_video_options(2);
  const PackedDataset two(o, tokenizer());
  EXPECT_EQ(two.train_batch(1, 0).pixel_values_videos.shape(), (Shape{2, 2, 630, 108}));
  EXPECT_NE(two.fingerprint(), all_frames);
}

// Every tensor of two batches, bit for bit.
void expect_same_batches(const Batch& a, const Batch& b, const std::string& what) {
  SCOPED_TRACE(what);
  for (const auto member :
       {&Batch::input_ids, &Batch::labels, &Batch::position_ids, &Batch::mm_token_type_ids, &Batch::pixel_values,
        &Batch::image_position_ids, &Batch::input_features, &Batch::input_features_mask, &Batch::pixel_values_videos,
        &Batch::video_position_ids}) {
    ASSERT_EQ((a.*member).defined(), (b.*member).defined());
    if ((a.*member).defined()) expect_same(a.*member, b.*member, "a batch tensor");
  }
}

// Media are processed when a batch uses them: a dataset caching none, one caching everything and
// the same dataset asked again give bit-identical batches (and they equal the processors': the
// tests above); the fingerprint is over the files' bytes and the options, not their folder; a file
// changed or removed after loading is an error naming it.
TEST(MultimodalData, LazyMediaAreTheSameBatchesAndNameChangedFiles) {
  test::TempDir dir;
  std::filesystem::copy_file(processor_file("rgba_97x150.png"), dir / "small.png");
  std::filesystem::copy_file(processor_file("scene_1200x280.jpg"), dir / "wide.jpg");
  test::write_random_wav(dir / "a.wav", 3000, 1);
  test::write_random_wav(dir / "b.wav", 5000, 2);
  std::filesystem::create_directories(dir / "clip");
  for (int i = 0; i < 3; ++i) test::write_random_png(dir / ("clip/" + std::to_string(i) + ".png"), 40, 30, 30 + i);
  test::write_text(dir / "chat.jsonl",
                   chat_line(image_part("small.png") + R"(, {"type": "audio", "path": "a.wav"}, )" + text_part("a?"),
                             "b") + "\n" +
                       chat_line(image_part("wide.jpg") + ", " + image_part("small.png") + ", " + text_part("c?"), "d") +
                       "\n" + chat_line(R"({"type": "audio", "path": "b.wav"}, )" + text_part("e?"), "f") + "\n" +
                       chat_line(video_folder_part("clip", "2") + ", " + text_part("g?"), "h") + "\n");
  DataOptions o = options_for(dir / "chat.jsonl", 300);
  o.video_processor = tiny_video_options(0);
  o.media_cache_mb = 0;
  const PackedDataset uncached(o, tokenizer());
  o.media_cache_mb = 64;
  const PackedDataset cached(o, tokenizer());
  ASSERT_GT(uncached.train_rows(), 1);
  EXPECT_EQ(cached.fingerprint(), uncached.fingerprint());
  int64_t with_media = 0;
  for (int64_t i = 0; i < 2 * uncached.train_rows(); ++i) {  // two epochs: the second from the cache
    const Batch want = uncached.train_batch(1, i);
    with_media += want.mm_token_type_ids.defined();
    expect_same_batches(cached.train_batch(1, i), want, "batch " + std::to_string(i) + ", cached");
    expect_same_batches(uncached.train_batch(1, i), want, "batch " + std::to_string(i) + ", again");
  }
  EXPECT_GT(with_media, 0);

  // The same files in another folder: the same fingerprint.
  test::TempDir other;
  for (const char* f : {"small.png", "wide.jpg", "a.wav", "b.wav", "chat.jsonl"})
    std::filesystem::copy_file(dir / f, other / f);
  std::filesystem::copy(dir / "clip", other / "clip", std::filesystem::copy_options::recursive);
  DataOptions moved = o;
  moved.files = {other / "chat.jsonl"};
  EXPECT_EQ(PackedDataset(moved, tokenizer()).fingerprint(), cached.fingerprint());

  // A removed clip, then (the clip back) a changed image (another valid PNG of the same size: the
  // soft tokens would still fit), are errors naming the file and the conversation, when a batch
  // needs them.
  o.media_cache_mb = 0;
  const PackedDataset loaded(o, tokenizer());
  const auto error_naming = [&](const std::string& file) {
    for (int64_t i = 0; i < loaded.train_rows(); ++i) {
      const std::string e = test::error_of([&] { loaded.train_batch(1, i); });
      if (e.find(file) != std::string::npos) return e;
    }
    return std::string("no batch fails naming ") + file;
  };
  std::filesystem::remove(dir / "b.wav");
  const std::string gone = error_naming("b.wav");
  std::filesystem::copy_file(other / "b.wav", dir / "b.wav");
  test::write_random_png(dir / "small.png", 150, 97, 99);
  const std::string changed = error_naming("small.png");
  EXPECT_NE(changed.find("the image file " + (dir / "small.png") + " changed since the data was loaded"),
            std::string::npos)
      << changed;
  EXPECT_NE(changed.find((dir / "chat.jsonl") + ":"), std::string::npos) << changed;
  EXPECT_NE(gone.find("the audio file " + (dir / "b.wav") + " was read when the data was loaded but cannot be read now"),
            std::string::npos)
      << gone;
  EXPECT_NE(gone.find((dir / "chat.jsonl") + ":3"), std::string::npos) << gone;
}

// The cache keeps at most its bound, dropping the least recently used.
TEST(MultimodalData, MediaCacheKeepsItsBound) {
  test::TempDir dir;
  std::vector<std::shared_ptr<const DocumentMedia>> docs;
  for (int i = 0; i < 3; ++i) {
    const std::string f = dir / ("i" + std::to_string(i) + ".png");
    test::write_random_png(f, 30, 40, 50 + static_cast<uint32_t>(i));
    docs.push_back(plan_document_media("doc " + std::to_string(i), {f}, {}, {}, tiny_options(), {}, nullptr));
  }
  const int64_t one = process_document_media(*docs[0]).bytes();
  MediaCache cache(2 * one);
  const auto first = cache.get(*docs[0]);
  EXPECT_EQ(cache.get(*docs[0]).get(), first.get());  // kept
  cache.get(*docs[1]);
  cache.get(*docs[0]);  // now the most recent
  cache.get(*docs[2]);  // drops docs[1]
  EXPECT_EQ(cache.entries(), 2);
  EXPECT_LE(cache.bytes(), 2 * one);
  EXPECT_EQ(cache.get(*docs[0]).get(), first.get());
  MediaCache none(0);
  none.get(*docs[0]);
  EXPECT_EQ(none.entries(), 0);
}

}  // namespace
}  // namespace g4::data


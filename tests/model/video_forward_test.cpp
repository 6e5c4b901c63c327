// Video in the forward (tiny-mm-bidir, a use_bidirectional_attention "vision" model): the frames of
// pixel_values_videos go through the same vision tower as images and fill the video placeholders in
// (video, frame) order, after the images; each frame is its own bidirectional block; the loss
// reaches the tower through the frames.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "autograd/variable.h"
#include "io/image_processor.h"
#include "io/video_processor.h"
#include "model/state_dict_adapter.h"
#include "model/vision_tower.h"
#include "io/io_test_util.h"
#include "support/png_file.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

constexpr int64_t kBoi = 300, kEoi = 301, kImage = 304, kVideo = 306, kTokens = 63;

// A prompt of text ids around an image and a three-frame video (order as asked), its token types,
// and the same with the video's tokens as image tokens.
struct Prompt {
  std::vector<int64_t> ids, types, as_images;
};

Prompt make_prompt(bool video_first, int64_t frames) {
  Prompt p;
  const auto add = [&](int64_t id, int64_t type) {
    p.ids.push_back(id);
    p.types.push_back(type);
    p.as_images.push_back(type == 2 ? kImage : id);
  };
  const auto image = [&] {
    add(kBoi, 0);
    for (int64_t i = 0; i < kTokens; ++i) add(kImage, 1);
    add(kEoi, 0);
  };
  const auto video = [&] {
    for (int64_t f = 0; f < frames; ++f) {
      if (f) add(13, 0);  // " "
      add(20 + f, 0);     // the frame's timestamp
      add(kBoi, 0);
      for (int64_t i = 0; i < kTokens; ++i) add(kVideo, 2);
      add(kEoi, 0);
    }
  };
  add(2, 0);
  add(10, 0);
  video_first ? video() : image();
  add(11, 0);
  video_first ? image() : video();
  add(12, 0);
  return p;
}

Tensor row(const std::vector<int64_t>& v) { return Tensor::from_vector(v, {1, static_cast<int64_t>(v.size())}); }

// [n, P, D] pixel values of images and video frames, in the given order.
Tensor concat_frames(const std::vector<const Tensor*>& parts) {
  int64_t n = 0;
  for (const Tensor* t : parts) n += t->numel() / (t->size(-2) * t->size(-1));
  const Tensor& first = *parts[0];
  Tensor out = Tensor::empty({n, first.size(-2), first.size(-1)}, first.dtype());
  char* at = static_cast<char*>(out.raw());
  for (const Tensor* t : parts) {
    std::memcpy(at, t->raw(), t->nbytes());
    at += t->nbytes();
  }
  return out;
}

class VideoForward : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = model::load_hf_model(test::data_dir() + "/hf-gemma4-mm/tiny-mm-bidir");
    ASSERT_EQ(model_->config().vision->video_token_id, kVideo);
    opt_.frame.patch_size = 4;
    opt_.num_frames = 3;
    io::VideoFrames frames{{}, 4.0};
    for (int i = 0; i < 5; ++i) {
      frames.files.push_back(dir_ / ("f" + std::to_string(i) + ".png"));
      test::write_random_png(frames.files.back(), 28, 20, 40 + static_cast<uint32_t>(i));
    }
    video_ = io::process_video(frames, opt_);
    ASSERT_EQ(video_.soft_tokens_per_frame, kTokens);  // 20x28 -> 84x108 at patch 4: 21x27 patches
    image_ = io::process_images({test::write_random_png(dir_ / "image.png", 28, 20, 7)}, opt_.frame);
    ASSERT_EQ(image_.num_soft_tokens, (std::vector<int64_t>{kTokens}));
  }
  test::TempDir dir_;
  std::unique_ptr<model::Gemma4> model_;
  io::VideoProcessorOptions opt_;
  io::ProcessedVideo video_;
  io::ProcessedImages image_;
};

// The video's soft tokens are the image path's for the same frames: the forward with an image and
// a video gives the logits of the same prompt with the frames given as images (in prompt order)
// and their placeholders as image tokens, both with the image first and with the video first.
TEST_F(VideoForward, FramesAreImagesOfTheSameTower) {
  ag::NoGrad no_grad;
  const auto [videos, positions] = io::stack_videos({video_});
  for (bool video_first : {false, true}) {
    SCOPED_TRACE(video_first ? "video first" : "image first");
    const Prompt p = make_prompt(video_first, 3);
    model::ForwardInputs in;
    in.input_ids = row(p.ids);
    in.mm_token_type_ids = row(p.types);
    in.pixel_values = image_.pixel_values;
    in.image_position_ids = image_.image_position_ids;
    in.pixel_values_videos = videos;
    in.video_position_ids = positions;
    const Tensor logits = model_->forward(in).logits.value();

    model::ForwardInputs as_images;
    as_images.input_ids = row(p.as_images);
    std::vector<int64_t> types = p.types;
    for (int64_t& t : types) t = t == 2 ? 1 : t;
    as_images.mm_token_type_ids = row(types);
    const Tensor* first = video_first ? &video_.pixel_values : &image_.pixel_values;
    const Tensor* second = video_first ? &image_.pixel_values : &video_.pixel_values;
    as_images.pixel_values = concat_frames({first, second});
    as_images.image_position_ids =
        video_first ? concat_frames({&video_.position_ids, &image_.image_position_ids})
                    : concat_frames({&image_.image_position_ids, &video_.position_ids});
    const Tensor want = model_->forward(as_images).logits.value();

    ASSERT_EQ(logits.shape(), want.shape());
    double max_diff = 0;
    for (int64_t i = 0; i < logits.numel(); ++i) {
      ASSERT_TRUE(std::isfinite(logits.data<float>()[i])) << i;
      max_diff = std::max(max_diff, double(std::abs(logits.data<float>()[i] - want.data<float>()[i])));
    }
    // The same tower and merge: equal up to the rounding of the tower's products, whose row counts
    // differ (one call for all frames against one per input). With OpenBLAS's AVX-512 kernels that
    // was exact; its AVX2 kernels (Haswell, Zen) give 1.7e-5, its SSE3 ones 1.1e-5.
    EXPECT_LT(max_diff, 5e-5);
    // The image's soft tokens come from pixel_values alone: the first frame in its place changes the
    // logits.
    if (!video_first) {
      model::ForwardInputs swapped = in;
      swapped.pixel_values = Tensor::empty({1, 630, 48}, DType::F32);
      std::memcpy(swapped.pixel_values.raw(), video_.pixel_values.raw(), swapped.pixel_values.nbytes());
      const Tensor other = model_->forward(swapped).logits.value();
      double d = 0;
      for (int64_t i = 0; i < other.numel(); ++i)
        d = std::max(d, double(std::abs(other.data<float>()[i] - logits.data<float>()[i])));
      EXPECT_GT(d, 1e-4);
    }
  }
}

// Each frame is its own block (its soft tokens only: the timestamp and boundaries between frames
// are text), numbered after the image's.
TEST_F(VideoForward, EachFrameIsOneBidirectionalBlock) {
  const Prompt p = make_prompt(false, 3);
  const Tensor blocks = model::vision_block_ids(row(p.types));
  std::vector<int64_t> want;
  int64_t block = -1;
  for (size_t t = 0; t < p.types.size(); ++t) {
    if (p.types[t] != 0 && (t == 0 || p.types[t - 1] == 0)) ++block;
    want.push_back(p.types[t] != 0 ? block : -1);
  }
  ASSERT_EQ(block, 3);  // the image, then three frames
  ASSERT_EQ(blocks.numel(), static_cast<int64_t>(want.size()));
  for (size_t t = 0; t < want.size(); ++t) ASSERT_EQ(element_as_int(blocks, static_cast<int64_t>(t)), want[t]) << t;
  // The first frame's tokens: block 1, from just after its <|image> (2 + 65 + 1 + 1 + 1 = position 70).
  EXPECT_EQ(element_as_int(blocks, 69), -1);
  EXPECT_EQ(element_as_int(blocks, 70), 1);
  EXPECT_EQ(element_as_int(blocks, 70 + kTokens - 1), 1);
  EXPECT_EQ(element_as_int(blocks, 70 + kTokens), -1);
}

// The loss of a prompt with a video alone reaches every parameter of the vision tower.
TEST_F(VideoForward, GradientsReachTheTower) {
  const Prompt p = make_prompt(false, 3);
  std::vector<int64_t> ids, types;
  // Drop the image: keep the text and the video.
  for (size_t t = 0; t < p.ids.size(); ++t) {
    if (p.types[t] == 1 || ((p.ids[t] == kBoi || p.ids[t] == kEoi) && t < 70 - 2)) continue;
    ids.push_back(p.ids[t]);
    types.push_back(p.types[t]);
  }
  const auto [videos, positions] = io::stack_videos({video_});
  model::ForwardInputs in;
  in.input_ids = row(ids);
  in.labels = row(ids);
  in.mm_token_type_ids = row(types);
  in.pixel_values_videos = videos;
  in.video_position_ids = positions;
  model_->params().zero_grad();
  const model::ForwardOutputs out = model_->forward(in);
  ASSERT_TRUE(std::isfinite(out.loss.value().item()));
  ag::backward(out.loss);
  int64_t tower = 0;
  for (const auto& [name, g] : model::hf_gradients(*model_)) {
    if (name.find("vision") == std::string::npos) continue;
    ++tower;
    double norm = 0;
    const Tensor g64 = g.to(DType::F64);
    for (int64_t i = 0; i < g64.numel(); ++i) norm += g64.data<double>()[i] * g64.data<double>()[i];
    EXPECT_GT(norm, 0.0) << name;
  }
  EXPECT_EQ(tower, static_cast<int64_t>(
                       model::vision_param_specs(*model_->config().vision, model_->config().hidden_size).size()));

  // Inputs that do not fit: one without the other, and frames without their tokens.
  model::ForwardInputs half = in;
  half.video_position_ids = Tensor();
  EXPECT_THROW(model_->forward(half), Error);
  model::ForwardInputs no_tokens = in;
  no_tokens.input_ids = row(std::vector<int64_t>(ids.size(), 10));
  EXPECT_THROW(model_->forward(no_tokens), Error);
}

}  // namespace
}  // namespace g4

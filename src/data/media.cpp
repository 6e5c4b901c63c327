#include "data/media.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "core/error.h"
#include "core/hash.h"
#include "io/audio_features.h"
#include "io/image.h"
#include "io/wav.h"

namespace g4::data {

namespace {

uint64_t hash_bytes(std::string_view bytes) {
  Fnv1a f;
  f.mix(bytes.data(), bytes.size());
  return f.h;
}

template <class T>
void mix_value(Fnv1a& f, const T& v) {
  f.mix(&v, sizeof v);
}

void mix_options(Fnv1a& f, const io::ImageProcessorOptions& o) {
  mix_value(f, o.max_soft_tokens);
  mix_value(f, o.patch_size);
  mix_value(f, o.pooling_kernel_size);
}

// The bytes of a file read at load time, again: an error naming the file when it is gone or its
// bytes changed since (its media would no longer be the ones the soft tokens were counted for).
std::string reread(const MediaFile& file, const std::string& kind, std::string (*read)(const std::string&)) {
  std::string bytes;
  try {
    bytes = read(file.path);
  } catch (const Error& e) {
    G4_FAIL("the ", kind, " file ", file.path, " was read when the data was loaded but cannot be read now: ",
            e.what());
  }
  G4_CHECK(hash_bytes(bytes) == file.hash, "the ", kind, " file ", file.path,
           " changed since the data was loaded (its bytes differ); restart the run to read it again");
  return bytes;
}

// The uint8 codes of the processor's pixel values (io::scaled_pixel of the code).
Tensor pixel_codes(const Tensor& pixel_values, io::PixelScale scale) {
  Tensor codes = Tensor::empty(pixel_values.shape(), DType::U8);
  const float* v = pixel_values.data<float>();
  uint8_t* c = codes.data<uint8_t>();
  for (int64_t i = 0; i < pixel_values.numel(); ++i) {
    c[i] = static_cast<uint8_t>(std::lround(v[i] * 255.0f));
    G4_CHECK(io::scaled_pixel(c[i], scale) == v[i], "pixel value ", v[i], " is not a code / 255");
  }
  return codes;
}

}  // namespace

std::shared_ptr<const DocumentMedia> plan_document_media(const std::string& source,
                                                         const std::vector<std::string>& images,
                                                         const std::vector<std::string>& audio,
                                                         const std::vector<io::VideoFrames>& videos,
                                                         const io::ImageProcessorOptions& image_options,
                                                         const io::VideoProcessorOptions& video_options,
                                                         MediaSoftTokens* soft_tokens) {
  auto m = std::make_shared<DocumentMedia>();
  m->source = source;
  m->videos = videos;
  m->image_options = image_options;
  m->video_options = video_options;
  MediaSoftTokens counts;
  Fnv1a f;
  if (!images.empty()) {
    io::check_image_processor_options(image_options, "image processor");
    mix_options(f, image_options);
  }
  for (const std::string& path : images) {
    const std::string bytes = io::read_image_file(path);
    const io::ImageSize size = io::image_size(bytes, path);
    m->images.push_back({path, hash_bytes(bytes)});
    counts.images.push_back(io::image_soft_tokens(size.height, size.width, image_options, path));
  }
  std::vector<int64_t> samples;
  for (const std::string& path : audio) {
    const std::string bytes = io::read_wav_file(path);
    const std::string what = "WAV file " + path;
    samples.push_back(io::samples_16k_count(io::parse_wav(bytes, what), what));
    // The extractor refuses a batch whose longest clip is this short without naming a file.
    G4_CHECK(samples.back() > io::kAudioHopSamples, what, " holds ", samples.back(),
             " samples at 16 kHz: a clip needs more than ", io::kAudioHopSamples,
             " (10 ms) for one valid frame and soft token");
    m->audio.push_back({path, hash_bytes(bytes)});
  }
  if (!samples.empty()) counts.audio = io::audio_soft_token_counts(samples);
  for (size_t v = 0; v < videos.size(); ++v) {
    // A document's media are read again from their files when a batch uses them.
    G4_CHECK(videos[v].encoded.empty(), source, ": video ", v, " must be frame files, not frames held in memory");
    // The frames' headers give the plan; the sampled frames' bytes are hashed on the way.
    const io::ProcessedVideo plan =
        io::plan_video(videos[v], video_options, "video " + std::to_string(v), [&](int64_t frame) {
          const std::string& path = videos[v].files[size_t(frame)];
          const std::string bytes = io::read_image_file(path);
          m->video_frames.push_back({path, hash_bytes(bytes)});
          return io::image_size(bytes, path);
        });
    m->frames_per_video.push_back(static_cast<int64_t>(plan.frame_indices.size()));
    counts.videos.push_back({plan.soft_tokens_per_frame, plan.timestamps});
  }
  if (!videos.empty()) {
    mix_options(f, video_options.frame);
    mix_value(f, video_options.sample_frames);
    mix_value(f, video_options.num_frames);
    mix_value(f, video_options.sample_fps);
  }
  for (const std::vector<MediaFile>* files : {&m->images, &m->audio, &m->video_frames}) {
    mix_value(f, files->size());
    for (const MediaFile& file : *files) mix_value(f, file.hash);
  }
  for (const std::vector<int64_t>* v : {&counts.images, &counts.audio, &m->frames_per_video}) {
    mix_value(f, v->size());
    for (int64_t n : *v) mix_value(f, n);
  }
  for (const VideoPlaceholder& p : counts.videos) {
    mix_value(f, p.soft_tokens_per_frame);
    for (const std::string& t : p.timestamps) f.mix(t.data(), t.size());
  }
  m->hash = f.h;
  if (soft_tokens) *soft_tokens = std::move(counts);
  return m;
}

namespace {

// process_document_media without the document's name in its errors.
ProcessedMedia process_media(const DocumentMedia& m) {
  ProcessedMedia out;
  std::vector<io::RgbImage> images;
  std::vector<std::string> names;
  for (const MediaFile& file : m.images) {
    images.push_back(io::decode_image(reread(file, "image", io::read_image_file), file.path));
    names.push_back(file.path);
  }
  std::vector<std::vector<float>> clips;
  for (const MediaFile& file : m.audio) {
    const std::string what = "WAV file " + file.path;
    clips.push_back(io::samples_16k(io::parse_wav(reread(file, "audio", io::read_wav_file), what), what));
  }
  PromptMedia p = process_prompt_media(images, names, clips, m.image_options);
  if (p.pixel_values.defined()) out.pixel_codes = pixel_codes(p.pixel_values, io::PixelScale::MultiplyByInverse);
  out.image_position_ids = std::move(p.image_position_ids);
  out.input_features = std::move(p.input_features);
  out.input_features_mask = std::move(p.input_features_mask);
  if (m.videos.empty()) return out;
  // The sampled frames are checked before the video processor reads them again.
  for (const MediaFile& file : m.video_frames) reread(file, "video frame", io::read_image_file);
  std::vector<Tensor> codes, positions;
  int64_t frames = 0;
  for (size_t v = 0; v < m.videos.size(); ++v) {
    const io::ProcessedVideo p = io::process_video(m.videos[v], m.video_options, "video " + std::to_string(v),
                                                   /*log_default_fps=*/false);  // logged at load
    G4_CHECK(p.pixel_values.size(0) == m.frames_per_video[v], "video ", v, " now samples ", p.pixel_values.size(0),
             " frames, but ", m.frames_per_video[v], " when the data was loaded");
    codes.push_back(pixel_codes(p.pixel_values, io::PixelScale::DivideBy255));
    positions.push_back(p.position_ids);
    frames += p.pixel_values.size(0);
  }
  // All videos' frames in order, one tensor of each kind.
  const int64_t P = codes[0].size(1), D = codes[0].size(2);
  out.video_codes = Tensor::empty({frames, P, D}, DType::U8);
  out.video_position_ids = Tensor::empty({frames, P, 2}, DType::I64);
  auto* c = static_cast<char*>(out.video_codes.raw());
  auto* pos = static_cast<char*>(out.video_position_ids.raw());
  for (size_t v = 0; v < codes.size(); ++v) {
    c = std::copy_n(static_cast<const char*>(codes[v].raw()), codes[v].nbytes(), c);
    pos = std::copy_n(static_cast<const char*>(positions[v].raw()), positions[v].nbytes(), pos);
  }
  return out;
}

}  // namespace

ProcessedMedia process_document_media(const DocumentMedia& m) {
  try {
    return process_media(m);
  } catch (const Error& e) {
    G4_FAIL(m.source, ": ", e.what());
  }
}

int64_t ProcessedMedia::bytes() const {
  int64_t n = 0;
  for (const Tensor* t :
       {&pixel_codes, &image_position_ids, &input_features, &input_features_mask, &video_codes, &video_position_ids})
    if (t->defined()) n += static_cast<int64_t>(t->nbytes());
  return n;
}

std::shared_ptr<const ProcessedMedia> MediaCache::get(const DocumentMedia& m) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = index_.find(&m);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);  // now the most recently used
      return it->second->media;
    }
  }
  // Processed outside the lock (files and processors take time); two threads asking for the same
  // media may both process it, and the first to finish is kept.
  auto media = std::make_shared<const ProcessedMedia>(process_document_media(m));
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = index_.find(&m);
  if (it != index_.end()) return it->second->media;
  const int64_t size = media->bytes();
  if (size > max_bytes_) return media;  // larger than the whole cache: not kept
  lru_.push_front({&m, media});
  index_[&m] = lru_.begin();
  bytes_ += size;
  while (bytes_ > max_bytes_) {
    const Entry& last = lru_.back();
    bytes_ -= last.media->bytes();
    index_.erase(last.key);
    lru_.pop_back();
  }
  return media;
}

int64_t MediaCache::bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_;
}

int64_t MediaCache::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(lru_.size());
}

}  // namespace g4::data

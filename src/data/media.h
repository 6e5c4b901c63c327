// The media of multimodal training documents, processed when a batch uses them. A document keeps
// what rebuilds its media (its files, each with a hash of its bytes, and the processors' options)
// and the soft-token counts packing needs, which come from the files' headers and lengths alone;
// its pixel values and audio features are made again from the files when a batch is built, through
// a bounded cache. The rebuilt tensors are those the processors give for that conversation alone,
// bit for bit. docs/multimodal.md "Training".
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"
#include "data/multimodal.h"
#include "io/image_processor.h"
#include "io/video_processor.h"

namespace g4::data {

// A file the media read at load time and the FNV-1a hash of its bytes then.
struct MediaFile {
  std::string path;
  uint64_t hash = 0;
};

// What rebuilds one multimodal document's media, in the order of its placeholders.
struct DocumentMedia {
  std::string source;                      // "file:line" of the conversation, for errors
  std::vector<MediaFile> images, audio;    // image files; WAV files (resampled to 16 kHz)
  std::vector<io::VideoFrames> videos;     // every frame file of each video, and its fps
  std::vector<MediaFile> video_frames;     // the sampled frames of all videos, in order
  std::vector<int64_t> frames_per_video;   // sampled frames of each video
  io::ImageProcessorOptions image_options;  // the run's budget applied
  io::VideoProcessorOptions video_options;
  // Of the files' bytes, the shapes the placeholders expand to and the options: equal on every rank
  // that reads the same files (PackedDataset::fingerprint), whatever their folder.
  uint64_t hash = 0;
};

// One document's processed media, what the processors give for that conversation alone.
struct ProcessedMedia {
  // The processor's pixel_values as their uint8 codes (each value is code * float(1/255), so the
  // codes give the same floats back at a quarter of the memory): u8 [images, max_patches, 3*p*p];
  // undefined without images.
  Tensor pixel_codes;
  Tensor image_position_ids;   // i64 [images, max_patches, 2]
  Tensor input_features;       // f32 [clips, frames, 128]; undefined without audio
  Tensor input_features_mask;  // bool [clips, frames]
  // Videos: the sampled frames of all of them, in order, as uint8 codes (each value is code / 255 in
  // f32, io::PixelScale::DivideBy255): u8 [frames, max_patches, 3*p*p] and i64 [frames, max_patches,
  // 2]. Undefined without videos.
  Tensor video_codes, video_position_ids;
  int64_t bytes() const;
};

// At load time: reads every file once (hashing its bytes; images and frames through their headers
// only, clips through their samples), checks what the processors would refuse of their sizes, and
// returns the document's media with what its placeholders expand to (*soft_tokens). Errors name the
// file (the caller adds the document's source).
std::shared_ptr<const DocumentMedia> plan_document_media(const std::string& source,
                                                         const std::vector<std::string>& images,
                                                         const std::vector<std::string>& audio,
                                                         const std::vector<io::VideoFrames>& videos,
                                                         const io::ImageProcessorOptions& image_options,
                                                         const io::VideoProcessorOptions& video_options,
                                                         MediaSoftTokens* soft_tokens);

// When a batch uses them: the files read again and processed. A file that is gone, or whose bytes
// differ from those read at load time, is an error naming it and the document.
ProcessedMedia process_document_media(const DocumentMedia& m);

// Processed media kept for reuse, at most max_bytes of them (least recently used dropped first);
// 0 keeps nothing. Thread-safe.
class MediaCache {
 public:
  explicit MediaCache(int64_t max_bytes) : max_bytes_(max_bytes) {}
  std::shared_ptr<const ProcessedMedia> get(const DocumentMedia& m);
  int64_t bytes() const;
  int64_t entries() const;

 private:
  struct Entry {
    const DocumentMedia* key;
    std::shared_ptr<const ProcessedMedia> media;
  };
  int64_t max_bytes_;
  mutable std::mutex mutex_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<const DocumentMedia*, std::list<Entry>::iterator> index_;
  int64_t bytes_ = 0;
};

}  // namespace g4::data

// PackedDataset: the validation split, seeded epoch order and batches (steps 2 and 5 of the
// pipeline described in dataset.h).
#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "core/error.h"
#include "core/philox.h"
#include "io/audio_features.h"

namespace g4::data {
namespace {

// Philox streams (the counter's high word) of the data pipeline's random draws, so the
// validation split and every epoch's order are independent sequences of the one seed.
constexpr uint64_t kSplitStream = 0;
uint64_t epoch_stream(int64_t epoch) { return 1 + static_cast<uint64_t>(epoch); }

// Fisher-Yates shuffle of 0..n-1 driven by Philox: draw i picks the element swapped into slot i.
// A 64-bit draw reduced modulo i+1 is biased by at most (i+1)/2^64, which is nothing at data sizes.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    const Philox4 r = philox4x32(seed, static_cast<uint64_t>(i), stream);
    const uint64_t draw = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    std::swap(p[static_cast<size_t>(i)], p[draw % static_cast<uint64_t>(i + 1)]);
  }
  return p;
}

int64_t count_tokens(const std::vector<Document>& docs) {
  int64_t n = 0;
  for (const Document& d : docs) n += static_cast<int64_t>(d.ids.size());
  return n;
}

}  // namespace

void check_options(const DataOptions& opt) {
  const auto one_of = [](const std::string& key, const std::string& value, std::initializer_list<const char*> allowed) {
    std::string list;
    for (const char* a : allowed) {
      if (value == a) return;
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    G4_FAIL("data option ", key, ": '", value, "' is not one of ", list);
  };
  one_of("format", opt.format, {"auto", "text", "jsonl", "chat"});
  one_of("text_split", opt.text_split, {"paragraph", "line", "file"});
  one_of("overlong", opt.overlong, {"split", "truncate", "error"});
  G4_CHECK(opt.seq_len >= 2, "data option seq_len: ", opt.seq_len,
           " is too small (a row needs 2 tokens to train on one)");
  G4_CHECK(opt.max_soft_tokens == 0 || io::is_soft_token_budget(opt.max_soft_tokens),
           "data option max_soft_tokens: ", opt.max_soft_tokens,
           " is not one of 70, 140, 280, 560, 1120 (or 0: the model's processor_config.json)");
  G4_CHECK(opt.validation_fraction >= 0.0 && opt.validation_fraction < 1.0,
           "data option validation_fraction: ", opt.validation_fraction, " is not in [0, 1)");
}

PackedDataset::PackedDataset(const DataOptions& opt, const io::Tokenizer& tok)
    : seed_(opt.seed), media_cache_(std::make_shared<MediaCache>(opt.media_cache_mb * (int64_t(1) << 20))) {
  check_options(opt);
  const int32_t pad = tok.pad_id;
  G4_CHECK(pad >= 0 && pad < tok.vocab_size(), "data: the tokenizer's pad id ", pad, " is outside its vocabulary of ",
           tok.vocab_size());
  std::vector<Document> docs = load_documents(opt, tok);
  std::string names;
  for (const std::string& f : opt.files) names += (names.empty() ? "" : ", ") + f;
  G4_CHECK(!docs.empty(), "data: no documents in ", names,
           " (the files are empty, or hold only empty texts and conversations without an assistant reply)");
  documents_ = static_cast<int64_t>(docs.size());
  for (const Document& d : docs) {
    if (!d.media) continue;
    images_ += static_cast<int64_t>(d.media->images.size());
    audio_clips_ += static_cast<int64_t>(d.media->audio.size());
    videos_ += static_cast<int64_t>(d.media->videos.size());
  }

  // Validation split over whole documents, so no document is partly seen in training.
  const auto n = static_cast<int64_t>(docs.size());
  const int64_t n_validation = std::min(n - 1, static_cast<int64_t>(std::llround(opt.validation_fraction * n)));
  std::vector<uint8_t> is_validation(docs.size(), 0);
  const std::vector<int64_t> perm = seeded_permutation(n, opt.seed, kSplitStream);
  for (int64_t i = 0; i < n_validation; ++i) is_validation[static_cast<size_t>(perm[static_cast<size_t>(i)])] = 1;
  std::vector<Document> train_docs, validation_docs;
  for (size_t i = 0; i < docs.size(); ++i)
    (is_validation[i] ? validation_docs : train_docs).push_back(std::move(docs[i]));

  train_docs = fit_documents(std::move(train_docs), opt);
  validation_docs = fit_documents(std::move(validation_docs), opt);
  G4_CHECK(!train_docs.empty(), "data: no training document of ", names, " has a trained token within seq_len ",
           opt.seq_len, " (every assistant reply lies past it: raise ", opt.seq_len_name, ")");
  tokens_ = count_tokens(train_docs) + count_tokens(validation_docs);
  train_ = pack_documents(train_docs, opt.seq_len, pad);
  validation_ = pack_documents(validation_docs, opt.seq_len, pad);

  std::map<int32_t, int64_t> counts;
  int64_t total = 0;
  for (int32_t label : train_.labels) {
    if (label == -100) continue;
    ++counts[label];
    ++total;
  }
  for (const auto& [id, c] : counts) {
    const double p = static_cast<double>(c) / static_cast<double>(total);
    unigram_entropy_ -= p * std::log(p);
  }
}

int64_t PackedDataset::train_rows() const { return train_.rows(); }
int64_t PackedDataset::validation_rows() const { return validation_.rows(); }
int64_t PackedDataset::documents() const { return documents_; }
int64_t PackedDataset::tokens() const { return tokens_; }
double PackedDataset::unigram_entropy() const { return unigram_entropy_; }

uint64_t PackedDataset::fingerprint() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over 64-bit words
  auto mix = [&h](uint64_t x) {
    h ^= x;
    h *= 1099511628211ull;
  };
  mix(seed_);
  for (const PackedRows* rows : {&train_, &validation_}) {
    mix(static_cast<uint64_t>(rows->seq_len));
    for (const std::vector<int32_t>* v : {&rows->ids, &rows->labels, &rows->positions}) {
      mix(v->size());
      for (int32_t x : *v) mix(static_cast<uint32_t>(x));
    }
    mix(rows->mm_types.size());
    for (uint8_t x : rows->mm_types) mix(x);
    for (const auto& row : rows->row_media) {
      mix(row.size());
      for (const auto& m : row) mix(m->hash);
    }
  }
  return h;
}

std::vector<int64_t> PackedDataset::epoch_order(int64_t epoch) const {
  return seeded_permutation(train_rows(), seed_, epoch_stream(epoch));
}

Batch PackedDataset::make_batch(const PackedRows& rows, const std::vector<int64_t>& row_order) const {
  const int64_t b = static_cast<int64_t>(row_order.size()), s = rows.seq_len;
  std::vector<int64_t> ids, labels, positions;
  ids.reserve(static_cast<size_t>(b * s));
  labels.reserve(static_cast<size_t>(b * s));
  positions.reserve(static_cast<size_t>(b * s));
  Batch batch;
  for (int64_t r : row_order) {
    const auto begin = static_cast<size_t>(r * s), end = begin + static_cast<size_t>(s);
    ids.insert(ids.end(), rows.ids.begin() + static_cast<long>(begin), rows.ids.begin() + static_cast<long>(end));
    labels.insert(labels.end(), rows.labels.begin() + static_cast<long>(begin),
                  rows.labels.begin() + static_cast<long>(end));
    positions.insert(positions.end(), rows.positions.begin() + static_cast<long>(begin),
                     rows.positions.begin() + static_cast<long>(end));
  }
  batch.trained_tokens = std::count_if(labels.begin(), labels.end(), [](int64_t l) { return l != -100; });
  batch.input_ids = Tensor::from_vector(ids, {b, s});
  batch.labels = Tensor::from_vector(labels, {b, s});
  batch.position_ids = Tensor::from_vector(positions, {b, s});
  if (!rows.row_media.empty()) add_media(rows, row_order, batch);
  return batch;
}

namespace {

using MediaTensor = Tensor ProcessedMedia::*;

// The rows (images or video frames) of one kind of pixels over the documents, all of which must
// share the first's patch count and size (one processor's options); *first gets that tensor.
int64_t pixel_rows(const std::vector<const ProcessedMedia*>& media, MediaTensor codes, const char* what,
                   const Tensor** first) {
  int64_t rows = 0;
  for (const ProcessedMedia* m : media) {
    const Tensor& t = m->*codes;
    if (!t.defined()) continue;
    if (!*first) *first = &t;
    G4_CHECK(t.size(1) == (*first)->size(1) && t.size(2) == (*first)->size(2), "data: ", what,
             " processed with different options in one batch: ", t.describe(), " and ", (*first)->describe());
    rows += t.size(0);
  }
  return rows;
}

// Every document's codes of one kind as pixel values, and their positions, in order, into
// values and positions (shaped for all of them).
void gather_pixels(const std::vector<const ProcessedMedia*>& media, MediaTensor codes, MediaTensor positions,
                   io::PixelScale scale, Tensor& values, Tensor& positions_out) {
  float* pv = values.data<float>();
  auto* pos = static_cast<char*>(positions_out.raw());
  for (const ProcessedMedia* m : media) {
    const Tensor& c = m->*codes;
    if (!c.defined()) continue;
    for (int64_t i = 0; i < c.numel(); ++i) *pv++ = io::scaled_pixel(c.data<uint8_t>()[i], scale);
    const Tensor& p = m->*positions;
    std::memcpy(pos, p.raw(), p.nbytes());
    pos += p.nbytes();
  }
}

}  // namespace

// The media of the batch's rows in row-major order. Images are concatenated (every one is padded
// to the same max_patches), so are video frames; clips are right-padded with invalid frames to the
// longest, which is what the feature extractor gives for the batch of all of them (a valid frame
// depends only on its own clip's samples). Each document's media are processed now (or taken from
// the cache).
void PackedDataset::add_media(const PackedRows& rows, const std::vector<int64_t>& row_order, Batch& batch) const {
  std::vector<const DocumentMedia*> docs;
  for (int64_t r : row_order)
    for (const auto& m : rows.row_media[static_cast<size_t>(r)]) docs.push_back(m.get());
  if (docs.empty()) return;
  std::vector<std::shared_ptr<const ProcessedMedia>> held;  // alive while the batch is assembled
  std::vector<const ProcessedMedia*> media;
  for (const DocumentMedia* d : docs) {
    held.push_back(media_cache_->get(*d));
    media.push_back(held.back().get());
  }
  const int64_t b = static_cast<int64_t>(row_order.size()), s = rows.seq_len;
  std::vector<int64_t> types;
  types.reserve(static_cast<size_t>(b * s));
  for (int64_t r : row_order)
    types.insert(types.end(), rows.mm_types.begin() + static_cast<long>(r * s),
                 rows.mm_types.begin() + static_cast<long>((r + 1) * s));
  batch.mm_token_type_ids = Tensor::from_vector(types, {b, s});

  const Tensor *first_image = nullptr, *first_video = nullptr;
  const int64_t images = pixel_rows(media, &ProcessedMedia::pixel_codes, "images", &first_image);
  const int64_t video_frames = pixel_rows(media, &ProcessedMedia::video_codes, "videos", &first_video);
  int64_t clips = 0, frames = 0;
  std::vector<int64_t> frames_per_video;
  for (const DocumentMedia* d : docs)
    frames_per_video.insert(frames_per_video.end(), d->frames_per_video.begin(), d->frames_per_video.end());
  for (const ProcessedMedia* m : media) {
    if (m->input_features.defined()) {
      clips += m->input_features.size(0);
      frames = std::max(frames, m->input_features.size(1));
    }
  }
  if (images > 0) {
    const int64_t patches = first_image->size(1), dim = first_image->size(2);
    batch.pixel_values = Tensor::empty({images, patches, dim}, DType::F32);
    batch.image_position_ids = Tensor::empty({images, patches, 2}, DType::I64);
    gather_pixels(media, &ProcessedMedia::pixel_codes, &ProcessedMedia::image_position_ids,
                  io::PixelScale::MultiplyByInverse, batch.pixel_values, batch.image_position_ids);
  }
  if (video_frames > 0) {
    const int64_t patches = first_video->size(1), dim = first_video->size(2);
    const bool same_length = std::all_of(frames_per_video.begin(), frames_per_video.end(),
                                         [&](int64_t n) { return n == frames_per_video[0]; });
    const int64_t V = same_length ? static_cast<int64_t>(frames_per_video.size()) : 1;
    batch.pixel_values_videos = Tensor::empty({V, video_frames / V, patches, dim}, DType::F32);
    batch.video_position_ids = Tensor::empty({V, video_frames / V, patches, 2}, DType::I64);
    gather_pixels(media, &ProcessedMedia::video_codes, &ProcessedMedia::video_position_ids, io::PixelScale::DivideBy255,
                  batch.pixel_values_videos, batch.video_position_ids);
  }
  if (clips > 0) {
    const int64_t bins = io::kAudioMelBins;
    batch.input_features = Tensor::zeros({clips, frames, bins}, DType::F32);
    batch.input_features_mask = Tensor::zeros({clips, frames}, DType::Bool);
    float* f = batch.input_features.data<float>();
    uint8_t* mask = batch.input_features_mask.data<uint8_t>();
    int64_t c = 0;
    for (const ProcessedMedia* m : media) {
      if (!m->input_features.defined()) continue;
      const int64_t n = m->input_features.size(0), len = m->input_features.size(1);
      for (int64_t k = 0; k < n; ++k, ++c) {
        std::memcpy(f + c * frames * bins, m->input_features.data<float>() + k * len * bins,
                    static_cast<size_t>(len * bins) * sizeof(float));
        std::memcpy(mask + c * frames, m->input_features_mask.data<uint8_t>() + k * len, static_cast<size_t>(len));
      }
    }
  }
}

Batch PackedDataset::train_batch(int64_t batch_size, int64_t index) const {
  G4_CHECK(batch_size > 0, "train_batch: batch size must be positive, not ", batch_size);
  G4_CHECK(index >= 0 && index <= (INT64_MAX - batch_size) / batch_size, "train_batch: batch index ", index,
           " is out of range");
  const int64_t rows = train_rows();
  G4_CHECK(rows > 0, "train_batch: no training rows");
  std::vector<int64_t> order;
  int64_t cached_epoch = -1;
  std::vector<int64_t> perm;
  for (int64_t k = index * batch_size; k < (index + 1) * batch_size; ++k) {
    const int64_t epoch = k / rows;
    if (epoch != cached_epoch) {
      perm = epoch_order(epoch);
      cached_epoch = epoch;
    }
    order.push_back(perm[static_cast<size_t>(k % rows)]);
  }
  return make_batch(train_, order);
}

std::vector<Batch> PackedDataset::validation_batches(int64_t batch_size, int64_t count) const {
  G4_CHECK(batch_size > 0, "validation_batches: batch size must be positive, not ", batch_size);
  const int64_t rows = validation_rows();
  const int64_t available = (rows + batch_size - 1) / batch_size;
  if (count <= 0 || count > available) count = available;
  std::vector<Batch> out;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<int64_t> order;
    for (int64_t r = i * batch_size; r < std::min(rows, (i + 1) * batch_size); ++r) order.push_back(r);
    out.push_back(make_batch(validation_, order));
  }
  return out;
}

}  // namespace g4::data

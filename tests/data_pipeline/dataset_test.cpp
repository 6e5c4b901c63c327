// PackedDataset: deterministic seeded shuffling, batches as a pure function of their index, the
// validation split, chat loss masks end to end, statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "data/dataset.h"
#include "data_pipeline/test_tokenizer.h"
#include "io/io_test_util.h"

namespace g4::data {
namespace {

using test::ByteTokenizer;

// One document per line: "doc-000 ...", each distinct.
std::string numbered_lines(int n, int extra_chars = 0) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "doc-%03d", i);
    s += std::string(name) + std::string(static_cast<size_t>(extra_chars + i % 5), 'x') + "\n";
  }
  return s;
}

struct Corpus {
  test::TempDir dir;
  DataOptions opt;
  explicit Corpus(const std::string& text, int64_t seq_len = 16) {
    test::write_text(dir / "lines.txt", text);
    opt.files = {dir / "lines.txt"};
    opt.text_split = "line";
    opt.seq_len = seq_len;
    opt.add_bos = false;
    opt.seed = 1234;
  }
};

std::vector<int64_t> values(const Tensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = element_as_int(t, i);
  return v;
}

std::vector<int64_t> row(const Tensor& t, int64_t r) {
  const std::vector<int64_t> v = values(t);
  const int64_t s = t.size(1);
  return {v.begin() + r * s, v.begin() + (r + 1) * s};
}

// The documents ("doc-NNN...") a batch's rows hold, read back through positions and the tokenizer.
std::vector<std::string> documents_in(const Batch& b) {
  const ByteTokenizer tok;
  const std::vector<int64_t> ids = values(b.input_ids), pos = values(b.position_ids);
  std::vector<std::string> docs;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (pos[i] == 0) docs.emplace_back();
    if (ids[i] != tok.pad_id && ids[i] != tok.eos_id) docs.back() += tok.decode({static_cast<int32_t>(ids[i])});
  }
  std::vector<std::string> named;
  for (const std::string& d : docs)
    if (!d.empty()) named.push_back(d);
  return named;
}

TEST(Dataset, BatchesAreAPureFunctionOfTheirIndex) {
  Corpus c(numbered_lines(40));
  c.opt.validation_fraction = 0;
  const PackedDataset a(c.opt, ByteTokenizer()), b(c.opt, ByteTokenizer());
  const int64_t rows = a.train_rows();
  ASSERT_GT(rows, 10);
  for (int64_t index : {7, 0, 3, 250, 1}) {  // any order, any distance
    const Batch x = a.train_batch(3, index), y = b.train_batch(3, index);
    EXPECT_EQ(values(x.input_ids), values(y.input_ids));
    EXPECT_EQ(values(x.labels), values(y.labels));
    EXPECT_EQ(values(x.position_ids), values(y.position_ids));
    EXPECT_EQ(x.trained_tokens, y.trained_tokens);
  }
  // A batch of B rows is the B single-row batches at the same stream positions, also across the
  // end of an epoch (B is chosen so that the rows are not a multiple of it).
  int64_t bs = 3;
  while (rows % bs == 0) ++bs;
  const int64_t across = rows / bs;  // this batch holds the last rows of epoch 0 and the first of epoch 1
  const Batch big = a.train_batch(bs, across);
  for (int64_t j = 0; j < bs; ++j) {
    EXPECT_EQ(row(big.input_ids, j), row(a.train_batch(1, across * bs + j).input_ids, 0));
    EXPECT_EQ(row(big.labels, j), row(a.train_batch(1, across * bs + j).labels, 0));
  }
  EXPECT_EQ(big.input_ids.shape(), (Shape{bs, 16}));
  EXPECT_EQ(big.labels.dtype(), DType::I64);
}

TEST(Dataset, EachEpochVisitsEveryRowOnceInItsOwnSeededOrder) {
  Corpus c(numbered_lines(60));
  c.opt.validation_fraction = 0;
  const PackedDataset d(c.opt, ByteTokenizer());
  const int64_t rows = d.train_rows();
  const auto epoch = [&](const PackedDataset& ds, int64_t e) {
    std::vector<std::vector<int64_t>> out;
    for (int64_t i = 0; i < rows; ++i) out.push_back(row(ds.train_batch(1, e * rows + i).input_ids, 0));
    return out;
  };
  const auto e0 = epoch(d, 0), e1 = epoch(d, 1);
  EXPECT_EQ(std::set(e0.begin(), e0.end()), std::set(e1.begin(), e1.end()));
  EXPECT_EQ(std::set(e0.begin(), e0.end()).size(), static_cast<size_t>(rows));  // every row once
  EXPECT_NE(e0, e1);  // a fresh order each epoch
  c.opt.seed = 99;
  EXPECT_NE(epoch(PackedDataset(c.opt, ByteTokenizer()), 0), e0);  // and per seed
}

TEST(Dataset, ValidationSplitIsDisjointWholeDocumentsChosenBySeed) {
  Corpus c(numbered_lines(100));
  c.opt.validation_fraction = 0.2;
  const auto split = [&](uint64_t seed) {
    c.opt.seed = seed;
    const PackedDataset d(c.opt, ByteTokenizer());
    std::vector<std::string> train = documents_in(d.train_batch(d.train_rows(), 0)), validation;
    for (const Batch& b : d.validation_batches(3)) {
      const std::vector<std::string> v = documents_in(b);
      validation.insert(validation.end(), v.begin(), v.end());
    }
    EXPECT_EQ(d.documents(), 100);
    return std::make_pair(std::set<std::string>(train.begin(), train.end()),
                          std::set<std::string>(validation.begin(), validation.end()));
  };
  const auto [train, validation] = split(5);
  EXPECT_EQ(validation.size(), 20u);
  EXPECT_EQ(train.size(), 80u);
  for (const std::string& v : validation) EXPECT_EQ(train.count(v), 0u) << v;
  EXPECT_EQ(split(5).second, validation);  // the same seed, the same split
  EXPECT_NE(split(6).second, validation);
}

TEST(Dataset, ValidationBatchesInFixedOrder) {
  Corpus c(numbered_lines(50));
  c.opt.validation_fraction = 0.5;
  const PackedDataset d(c.opt, ByteTokenizer());
  const int64_t rows = d.validation_rows();
  ASSERT_GT(rows, 4);
  const std::vector<Batch> all = d.validation_batches(4);
  ASSERT_EQ(static_cast<int64_t>(all.size()), (rows + 3) / 4);
  EXPECT_EQ(all.back().input_ids.size(0), rows % 4 == 0 ? 4 : rows % 4);  // the remainder
  EXPECT_EQ(d.validation_batches(4, 2).size(), 2u);
  EXPECT_EQ(d.validation_batches(4, 1000).size(), all.size());
  EXPECT_EQ(values(d.validation_batches(4)[1].input_ids), values(all[1].input_ids));
  c.opt.validation_fraction = 0;
  EXPECT_TRUE(PackedDataset(c.opt, ByteTokenizer()).validation_batches(4).empty());
}

TEST(Dataset, ChatBatchesTrainOnlyOnReplies) {
  test::TempDir dir;
  test::write_text(dir / "chat.jsonl",
                   "{\"messages\": [{\"role\": \"system\", \"content\": \"Sys\"}, {\"role\": \"user\", \"content\": "
                   "\"Hello\"}, {\"role\": \"assistant\", \"content\": \"Hi!\"}]}\n"
                   "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, {\"role\": \"assistant\", "
                   "\"content\": \"4\"}, {\"role\": \"user\", \"content\": \"3+3?\"}, {\"role\": \"assistant\", "
                   "\"content\": \"6\"}]}\n");
  DataOptions o;
  o.files = {dir / "chat.jsonl"};
  o.seq_len = 128;
  o.validation_fraction = 0;
  const ByteTokenizer tok;
  const PackedDataset d(o, tok);
  ASSERT_EQ(d.train_rows(), 1);
  const Batch b = d.train_batch(1, 0);
  std::vector<int32_t> targets;
  for (int64_t l : values(b.labels))
    if (l != -100) targets.push_back(static_cast<int32_t>(l));
  // Both conversations share the row (longest first); only replies and their <turn|> are targets.
  EXPECT_EQ(tok.decode(targets), "4<turn|>6<turn|>Hi!<turn|>");
  EXPECT_EQ(b.trained_tokens, static_cast<int64_t>(targets.size()));
  const std::vector<int64_t> ids = values(b.input_ids), pos = values(b.position_ids);
  EXPECT_EQ(ids[0], tok.bos_id);
  EXPECT_EQ(std::count(pos.begin(), pos.end(), 0), 3);  // two conversations and the padding
}

TEST(Dataset, StatisticsAndUnigramEntropy) {
  // Documents "aabb" and "ab" (no BOS/EOS): the targets are a,b,b and b, so p(a) = 1/4, p(b) = 3/4.
  Corpus c("aabb\nab\n", 8);
  c.opt.add_eos = false;
  c.opt.validation_fraction = 0;
  const PackedDataset d(c.opt, ByteTokenizer());
  EXPECT_EQ(d.documents(), 2);
  EXPECT_EQ(d.tokens(), 6);
  EXPECT_NEAR(d.unigram_entropy(), -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-12);
  EXPECT_EQ(d.train_batch(1, 0).trained_tokens, 4);
  // One repeated target: nothing to learn beyond frequencies.
  Corpus same("aaaa\n", 8);
  same.opt.add_eos = false;
  same.opt.validation_fraction = 0;
  EXPECT_EQ(PackedDataset(same.opt, ByteTokenizer()).unigram_entropy(), 0.0);
}

TEST(Dataset, OverlongDocumentsPerOption) {
  Corpus c("0123456789abcdefghij\nxy\n", 8);  // 21 and 3 tokens with EOS
  c.opt.validation_fraction = 0;
  c.opt.overlong = "split";  // 8 + 8 + 5 and 3
  PackedDataset split(c.opt, ByteTokenizer());
  EXPECT_EQ(split.tokens(), 24);
  EXPECT_EQ(split.train_rows(), 3);
  c.opt.overlong = "truncate";
  PackedDataset truncated(c.opt, ByteTokenizer());
  EXPECT_EQ(truncated.tokens(), 11);
  EXPECT_EQ(truncated.train_rows(), 2);
  EXPECT_EQ(truncated.documents(), 2);
}

TEST(Dataset, BatchArgumentsAreChecked) {
  Corpus c(numbered_lines(5));
  const PackedDataset d(c.opt, ByteTokenizer());
  EXPECT_G4_ERROR(d.train_batch(0, 0), "batch size");
  EXPECT_G4_ERROR(d.train_batch(2, -1), "batch index");
  EXPECT_G4_ERROR(d.validation_batches(-3), "batch size");
}

}  // namespace
}  // namespace g4::data

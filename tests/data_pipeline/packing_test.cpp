// Packing: which documents share a row, their positions and labels, padding, tiny and overlong
// documents.
#include <gtest/gtest.h>

#include "data/dataset.h"
#include "io/io_test_util.h"

namespace g4::data {
namespace {

// A document of `n` ids first, first+1, ... all trained unless `trained` says otherwise.
Document doc(int32_t first, size_t n, std::vector<uint8_t> trained = {}) {
  Document d;
  for (size_t i = 0; i < n; ++i) d.ids.push_back(first + static_cast<int32_t>(i));
  d.trained = trained.empty() ? std::vector<uint8_t>(n, 1) : trained;
  d.source = "doc" + std::to_string(first);
  return d;
}

std::vector<int32_t> row_of(const std::vector<int32_t>& v, const PackedRows& p, int64_t r) {
  return {v.begin() + r * p.seq_len, v.begin() + (r + 1) * p.seq_len};
}

TEST(Packing, RowsHoldWholeDocumentsWithTheirOwnPositions) {
  // Best-fit decreasing: the 5-token document opens row 0, the 3-token one fills it exactly, the
  // 2-token one opens row 1, which padding completes.
  const PackedRows p = pack_documents({doc(100, 3), doc(200, 5), doc(300, 2)}, 8, /*pad_id=*/0);
  ASSERT_EQ(p.rows(), 2);
  EXPECT_EQ(row_of(p.ids, p, 0), (std::vector<int32_t>{200, 201, 202, 203, 204, 100, 101, 102}));
  EXPECT_EQ(row_of(p.positions, p, 0), (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2}));
  // The first token of each document is never a target: the last token of the previous document
  // must not learn to predict it.
  EXPECT_EQ(row_of(p.labels, p, 0), (std::vector<int32_t>{-100, 201, 202, 203, 204, -100, 101, 102}));
  EXPECT_EQ(row_of(p.ids, p, 1), (std::vector<int32_t>{300, 301, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(row_of(p.positions, p, 1), (std::vector<int32_t>{0, 1, 0, 1, 2, 3, 4, 5}));  // padding: a document
  EXPECT_EQ(row_of(p.labels, p, 1), (std::vector<int32_t>{-100, 301, -100, -100, -100, -100, -100, -100}));
}

TEST(Packing, UntrainedTokensAreNotTargets) {
  const PackedRows p = pack_documents({doc(10, 6, {0, 0, 0, 1, 1, 0})}, 6, 7);
  EXPECT_EQ(p.labels, (std::vector<int32_t>{-100, -100, -100, 13, 14, -100}));
  EXPECT_EQ(p.ids, (std::vector<int32_t>{10, 11, 12, 13, 14, 15}));  // exactly full: no padding
}

TEST(Packing, BestFitFillsGapsWithLaterDocuments) {
  // Lengths 6, 6, 2, 2 into rows of 8: both 2s go into the rows the 6s left open.
  const PackedRows p = pack_documents({doc(10, 6), doc(20, 2), doc(30, 6), doc(40, 2)}, 8, 0);
  ASSERT_EQ(p.rows(), 2);
  EXPECT_EQ(row_of(p.ids, p, 0), (std::vector<int32_t>{10, 11, 12, 13, 14, 15, 20, 21}));
  EXPECT_EQ(row_of(p.ids, p, 1), (std::vector<int32_t>{30, 31, 32, 33, 34, 35, 40, 41}));
}

TEST(Packing, TinyDocumentsFillRowsAndTeachNothing) {
  std::vector<Document> docs;
  for (int32_t i = 0; i < 10; ++i) docs.push_back(doc(50 + i, 1));
  const PackedRows p = pack_documents(docs, 4, 0);
  ASSERT_EQ(p.rows(), 3);
  EXPECT_EQ(row_of(p.ids, p, 0), (std::vector<int32_t>{50, 51, 52, 53}));
  EXPECT_EQ(row_of(p.positions, p, 0), (std::vector<int32_t>{0, 0, 0, 0}));
  EXPECT_EQ(row_of(p.ids, p, 2), (std::vector<int32_t>{58, 59, 0, 0}));
  EXPECT_EQ(row_of(p.positions, p, 2), (std::vector<int32_t>{0, 0, 0, 1}));
  for (int32_t l : p.labels) EXPECT_EQ(l, -100);  // a 1-token document has no target
  EXPECT_EQ(pack_documents({}, 4, 0).rows(), 0);
}

TEST(Packing, RefusesDocumentsLongerThanARow) {
  EXPECT_G4_ERROR(pack_documents({doc(1, 9)}, 8, 0), "doc1", "9 tokens", "seq_len 8");
}

DataOptions fit_options(const std::string& overlong) {
  DataOptions o;
  o.seq_len = 4;
  o.overlong = overlong;
  return o;
}

TEST(Overlong, SplitMakesEachPieceItsOwnDocument) {
  const std::vector<Document> out = fit_documents({doc(10, 10, {1, 1, 1, 1, 0, 0, 1, 1, 1, 1}), doc(90, 2)},
                                                  fit_options("split"));
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].ids, (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(out[1].ids, (std::vector<int32_t>{14, 15, 16, 17}));
  EXPECT_EQ(out[1].trained, (std::vector<uint8_t>{0, 0, 1, 1}));
  EXPECT_EQ(out[2].ids, (std::vector<int32_t>{18, 19}));
  EXPECT_EQ(out[2].source, "doc10 (piece 3)");
  EXPECT_EQ(out[3].ids, (std::vector<int32_t>{90, 91}));
  // Packed, every piece restarts its positions and loses its first target.
  const PackedRows p = pack_documents(out, 4, 0);
  ASSERT_EQ(p.rows(), 3);
  EXPECT_EQ(row_of(p.positions, p, 1), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(row_of(p.labels, p, 1), (std::vector<int32_t>{-100, -100, 16, 17}));
}

TEST(Overlong, TruncateKeepsTheStart) {
  const std::vector<Document> out = fit_documents({doc(10, 7), doc(30, 4)}, fit_options("truncate"));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].ids, (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(out[0].trained.size(), 4u);
  EXPECT_EQ(out[1].ids, (std::vector<int32_t>{30, 31, 32, 33}));  // exactly seq_len: untouched
}

// A piece that trains nothing (a conversation cut before its reply) is dropped: kept, it made
// all-masked rows whose loss read 0. Labels start at a document's second token, so a piece whose
// only trained token is its first trains nothing either.
TEST(Overlong, PiecesWithoutATrainedTokenAreDropped) {
  std::vector<Document> out = fit_documents({doc(10, 10, {0, 0, 0, 0, 0, 0, 0, 0, 1, 1}), doc(50, 5, {0, 0, 0, 0, 1})},
                                            fit_options("split"));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ids, (std::vector<int32_t>{18, 19}));
  EXPECT_EQ(out[0].source, "doc10 (piece 3)");
  out = fit_documents({doc(10, 10, {0, 0, 0, 0, 0, 0, 0, 0, 1, 1}), doc(30, 3)}, fit_options("truncate"));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ids, (std::vector<int32_t>{30, 31, 32}));
}

TEST(Overlong, ErrorNamesTheDocument) {
  EXPECT_NO_THROW(fit_documents({doc(10, 4)}, fit_options("error")));
  EXPECT_G4_ERROR(fit_documents({doc(10, 4), doc(20, 5)}, fit_options("error")), "doc20", "5 tokens",
                  "seq_len 4", "overlong");
}

}  // namespace
}  // namespace g4::data

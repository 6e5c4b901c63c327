// Steps 3 and 4 of the data pipeline: documents fitted to seq_len, then packed whole into rows.
#include <algorithm>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"

namespace g4::data {

std::vector<Document> fit_documents(std::vector<Document> docs, const DataOptions& opt) {
  check_options(opt);
  const auto n = static_cast<size_t>(opt.seq_len);
  std::vector<Document> out;
  out.reserve(docs.size());
  for (Document& doc : docs) {
    // Cutting a multimodal document would part placeholders from their media.
    G4_CHECK(!doc.media || doc.ids.size() <= n, doc.source, ": multimodal document of ", doc.ids.size(),
             " tokens (media soft tokens included) is longer than seq_len ", opt.seq_len,
             "; it cannot be split or truncated: raise ", opt.seq_len_name,
             opt.max_soft_tokens_name.empty() ? "" : " or lower " + opt.max_soft_tokens_name);
    if (doc.ids.size() <= n) {
      out.push_back(std::move(doc));
    } else if (opt.overlong == "truncate") {
      doc.ids.resize(n);
      doc.trained.resize(n);
      out.push_back(std::move(doc));
    } else if (opt.overlong == "split") {
      // Each piece is a document of its own: it cannot attend to the piece before it.
      for (size_t start = 0, piece = 1; start < doc.ids.size(); start += n, ++piece) {
        const auto begin = static_cast<long>(start), end = static_cast<long>(std::min(start + n, doc.ids.size()));
        out.push_back({std::vector<int32_t>(doc.ids.begin() + begin, doc.ids.begin() + end),
                       std::vector<uint8_t>(doc.trained.begin() + begin, doc.trained.begin() + end),
                       doc.source + " (piece " + std::to_string(piece) + ")"});
      }
    } else {
      G4_FAIL(doc.source, ": document of ", doc.ids.size(), " tokens is longer than seq_len ", opt.seq_len,
              " (data option overlong is '", opt.overlong, "'; 'split' or 'truncate' would keep it)");
    }
  }
  // A document with no trained token past its first (labels start at the second) teaches nothing:
  // a conversation cut before its reply (truncate keeps only the prompt, split makes prompt-only
  // pieces). Kept, such documents alone made all-masked rows whose loss read 0.0 with a zero
  // gradient: a run that trained nothing looked like a perfect one. They are dropped, and said.
  size_t single = 0, masked = 0;  // one token (nothing to predict); trained tokens all cut off
  std::string first;
  out.erase(std::remove_if(out.begin(), out.end(),
                           [&](const Document& d) {
                             const bool one = d.trained.size() < 2;
                             if (!one && std::find(d.trained.begin() + 1, d.trained.end(), 1) != d.trained.end())
                               return false;
                             ++(one ? single : masked);
                             if (first.empty()) first = d.source;
                             return true;
                           }),
            out.end());
  if (single + masked > 0)
    G4_LOG("data: dropped ", single + masked, " document(s) or piece(s) with no token to learn (the first: ", first,
           "): ", single, " of a single token (a split document's last piece, or a one-token document), ", masked,
           " whose trained tokens lie past seq_len ", opt.seq_len, " (a conversation's reply cut off)");
  return out;
}

PackedRows pack_documents(const std::vector<Document>& docs, int64_t seq_len, int32_t pad_id) {
  G4_CHECK(seq_len > 0, "pack_documents: seq_len must be positive, not ", seq_len);
  // Best-fit decreasing: longest documents first (ties in input order); each goes to the row with
  // the least free space that still holds it (ties: the earliest row), else to a new row.
  std::vector<size_t> order(docs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return docs[a].ids.size() > docs[b].ids.size(); });
  std::vector<std::vector<size_t>> row_docs;
  std::set<std::pair<int64_t, size_t>> open;  // (free tokens, row) of rows with room left
  for (size_t d : order) {
    const auto len = static_cast<int64_t>(docs[d].ids.size());
    G4_CHECK(len <= seq_len, docs[d].source, ": document of ", len, " tokens does not fit seq_len ", seq_len,
             " (fit_documents first)");
    G4_CHECK(docs[d].trained.size() == docs[d].ids.size(), docs[d].source, ": document has ", len, " ids but ",
             docs[d].trained.size(), " trained flags");
    if (len == 0) continue;
    auto it = open.lower_bound({len, size_t{0}});
    size_t row;
    int64_t free_after;
    if (it == open.end()) {
      row = row_docs.size();
      row_docs.emplace_back();
      free_after = seq_len - len;
    } else {
      row = it->second;
      free_after = it->first - len;
      open.erase(it);
    }
    row_docs[row].push_back(d);
    if (free_after > 0) open.insert({free_after, row});
  }

  PackedRows out;
  out.seq_len = seq_len;
  const bool media = std::any_of(docs.begin(), docs.end(), [](const Document& d) { return d.media != nullptr; });
  if (media) out.row_media.resize(row_docs.size());
  const size_t total = row_docs.size() * static_cast<size_t>(seq_len);
  out.ids.reserve(total);
  out.labels.reserve(total);
  out.positions.reserve(total);
  for (size_t r = 0; r < row_docs.size(); ++r) {
    for (size_t d : row_docs[r]) {
      const Document& doc = docs[d];
      for (size_t k = 0; k < doc.ids.size(); ++k) {
        out.ids.push_back(doc.ids[k]);
        out.labels.push_back(doc.trained[k] && k > 0 ? doc.ids[k] : -100);
        out.positions.push_back(static_cast<int32_t>(k));
      }
      if (!media) continue;
      G4_CHECK(doc.mm_types.empty() || doc.mm_types.size() == doc.ids.size(), doc.source, ": document has ",
               doc.ids.size(), " ids but ", doc.mm_types.size(), " token types");
      if (doc.mm_types.empty())
        out.mm_types.resize(out.ids.size(), 0);
      else
        out.mm_types.insert(out.mm_types.end(), doc.mm_types.begin(), doc.mm_types.end());
      if (doc.media) out.row_media[r].push_back(doc.media);
    }
    for (int32_t k = 0; out.ids.size() % static_cast<size_t>(seq_len) != 0; ++k) {  // padding document
      out.ids.push_back(pad_id);
      out.labels.push_back(-100);
      out.positions.push_back(k);
    }
    if (media) out.mm_types.resize(out.ids.size(), 0);
  }
  return out;
}

}  // namespace g4::data

// Which whole prompt pages live sequences hold, by content, so that a new prompt starting with the
// same tokens reuses them instead of recomputing them. A page's key chains the keys of the pages
// before it, so equal keys mean equal prefixes; a hit is also checked token by token and against
// its predecessor page, so a hash collision can only miss, never give wrong keys. A page holding
// image or audio soft tokens also carries a hash of those media (`media`, 0 for none), in its key
// and checked on a hit: equal placeholder ids of different images never share pages (two distinct
// media with equal 64-bit hashes would).
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "generate/page_pool.h"

namespace g4::gen {

class PrefixCache {
 public:
  // Key of a whole page holding tokens[0 .. n) (and the media hashed `media`) after the page keyed
  // `parent` (0 for page 0).
  static uint64_t chain(uint64_t parent, const int64_t* tokens, int64_t n, uint64_t media = 0);

  // Offers page j of a prompt (its full-kind page, its sliding-kind page or -1, the full page of
  // page j - 1 or -1). A live entry for the same key keeps its pages (a dead sliding page is
  // replaced).
  void add(uint64_t key, int64_t full_page, int64_t sliding_page, int64_t parent_page, const int64_t* tokens,
           int64_t n, uint64_t media, PagePool& full, PagePool* sliding);

  struct Hit {
    int64_t full_page = -1;
    int64_t sliding_page = -1;  // -1 when that page was given back
  };
  // The live page with this key holding exactly these tokens and media after `parent_page`, if any.
  bool find(uint64_t key, int64_t parent_page, const int64_t* tokens, int64_t n, uint64_t media,
            const PagePool& full, const PagePool* sliding, Hit& hit) const;
  // Called when a full page keyed `key` is freed.
  void erase(uint64_t key) { entries_.erase(key); }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    int64_t full_page = -1, sliding_page = -1, parent_page = -1;
    std::vector<int64_t> tokens;
    uint64_t media = 0;
  };
  static bool live(const PagePool& pool, int64_t page, uint64_t key) {
    return page >= 0 && pool.refs(page) > 0 && pool.key(page) == key;
  }
  std::unordered_map<uint64_t, Entry> entries_;
};

}  // namespace g4::gen

#include "generate/prefix_cache.h"

#include <algorithm>

namespace g4::gen {

uint64_t PrefixCache::chain(uint64_t parent, const int64_t* tokens, int64_t n, uint64_t media) {
  // splitmix64 steps over the parent key, each token and the media hash (when there is one); 0 is
  // kept for "no key".
  uint64_t h = parent ^ 0x9E3779B97F4A7C15ull;
  const auto step = [&h](uint64_t x) {
    h += x + 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
  };
  for (int64_t i = 0; i < n; ++i) step(static_cast<uint64_t>(tokens[i]));
  if (media != 0) step(media);
  return h == 0 ? 1 : h;
}

void PrefixCache::add(uint64_t key, int64_t full_page, int64_t sliding_page, int64_t parent_page,
                      const int64_t* tokens, int64_t n, uint64_t media, PagePool& full, PagePool* sliding) {
  auto it = entries_.find(key);
  if (it != entries_.end() && live(full, it->second.full_page, key)) {
    Entry& e = it->second;
    // The same content with a sliding page still held is worth keeping for later prompts.
    if (sliding && sliding_page >= 0 && !live(*sliding, e.sliding_page, key) && sliding->key(sliding_page) == 0 &&
        e.full_page == full_page) {
      sliding->set_key(sliding_page, key);
      e.sliding_page = sliding_page;
    }
    return;
  }
  if (full.key(full_page) != 0) return;  // the page is already known under its own key
  full.set_key(full_page, key);
  if (sliding && sliding_page >= 0 && sliding->key(sliding_page) == 0) sliding->set_key(sliding_page, key);
  entries_[key] = Entry{full_page, sliding_page, parent_page, std::vector<int64_t>(tokens, tokens + n), media};
}

bool PrefixCache::find(uint64_t key, int64_t parent_page, const int64_t* tokens, int64_t n, uint64_t media,
                       const PagePool& full, const PagePool* sliding, Hit& hit) const {
  const auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  const Entry& e = it->second;
  if (!live(full, e.full_page, key) || e.parent_page != parent_page || e.media != media ||
      !std::equal(e.tokens.begin(), e.tokens.end(), tokens, tokens + n))
    return false;
  hit.full_page = e.full_page;
  hit.sliding_page = sliding && live(*sliding, e.sliding_page, key) ? e.sliding_page : -1;
  return true;
}

}  // namespace g4::gen

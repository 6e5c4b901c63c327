// The bookkeeping of one kind's KV pages (the memory itself is model::PagedKV): reference counts,
// a free list, and the prefix keys of pages whose content a later prompt may reuse.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace g4::gen {

class PagePool {
 public:
  explicit PagePool(int64_t pages);

  int64_t size() const { return static_cast<int64_t>(refs_.size()); }
  int64_t free() const { return static_cast<int64_t>(free_.size()); }
  // A free page with one reference; the pool must not be empty (check free() first).
  int64_t take();
  void retain(int64_t page);
  // Drops one reference; returns true when that was the last (the page is free again and its
  // prefix key is cleared).
  bool release(int64_t page);
  int64_t refs(int64_t page) const { return refs_[static_cast<size_t>(page)]; }

  // The prefix key a held page's content was registered under (0: none). A freed page loses it, so
  // a key found on a held page always describes what the page holds.
  uint64_t key(int64_t page) const { return keys_[static_cast<size_t>(page)]; }
  void set_key(int64_t page, uint64_t key) { keys_[static_cast<size_t>(page)] = key; }

 private:
  std::vector<int64_t> refs_;
  std::vector<uint64_t> keys_;
  std::vector<int64_t> free_;  // a stack: the most recently freed page is taken first
};

// The pages of the full-attention and sliding-window pools that `budget` bytes of GPU memory hold
// (EngineOptions::num_pages 0). A sequence of L tokens holds ceil(L / page) full pages and, with a
// window of W tokens, about min(L, W) / page sliding ones. The sliding pool gets every page it can
// ever use (`sliding_wanted`: max_running windows and one step's chunk) unless the budget is tight;
// then the two pools are split so that they run out together for sequences of kPoolBalanceTokens
// (shorter ones are bound by the sliding pool, longer ones by the full pool; the scheduler preempts
// either way). That matters for a model whose sliding pages are the large ones: the 26B-A4B's are
// ten times its full pages, and max_running windows of them need about twice what an 80 GB GPU has
// left after its weights. The sliding pool keeps at least `sliding_least` pages (one window and a
// step's chunk) and the full pool at least one page; a budget below that is an error naming the
// sizes. Without a sliding kind (sliding_bytes 0) the full pool takes the whole budget.
constexpr int64_t kPoolBalanceTokens = 4096;
// The sliding pages one sequence holds at most at a full window of `window` tokens (window - 1 keys
// before the newest token, which may start a page of its own).
constexpr int64_t window_pages(int64_t window, int64_t page_size) {
  return (std::max<int64_t>(window - 1, 0) + page_size - 1) / page_size + 1;
}
struct PoolPages {
  int64_t full = 0, sliding = 0;
};
PoolPages pool_pages_for_budget(int64_t budget, int64_t page_size, int64_t window, int64_t full_bytes,
                                int64_t sliding_bytes, int64_t sliding_wanted, int64_t sliding_least);

}  // namespace g4::gen

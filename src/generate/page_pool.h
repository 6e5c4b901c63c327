// The bookkeeping of one kind's KV pages (the memory itself is model::PagedKV): reference counts,
// a free list, and the prefix keys of pages whose content a later prompt may reuse.
#pragma once
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

}  // namespace g4::gen

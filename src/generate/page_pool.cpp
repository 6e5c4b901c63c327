#include "generate/page_pool.h"

#include "core/error.h"

namespace g4::gen {

PagePool::PagePool(int64_t pages) {
  G4_CHECK(pages >= 0, "page pool: ", pages, " pages");
  refs_.assign(static_cast<size_t>(pages), 0);
  keys_.assign(static_cast<size_t>(pages), 0);
  for (int64_t p = pages - 1; p >= 0; --p) free_.push_back(p);
}

int64_t PagePool::take() {
  G4_CHECK(!free_.empty(), "page pool: no free page (", size(), " in use)");
  const int64_t p = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(p)] = 1;
  return p;
}

void PagePool::retain(int64_t page) {
  G4_CHECK(page >= 0 && page < size() && refs_[static_cast<size_t>(page)] > 0, "page pool: retain of page ", page,
           ", which is not held");
  ++refs_[static_cast<size_t>(page)];
}

bool PagePool::release(int64_t page) {
  G4_CHECK(page >= 0 && page < size() && refs_[static_cast<size_t>(page)] > 0, "page pool: release of page ", page,
           ", which is not held");
  if (--refs_[static_cast<size_t>(page)] > 0) return false;
  keys_[static_cast<size_t>(page)] = 0;
  free_.push_back(page);
  return true;
}

}  // namespace g4::gen

#include "core/allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "core/error.h"

namespace attnlab::cpu_allocator {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kHugeAlign = size_t(2) << 20;  // 2 MiB blocks get transparent huge pages
// Blocks above this are never cached, and the cache never holds more than kMaxCached in total.
constexpr size_t kMaxCachedBlock = size_t(4) << 30;
constexpr size_t kMaxCached = size_t(8) << 30;

struct State {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_lists;
  AllocatorStats st;
};
State& state() {
  static State* s = new State();  // never destroyed: tensors may outlive static destructors
  return *s;
}

void* system_allocate(size_t bytes) {
  size_t align = bytes >= kHugeAlign ? kHugeAlign : kAlign;
  void* p = nullptr;
  if (posix_memalign(&p, align, bytes) != 0) throw std::bad_alloc();
  if (bytes >= kHugeAlign) madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

}  // namespace

size_t size_class(size_t n) {
  // Above 2^62 the power-of-two search below would wrap to 0 and spin forever.
  if (n > (size_t(1) << 62)) fail<MemoryError>("allocate", n, " bytes requested: beyond any machine's memory");
  if (n == 0) n = 1;
  if (n <= 4096) return (n + kAlign - 1) / kAlign * kAlign;
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = p / 16;  // 16 classes per power of two above 4 KiB
  return (n + step - 1) / step * step;
}

void* allocate(size_t nbytes) {
  size_t bytes = size_class(nbytes);
  State& s = state();
  if constexpr (!kCaching) {
    void* p = system_allocate(std::max<size_t>(nbytes, 1));
    std::lock_guard<std::mutex> lock(s.mu);
    s.st.fresh_allocations++;
    s.st.bytes_in_use += bytes;
    if (s.st.bytes_in_use > s.st.peak_bytes_in_use) s.st.peak_bytes_in_use = s.st.bytes_in_use;
    return p;
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.free_lists.find(bytes);
    if (it != s.free_lists.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      s.st.bytes_cached -= bytes;
      s.st.bytes_in_use += bytes;
      s.st.cache_hits++;
      if (s.st.bytes_in_use > s.st.peak_bytes_in_use) s.st.peak_bytes_in_use = s.st.bytes_in_use;
      return p;
    }
  }
  void* p;
  try {
    p = system_allocate(bytes);
  } catch (const std::bad_alloc&) {
    empty_cache();  // one retry after handing cached blocks back
    p = system_allocate(bytes);
  }
  std::lock_guard<std::mutex> lock(s.mu);
  s.st.fresh_allocations++;
  s.st.bytes_in_use += bytes;
  if (s.st.bytes_in_use > s.st.peak_bytes_in_use) s.st.peak_bytes_in_use = s.st.bytes_in_use;
  return p;
}

void deallocate(void* ptr, size_t nbytes) {
  if (!ptr) return;
  size_t bytes = size_class(nbytes);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.st.bytes_in_use -= bytes;
  if (kCaching && bytes <= kMaxCachedBlock && s.st.bytes_cached + bytes <= kMaxCached) {
    s.free_lists[bytes].push_back(ptr);
    s.st.bytes_cached += bytes;
  } else {
    std::free(ptr);
  }
}

AllocatorStats stats() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.st;
}

void reset_peak() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.st.peak_bytes_in_use = s.st.bytes_in_use;
}

void empty_cache() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  for (auto& [size, list] : s.free_lists)
    for (void* p : list) std::free(p);
  s.free_lists.clear();
  s.st.bytes_cached = 0;
}

}  // namespace attnlab::cpu_allocator

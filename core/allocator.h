// Caching host allocator: freed blocks go back to size-class free lists and are handed out again,
// so steady-state training touches no fresh pages (a fresh 4 KiB page costs ~3 µs on our machines).
#pragma once
#include <cstddef>
#include <cstdint>

// Under AddressSanitizer the cache is bypassed: every block comes from and goes back to the system
// allocator at its exact size, so ASan's quarantine sees a use after free of tensor memory and its
// redzones an overflow past the requested bytes (a cached block would hide both). Statistics still
// count in size classes; cache_hits and bytes_cached stay 0.
#if defined(__SANITIZE_ADDRESS__)
#define ATTNLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTNLAB_ASAN 1
#endif
#endif
#ifndef ATTNLAB_ASAN
#define ATTNLAB_ASAN 0
#endif

namespace attnlab {

struct AllocatorStats {
  size_t bytes_in_use = 0;      // held by live tensors (rounded to size classes)
  size_t peak_bytes_in_use = 0;
  size_t bytes_cached = 0;      // free blocks kept for reuse
  uint64_t fresh_allocations = 0;  // requests served by the system allocator
  uint64_t cache_hits = 0;         // requests served from the cache
};

namespace cpu_allocator {
inline constexpr bool kCaching = !ATTNLAB_ASAN;  // false in AddressSanitizer builds
void* allocate(size_t nbytes);
void deallocate(void* ptr, size_t nbytes);
AllocatorStats stats();
void reset_peak();
void empty_cache();  // returns every cached block to the system
// Rounds a request up to its size class (≤ 12.5 % waste above 4 KiB).
size_t size_class(size_t nbytes);
}  // namespace cpu_allocator

}  // namespace attnlab

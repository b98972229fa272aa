// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). Element i of a draw is a
// pure function of (seed, stream, offset + i), so results do not depend on threading and a GPU
// kernel can draw the same numbers.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>

namespace attnlab {

inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(M0) * ctr[0], p1 = uint64_t(M1) * ctr[2];
    ctr = {uint32_t(p1 >> 32) ^ ctr[1] ^ key[0], uint32_t(p1), uint32_t(p0 >> 32) ^ ctr[3] ^ key[1], uint32_t(p0)};
    key[0] += W0;
    key[1] += W1;
  }
  return ctr;
}

class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t stream = 0) : seed_(seed), stream_(stream) {}
  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t o) { offset_ = o; }
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  // Reserves n counters and returns the first; the draw then uses counters [first, first + n).
  uint64_t advance(uint64_t n) { uint64_t first = offset_; offset_ += n; return first; }
  // Four independent 32-bit words for counter c.
  std::array<uint32_t, 4> bits(uint64_t c) const {
    return philox4x32({uint32_t(c), uint32_t(c >> 32), uint32_t(stream_), uint32_t(stream_ >> 32)},
                      {uint32_t(seed_), uint32_t(seed_ >> 32)});
  }

 private:
  uint64_t seed_, stream_, offset_ = 0;
};

Generator& default_generator();
void manual_seed(uint64_t seed);

// Uniforms strictly inside (0, 1): safe under log. (k + 0.5) / 2^24 for the top k rounds to exactly
// 1 in float (likewise 2^53 in double), so the result is capped at the largest value below 1.
inline float u32_to_open_float(uint32_t x) {
  return std::min((float(x >> 8) + 0.5f) * (1.0f / 16777216.0f), 0x1.fffffep-1f);
}
inline double u64_to_open_double(uint32_t hi, uint32_t lo) {
  uint64_t v = (uint64_t(hi) << 21) ^ (uint64_t(lo) >> 11);  // 53 bits
  return std::min((double(v & ((uint64_t(1) << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0),
                  0x1.fffffffffffffp-1);
}

}  // namespace attnlab

#include "datasets/batches.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "core/rng.h"

namespace attnlab {

std::vector<int64_t> random_permutation(int64_t n, Generator& g) {
  if (n < 0) fail<ValueError>("random_permutation", "n must be >= 0, got ", n);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  // One counter per position, reserved up front: the result depends only on (seed, stream, offset).
  const uint64_t first = g.advance(uint64_t(n));
  for (int64_t i = n - 1; i > 0; --i) {
    auto b = g.bits(first + uint64_t(i));
    uint64_t r = (uint64_t(b[0]) << 32) | b[1];
    // Modulo bias is at most n / 2^64: far below anything a shuffle could notice.
    int64_t j = int64_t(r % uint64_t(i + 1));
    std::swap(perm[size_t(i)], perm[size_t(j)]);
  }
  return perm;
}

std::vector<Tensor> shuffled_batches(int64_t n, int64_t batch, Generator& g, bool drop_last) {
  if (n < 0) fail<ValueError>("shuffled_batches", "n must be >= 0, got ", n);
  if (batch <= 0) fail<ValueError>("shuffled_batches", "batch size must be > 0, got ", batch);
  std::vector<int64_t> perm = random_permutation(n, g);
  std::vector<Tensor> out;
  for (int64_t start = 0; start < n; start += batch) {
    int64_t len = std::min(batch, n - start);
    if (drop_last && len < batch) break;
    out.push_back(from_vector(std::vector<int64_t>(perm.begin() + start, perm.begin() + start + len), Shape{len}));
  }
  return out;
}

}  // namespace attnlab

// Minibatch index plans: which rows of a data set go into each step of an epoch.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

class Generator;

// One epoch over n examples in a random order drawn from g: i64 index tensors of `batch` entries
// (the last one shorter unless drop_last), each usable as index_select(x, 0, idx). Every index in
// [0, n) appears exactly once (or at most once with drop_last). Same generator state, same plan.
std::vector<Tensor> shuffled_batches(int64_t n, int64_t batch, Generator& g, bool drop_last = false);

// A uniformly random permutation of [0, n) (Fisher-Yates on the counter-based generator).
std::vector<int64_t> random_permutation(int64_t n, Generator& g);

}  // namespace attnlab

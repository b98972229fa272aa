// Fused layer ops with hand-written backwards (each registered with gradcheck cases) and the
// losses. Derivations: docs/backward.md#layers.
#pragma once
#include "core/rng.h"
#include "core/tensor.h"

namespace attnlab {

// y = x Wᵀ + b over the last dim of x; W is [out, in]. One GEMM for all leading dims.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// Normalises over the last dim: (x - mean) / sqrt(var + eps) * weight + bias (biased variance).
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);

// Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);

// Rows of weight [num, dim] picked by i64 ids of any shape -> [..., dim].
Tensor embedding(const Tensor& weight, const Tensor& ids);

struct CrossEntropyOptions {
  int64_t ignore_index = -100;  // targets equal to this contribute nothing
  double label_smoothing = 0;   // ε: the target distribution is (1-ε) one-hot + ε/V uniform
};
// Mean over non-ignored rows of -log softmax(logits)[target] (with smoothing); logits [N, V], targets i64 [N].
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const CrossEntropyOptions& opts = {});

// Fraction of non-ignored rows whose argmax equals the target.
double accuracy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// Nats per token to bits per character.
inline double bits_per_character(double nats) { return nats / 0.69314718055994530942; }

}  // namespace attnlab

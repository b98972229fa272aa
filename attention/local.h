// Block-local attention: the sequence is cut into non-overlapping blocks of `block` positions and
// each query attends only to the keys of its own block (optionally causally inside it), as in the
// local heads of the Routing Transformer and the block-local baseline of Sparse Sinkhorn attention.
// Cost O(n · block · dh) instead of O(n² dh).
#pragma once
#include "attention/attention.h"
#include "attention/softmax.h"

namespace attnlab {

// b8 [tq, tk], true where query i (at key position i + tk - tq) and key j lie in different blocks.
Tensor local_block_mask(int64_t tq, int64_t tk, int64_t block);

// The composite reference: softmax attention with the block mask OR the causal / padding masks.
Tensor local_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                 int64_t block, double scale, Tensor* weights_out = nullptr);

class LocalAttention : public AttentionMethod {
 public:
  LocalAttention(int64_t block, double scale, AttentionImpl impl = AttentionImpl::fused);
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "local"; }
  int64_t block() const { return block_; }

 private:
  int64_t block_;
  double scale_;
  AttentionImpl impl_;
};

// The largest block a config may ask for: longer than any sequence a model config allows.
inline constexpr int64_t kMaxLocalBlock = int64_t(1) << 20;

// Config: {"type": "local", "block": 64 (default), "scale": optional (default 1/sqrt(head_dim)),
//          "impl": "fused" (default) | "composite"}.
AttentionBuilder parse_local_attention(ConfigSection& cfg);

}  // namespace attnlab

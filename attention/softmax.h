// Vanilla scaled dot-product attention (Vaswani et al. 2017) with causal and padding masks:
// out = softmax(q kᵀ / √dh + mask) v.
#pragma once
#include "attention/attention.h"

namespace attnlab {

// The composite reference, built from registered ops (matmul, masked_fill, softmax): every step is
// on the tape and visible to the audit. Fully masked query rows give zeros.
Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                   double scale, Tensor* weights_out = nullptr);
// The same with an explicit b8 mask (true = blocked) broadcastable to [B, H, Tq, Tk], or undefined.
Tensor masked_softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& blocked,
                                          double scale, Tensor* weights_out = nullptr);

// How a method computes softmax attention: the fused, tiled kernels (attention/flash.h; never store
// the n×n weights) or the composite reference above.
enum class AttentionImpl { fused, composite };
AttentionImpl parse_attention_impl(ConfigSection& cfg);  // cfg["impl"]: "fused" (default) | "composite"

// Runs the chosen impl for a method that has both. When the method records internals, "attn" gets
// the attention weights: the composite's own, or (fused: the kernels never form them) a composite
// rerun without grad.
using FusedAttention = std::function<Tensor()>;
using CompositeAttention = std::function<Tensor(const Tensor& q, const Tensor& k, const Tensor& v, Tensor* weights)>;
Tensor run_attention_impl(AttentionImpl impl, AttentionMethod& method, const Tensor& q, const Tensor& k,
                          const Tensor& v, const FusedAttention& fused, const CompositeAttention& composite);

class SoftmaxAttention : public AttentionMethod {
 public:
  explicit SoftmaxAttention(double scale, AttentionImpl impl = AttentionImpl::fused) : scale_(scale), impl_(impl) {}
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "softmax"; }
  AttentionImpl impl() const { return impl_; }

 private:
  double scale_;
  AttentionImpl impl_;
};

// Config: {"type": "softmax", "scale": optional (default 1/sqrt(head_dim)), "impl": "fused" (default) | "composite"}.
AttentionBuilder parse_softmax_attention(ConfigSection& cfg);

}  // namespace attnlab

#include "attention/softmax.h"

#include <cmath>
#include <limits>

#include "attention/flash.h"
#include "autograd/grad_mode.h"

namespace attnlab {

Tensor masked_softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& blocked,
                                          double scale, Tensor* weights_out) {
  Tensor scores = matmul(q, k.transpose(-1, -2)) * scale;  // kᵀ reaches BLAS as a flag
  if (blocked.defined()) scores = masked_fill(scores, blocked, -std::numeric_limits<double>::infinity());
  Tensor weights = softmax(scores, -1);
  if (weights_out) *weights_out = weights;
  return matmul(weights, v);
}

Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                   double scale, Tensor* weights_out) {
  check_qkv("softmax_attention", q, k, v, mask);
  return masked_softmax_attention_composite(q, k, v, blocked_positions(mask, q.size(2), k.size(2)), scale,
                                            weights_out);
}

AttentionImpl parse_attention_impl(ConfigSection& cfg) {
  return cfg.choice("impl", "fused", {"fused", "composite"}) == "fused" ? AttentionImpl::fused
                                                                        : AttentionImpl::composite;
}

Tensor run_attention_impl(AttentionImpl impl, AttentionMethod& method, const Tensor& q, const Tensor& k,
                          const Tensor& v, const FusedAttention& fused, const CompositeAttention& composite) {
  if (impl == AttentionImpl::composite) {
    Tensor w;
    Tensor out = composite(q, k, v, method.record_internals ? &w : nullptr);
    if (method.record_internals) method.internals["attn"] = w.detach();
    return out;
  }
  Tensor out = fused();
  if (method.record_internals) {
    NoGradGuard ng;
    Tensor w;
    composite(q.detach(), k.detach(), v.detach(), &w);
    method.internals["attn"] = w;
  }
  return out;
}

Tensor SoftmaxAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  return run_attention_impl(
      impl_, *this, q, k, v, [&] { return flash_attention(q, k, v, mask, scale_); },
      [&](const Tensor& cq, const Tensor& ck, const Tensor& cv, Tensor* w) {
        return softmax_attention_composite(cq, ck, cv, mask, scale_, w);
      });
}

AttentionBuilder parse_softmax_attention(ConfigSection& cfg) {
  const std::optional<double> scale = parse_attention_scale(cfg);
  const AttentionImpl impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    return std::make_shared<SoftmaxAttention>(attention_scale(scale, ctx), impl);
  };
}

}  // namespace attnlab

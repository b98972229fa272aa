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

AttentionImpl parse_attention_impl(const char* method, const nlohmann::json& cfg) {
  if (!cfg.contains("impl")) return AttentionImpl::fused;
  const nlohmann::json& j = cfg["impl"];
  if (j == "fused") return AttentionImpl::fused;
  if (j == "composite") return AttentionImpl::composite;
  fail<ValueError>(method, "impl must be \"fused\" or \"composite\", got ", j.dump());
}

Tensor SoftmaxAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  if (impl_ == AttentionImpl::composite) {
    Tensor w;
    Tensor out = softmax_attention_composite(q, k, v, mask, scale_, record_internals ? &w : nullptr);
    if (record_internals) internals["attn"] = w.detach();
    return out;
  }
  Tensor out = flash_attention(q, k, v, mask, scale_);
  if (record_internals) {  // the fused kernels never form the weights: compute them for the tools
    NoGradGuard ng;
    Tensor w;
    softmax_attention_composite(q.detach(), k.detach(), v.detach(), mask, scale_, &w);
    internals["attn"] = w;
  }
  return out;
}

std::shared_ptr<AttentionMethod> make_softmax_attention(const nlohmann::json& cfg, const AttentionContext& ctx) {
  double scale = cfg.value("scale", 1.0 / std::sqrt(double(std::max<int64_t>(ctx.head_dim, 1))));
  return std::make_shared<SoftmaxAttention>(scale, parse_attention_impl("softmax attention", cfg));
}

}  // namespace attnlab

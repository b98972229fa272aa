#include "attention/softmax.h"

#include <cmath>
#include <limits>

namespace attnlab {

Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                   double scale, Tensor* weights_out) {
  check_qkv("softmax_attention", q, k, v, mask);
  Tensor scores = matmul(q, k.transpose(-1, -2)) * scale;  // kᵀ reaches BLAS as a flag
  Tensor blocked = blocked_positions(mask, q.size(2), k.size(2));
  if (blocked.defined()) scores = masked_fill(scores, blocked, -std::numeric_limits<double>::infinity());
  Tensor weights = softmax(scores, -1);
  if (weights_out) *weights_out = weights;
  return matmul(weights, v);
}

Tensor SoftmaxAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  Tensor w;
  Tensor out = softmax_attention_composite(q, k, v, mask, scale_, record_internals ? &w : nullptr);
  if (record_internals) internals["attn"] = w.detach();
  return out;
}

std::shared_ptr<AttentionMethod> make_softmax_attention(const nlohmann::json& cfg, const AttentionContext& ctx) {
  double scale = cfg.value("scale", 1.0 / std::sqrt(double(std::max<int64_t>(ctx.head_dim, 1))));
  return std::make_shared<SoftmaxAttention>(scale);
}

}  // namespace attnlab

// Vanilla scaled dot-product attention (Vaswani et al. 2017) with causal and padding masks:
// out = softmax(q kᵀ / √dh + mask) v.
#pragma once
#include "attention/attention.h"

namespace attnlab {

// The composite reference, built from registered ops (matmul, masked_fill, softmax): every step is
// on the tape and visible to the audit. Fully masked query rows give zeros.
Tensor softmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                   double scale, Tensor* weights_out = nullptr);

class SoftmaxAttention : public AttentionMethod {
 public:
  explicit SoftmaxAttention(double scale) : scale_(scale) {}
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "softmax"; }

 private:
  double scale_;
};

// Config: {"type": "softmax", "scale": optional (default 1/sqrt(head_dim))}.
std::shared_ptr<AttentionMethod> make_softmax_attention(const nlohmann::json& cfg, const AttentionContext& ctx);

}  // namespace attnlab

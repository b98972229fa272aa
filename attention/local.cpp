#include "attention/local.h"

#include <cmath>

#include "attention/flash.h"
#include "autograd/grad_mode.h"

namespace attnlab {

namespace {
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
}  // namespace

Tensor local_block_mask(int64_t tq, int64_t tk, int64_t block) {
  if (block <= 0) fail<ValueError>("local_block_mask", "block must be positive, got ", block);
  Tensor m = empty({tq, tk}, DType::b8);
  uint8_t* p = m.data<uint8_t>();
  const int64_t shift = tk - tq;  // queries align with the last tq keys
  for (int64_t i = 0; i < tq; ++i)
    for (int64_t j = 0; j < tk; ++j) p[i * tk + j] = floor_div(i + shift, block) != j / block;
  return m;
}

Tensor local_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                 int64_t block, double scale, Tensor* weights_out) {
  check_qkv("local_attention", q, k, v, mask);
  Tensor blocked = local_block_mask(q.size(2), k.size(2), block);
  Tensor other = blocked_positions(mask, q.size(2), k.size(2));
  if (other.defined()) {  // either reason blocks
    Shape s = broadcast_shapes("local_attention", blocked.shape(), other.shape());
    blocked = ne(add(blocked.expand(s).to(DType::f32), other.expand(s).to(DType::f32)), zeros({}, DType::f32));
  }
  return masked_softmax_attention_composite(q, k, v, blocked, scale, weights_out);
}

LocalAttention::LocalAttention(int64_t block, double scale, AttentionImpl impl)
    : block_(block), scale_(scale), impl_(impl) {
  if (block <= 0) fail<ValueError>("local attention", "block must be positive, got ", block);
}

Tensor LocalAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  if (impl_ == AttentionImpl::composite) {
    Tensor w;
    Tensor out = local_attention_composite(q, k, v, mask, block_, scale_, record_internals ? &w : nullptr);
    if (record_internals) internals["attn"] = w.detach();
    return out;
  }
  Tensor out = local_attention(q, k, v, mask, block_, scale_);
  if (record_internals) {  // the fused kernels never form the weights: compute them for the tools
    NoGradGuard ng;
    Tensor w;
    local_attention_composite(q.detach(), k.detach(), v.detach(), mask, block_, scale_, &w);
    internals["attn"] = w;
  }
  return out;
}

std::shared_ptr<AttentionMethod> make_local_attention(const nlohmann::json& cfg, const AttentionContext& ctx) {
  const nlohmann::json block = cfg.contains("block") ? cfg["block"] : nlohmann::json(64);
  if (!block.is_number_integer() || block.get<int64_t>() <= 0)
    fail<ValueError>("local attention", "block must be a positive integer, got ", block.dump());
  double scale = cfg.value("scale", 1.0 / std::sqrt(double(std::max<int64_t>(ctx.head_dim, 1))));
  return std::make_shared<LocalAttention>(block.get<int64_t>(), scale, parse_attention_impl("local attention", cfg));
}

}  // namespace attnlab

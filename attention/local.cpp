#include "attention/local.h"

#include <cmath>

#include "attention/flash.h"

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
  Tensor blocked =
      blocked_by_either(local_block_mask(q.size(2), k.size(2), block), blocked_positions(mask, q.size(2), k.size(2)));
  return masked_softmax_attention_composite(q, k, v, blocked, scale, weights_out);
}

LocalAttention::LocalAttention(int64_t block, double scale, AttentionImpl impl)
    : block_(block), scale_(scale), impl_(impl) {
  if (block <= 0) fail<ValueError>("local attention", "block must be positive, got ", block);
}

Tensor LocalAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  return run_attention_impl(
      impl_, *this, q, k, v, [&] { return local_attention(q, k, v, mask, block_, scale_); },
      [&](const Tensor& cq, const Tensor& ck, const Tensor& cv, Tensor* w) {
        return local_attention_composite(cq, ck, cv, mask, block_, scale_, w);
      });
}

AttentionBuilder parse_local_attention(ConfigSection& cfg) {
  const int64_t block = cfg.integer("block", 64, 1, kMaxLocalBlock);
  const std::optional<double> scale = parse_attention_scale(cfg);
  const AttentionImpl impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    return std::make_shared<LocalAttention>(block, attention_scale(scale, ctx), impl);
  };
}

}  // namespace attnlab

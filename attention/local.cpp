#include "attention/local.h"

#include <cmath>

#include "attention/block_sparse.h"
#include "attention/flash.h"
#include "autograd/cases.h"

namespace attnlab {
using namespace cases;

using flash::ScopedTiles;

namespace {
const OpDef kLocalAttention(
    "local_attention",
    "block_sparse_attention's on the block-local layout: dV = Pᵀ g, dS = P∘(g Vᵀ - D), dQ = scale dS K, dK = scale "
    "dSᵀ Q",
    {{"block 3 on T 8 (short last block), tiles 2x2",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 8, 3}), rn(g, {1, 2, 8, 3}), rn(g, {1, 2, 8, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 2, 2, 2});
        return local_attention(in[0], in[1], in[2], {}, 3, 0.6);
      }},
     {"block 4, causal + key padding, tiles 3x3",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 7, 2}), rn(g, {2, 1, 7, 2}), rn(g, {2, 1, 7, 2}),
                      from_vector({0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0}, {2, 7}, DType::b8)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 3, 3, 3});
        return local_attention(in[0], in[1], in[2], {true, in[3]}, 4, 0.8);
      }},
     {"block 3, Tq 4 < Tk 7, non-contiguous inputs",
      [](Generator& g) {
        return Inputs{rn_t(g, {1, 1, 4, 3}), rn(g, {1, 7, 1, 3}).permute({0, 2, 1, 3}), rn_t(g, {1, 1, 7, 3})};
      },
      [](const Inputs& in) { return local_attention(in[0], in[1], in[2], {}, 3, 0.7); }}});
}  // namespace

// A client of the block-sparse engine: the block-local layout, with mask.causal inside each block.
Tensor local_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, int64_t block,
                       double scale, Tensor* lse_out) {
  if (block <= 0) fail<ValueError>("local_attention", "block must be positive, got ", block);
  check_qkv("local_attention", q, k, v, mask);
  return block_sparse_attention(kLocalAttention, q, k, v,
                                block_sparse::local_layout(q.size(2), k.size(2), block, mask.causal),
                                {false, mask.key_padding}, scale, lse_out);
}

Tensor local_block_mask(int64_t tq, int64_t tk, int64_t block) {
  if (block <= 0) fail<ValueError>("local_block_mask", "block must be positive, got ", block);
  return block_sparse::dense_mask(block_sparse::local_layout(tq, tk, block, false));
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

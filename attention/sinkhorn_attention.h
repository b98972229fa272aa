// Sparse Sinkhorn Attention (Tay, Bahri, Yang, Metzler & Juan, ICML 2020): the sequence is cut into
// blocks of `block` positions; a small meta sorting network (SortNet) maps block summaries to sort
// logits R (N_B × N_B per head), Gumbel-Sinkhorn balancing turns them into a soft permutation S
// (attention/sinkhorn_balance.h), S sorts the key and value *blocks* (K^S_(i) = Σ_j S_ij K_(j), a
// batched matmul), and each query block attends to its sorted block and its own local block. Queries
// are not sorted. Variants (docs/sparse-sinkhorn.md says which the experiments used):
//   - causal (decoders, mask.causal): Causal Sinkhorn Balancing — block summaries are prefix pools up
//     to each block's first token, block i may only receive strictly past blocks j < i, column
//     normalisers run over rows <= i, and the own block is causally masked;
//   - SortCut (encoders, "sortcut": n): every query attends to the first n sorted blocks (linear cost);
//   - "local": false drops the own block (the paper's core form: sorted block only);
//   - "hard": true replaces S by a hard permutation in eval mode (greedy matching of S's entries).
//
// Sorted and local keys are one concatenated key axis [K^S ; K] (sorted slots first, so the own block's
// causal diagonal keeps the engine's alignment), heads folded into the batch (a sorted slot's padding
// is per head), and the block-sparse engine runs the attention on the layout that lists, for query
// block i, sorted block i (or the SortCut blocks) and local block i. A short last block is padded with
// zero keys/values for the sort; a sorted slot that receives no real key (weight exactly 0: a hard
// permutation placed the short block there, or causal block 0) is masked.
#pragma once
#include "attention/attention.h"
#include "attention/sinkhorn_balance.h"
#include "attention/softmax.h"

namespace attnlab {

struct SparseSinkhornOptions {
  enum class Pooling { sum, mean };
  int64_t block = 64;
  int64_t max_blocks = 64;    // the SortNet's output width: sequences may have at most this many blocks
  int64_t iterations = 7;     // Sinkhorn iterations T (paper's best)
  double temperature = 0.75;  // τ (paper's best)
  bool noise = true;          // Gumbel noise while training (never in eval)
  Pooling pooling = Pooling::sum;
  bool sort_on_queries = false;  // SortNet input: pooled keys (false) or [pooled queries, pooled keys]
  bool relu = true;              // R = ReLU(s W + b) (paper); false: linear logits (as the LRA code)
  bool local = true;             // each query block also attends to its own block
  int64_t sortcut = 0;           // > 0: SortCut budget (blocks), encoders only
  bool hard = false;             // hard permutation in eval mode
  double scale = 1;
  AttentionImpl impl = AttentionImpl::fused;
};

// The SortNet parameters of one layer: weight [1, H, d_in, max_blocks], bias [1, H, 1, max_blocks].
struct SortNet {
  Tensor weight, bias;
};

// What a forward computed besides the output, for the method's internals and stats.
struct SparseSinkhornTrace {
  Tensor sort;  // S [B, H, N_B, N_B] (detached)
  Tensor attn;  // when asked for: [B, H, T, T] value weights over the original positions
};

// The layer as a function: q, k, v [B, H, T, dh] (self-attention: the same T), f32 or f64. gen draws the
// Gumbel noise (none when null or !training); trace, when set, receives the sort matrices (and with
// trace_attn the effective weights, from the composite).
Tensor sparse_sinkhorn_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                 const SortNet& net, const SparseSinkhornOptions& opts, Generator* gen, bool training,
                                 SparseSinkhornTrace* trace = nullptr, bool trace_attn = false);

class SparseSinkhornAttention : public AttentionMethod {
 public:
  SparseSinkhornAttention(const SparseSinkhornOptions& opts, const AttentionContext& ctx);
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "sinkhorn"; }
  // "sort_max": mean over destination blocks of max_j S_ij (1: a hard permutation), per head.
  std::map<std::string, std::vector<double>> stats() const override { return {{"sort_max", sort_max_}}; }
  const SparseSinkhornOptions& options() const { return opts_; }
  SortNet sort_net() const { return {*weight_, *bias_}; }

 private:
  SparseSinkhornOptions opts_;
  std::shared_ptr<Generator> gen_;
  Tensor* weight_ = nullptr;
  Tensor* bias_ = nullptr;
  std::vector<double> sort_max_;
};

// Config: {"type": "sinkhorn", "block": 64, "max_blocks": 64, "iterations": 7, "temperature": 0.75,
//          "noise": true, "pooling": "sum" | "mean", "sort_input": "keys" | "queries_keys",
//          "sortnet": "relu" | "linear", "local": true, "sortcut": 0, "hard": false, "scale": optional,
//          "impl": "fused" | "composite"}.
// Internals (record_internals): "sort" [B, H, N_B, N_B], "order" [B, H, N_B] (each destination block's
// largest source block), "attn" [B, H, T, T] (value weights over the original positions).
AttentionBuilder parse_sinkhorn_attention(ConfigSection& cfg);

}  // namespace attnlab

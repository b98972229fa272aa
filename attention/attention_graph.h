// Attention graphs: which (query, key) pairs a head computes, per batch and head, as compressed rows
// (the edges of query i are cols[row_ptr[i] .. row_ptr[i+1]), keys in increasing order). Sparsefinder
// predicts them (attention/sparsefinder.h), graph_entmax_attention computes attention on them only,
// and the metrics here compare a predicted graph with the true support of a trained entmax head.
#pragma once
#include <cstdint>
#include <vector>

#include "attention/attention.h"

namespace attnlab {

struct AttentionGraph {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0;
  std::vector<int64_t> row_ptr;  // [B·H·Tq + 1], offsets into cols over every (batch, head, query) row
  std::vector<int32_t> cols;     // key indices

  int64_t rows() const { return B * H * Tq; }
  int64_t edges() const { return int64_t(cols.size()); }
  // Edges of row (b·H + h)·Tq + i.
  int64_t begin(int64_t row) const { return row_ptr[size_t(row)]; }
  int64_t end(int64_t row) const { return row_ptr[size_t(row) + 1]; }
  bool has(int64_t bh, int64_t i, int64_t j) const;

  // From a b8 mask [B, H, Tq, Tk] (or broadcastable to it: [Tq, Tk], [B, 1, Tq, Tk], ...), true = edge.
  static AttentionGraph from_mask(const Tensor& mask, int64_t B, int64_t H);
  // The b8 mask [B, H, Tq, Tk].
  Tensor to_mask() const;
  // Throws ValueError naming `op` unless the shape fields, offsets and key indices are consistent
  // (row_ptr non-decreasing from 0 to edges(), keys in [0, Tk) and strictly increasing in a row).
  void validate(const char* op) const;
};

// Which (query, key) pairs a mask lets through: causal (aligned at the end, query i at key position
// i + Tk − Tq) and key padding; a padded query — when queries and keys are the same positions — is no
// query (methods.md §5.4's valid pairs are non-padding × non-padding).
class PairVisibility {
 public:
  PairVisibility(const AttentionMask& mask, int64_t B, int64_t Tq, int64_t Tk);  // ShapeError on bad padding
  bool query(int64_t b, int64_t i) const;
  bool operator()(int64_t b, int64_t i, int64_t j) const;
  int64_t keys(int64_t b, int64_t i) const;  // visible keys of query i

 private:
  int64_t Tq, Tk;
  bool causal;
  std::vector<uint8_t> pad;  // [B, Tk]; empty: none
};

// The graph restricted to the pairs a mask allows (causal and key padding as in AttentionMask).
AttentionGraph restrict_to_visible(const AttentionGraph& g, const AttentionMask& mask);

// Block level: the (query block, key block) tiles that hold at least one edge, as a graph over blocks
// (Tq' = ⌈Tq / bq⌉, Tk' = ⌈Tk / bk⌉), and back to tokens: every visible pair inside a listed tile.
AttentionGraph block_graph(const AttentionGraph& g, int64_t bq, int64_t bk);
AttentionGraph expand_blocks(const AttentionGraph& blocks, int64_t bq, int64_t bk, int64_t Tq, int64_t Tk,
                             const AttentionMask& mask);

// Sparsefinder's metrics (Treviso et al. 2022, methods.md §5.4) of a predicted graph against the gold
// one, per head (averaged over the batch), over the valid pairs V (visible under the mask):
//   sparsity = 1 − |pred ∩ V| / |V|   (the fraction of pairs not computed),
//   recall   = |pred ∩ gold| / |gold| (1 where gold is empty),
//   exact    = the fraction of valid queries whose gold edges are all predicted (for those rows attention
//              on the predicted graph equals full entmax).
struct GraphMetrics {
  std::vector<double> sparsity, recall, exact, gold_sparsity;  // [H]
  double mean_sparsity() const;
  double mean_recall() const;
  double mean_exact() const;
};
GraphMetrics graph_metrics(const AttentionGraph& predicted, const AttentionGraph& gold, const AttentionMask& mask);
// The same at block level: tiles of bq × bk, a tile valid when it holds a valid pair.
GraphMetrics block_graph_metrics(const AttentionGraph& predicted, const AttentionGraph& gold, const AttentionMask& mask,
                                 int64_t bq, int64_t bk);

}  // namespace attnlab

// Sparsefinder (Treviso, Góis, Fernandes, Fonseca & Martins 2022; methods.md §5): predict, before
// computing attention, which (query, key) pairs a trained α-entmax head gives non-zero weight.
//
//   gold graph  G = {(i, j) : p_ij > 0} of the teacher head (entmax_support);
//   projections q'_i = W_hᵀ q_i + b_h, k'_j = W_hᵀ k_j + b_h (W_h: dh × r, r = 4 by default), trained
//               with the margin hinge loss below, the teacher frozen;
//   predictors  distance (‖q' − k'‖² < t), equal-size buckets per projected dimension (an edge when
//               q' and k' share a bucket in any dimension), k-means clusters (an edge when they share
//               one of their top clusters); a local window and global tokens OR-ed in; baselines
//               (window only, random, a fixed strided pattern) on the same axes.
//
// Attention on a predicted graph: attention/graph_entmax.h. Metrics: attention/attention_graph.h.
#pragma once
#include <memory>

#include "attention/attention_graph.h"
#include "layers/module.h"

namespace attnlab::sparsefinder {

// The exact support of α-entmax attention of q, k (scores scale · q kᵀ under the mask), per row.
AttentionGraph entmax_support(const Tensor& q, const Tensor& k, const AttentionMask& mask, double scale,
                              double alpha);

// Positives and negatives of the hinge loss: for every valid query, its gold keys and as many keys
// drawn uniformly without replacement from its visible non-gold keys (fewer when there are not enough).
struct PairSample {
  AttentionGraph pos, neg;
  std::vector<int64_t> valid_queries;  // [B]: the loss is normalised per sequence by this length
};
PairSample sample_pairs(const AttentionGraph& gold, const AttentionMask& mask, Generator& gen);

// The Sparsefinder loss (registered op "sparsefinder_hinge"): qp [B, H, Tq, r], kp [B, H, Tk, r],
//   ℓ_i = [ω + Σ_{j ∈ P_i} ‖q'_i − k'_j‖² − Σ_{l ∈ N_i} ‖q'_i − k'_l‖²]_+   (one hinge per query),
// summed over the queries of a sequence, divided by its valid length, averaged over batch and heads.
Tensor hinge_loss(const Tensor& qp, const Tensor& kp, std::shared_ptr<const PairSample> pairs, double margin = 1.0);

// The learned projections of every head of one layer: x [B, H, T, dh] -> [B, H, T, r].
class Projections : public Module {
 public:
  Projections(int64_t heads, int64_t head_dim, int64_t rank, DType dtype, Generator& gen);
  Tensor project(const Tensor& x) const;
  int64_t rank() const { return rank_; }

 private:
  int64_t rank_;
  Tensor& weight_;  // [H, dh, r]
  Tensor& bias_;    // [H, 1, r]
};

// ---- predictors: graphs from projected queries qp [B, H, Tq, r] and keys kp [B, H, Tk, r], restricted
// to the pairs the mask lets through -------------------------------------------------------------

AttentionGraph distance_graph(const Tensor& qp, const Tensor& kp, double threshold, const AttentionMask& mask);

// Bucket of every token in every projected dimension: tokens sorted by their value in that dimension
// (padded tokens last), bucket = rank / bucket_size, so every bucket holds exactly bucket_size tokens
// (the last one the remainder). x [B, H, T, r] -> i64 [B, H, T, r]. padding: b8 [B, T] or undefined.
Tensor equal_size_buckets(const Tensor& x, int64_t bucket_size, const Tensor& padding);
AttentionGraph bucket_graph(const Tensor& qp, const Tensor& kp, int64_t bucket_size, const AttentionMask& mask);

// k-means per head on projected queries and keys together (Lloyd's iterations from a k-means++ start).
struct Centroids {
  Tensor c;  // f64 [H, clusters, r]
};
Centroids fit_kmeans(const Tensor& qp, const Tensor& kp, int64_t clusters, int64_t iterations, Generator& gen);
AttentionGraph cluster_graph(const Tensor& qp, const Tensor& kp, const Centroids& centroids, int64_t top_clusters,
                             const AttentionMask& mask);

// Pairs every predictor may add: a window |i' − j| <= window / 2 (i' the query's key position, i +
// Tk − Tq) and the first n_global tokens as keys for every query and as queries seeing every key.
AttentionGraph window_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t window, int64_t n_global,
                            const AttentionMask& mask);
// Baselines: each visible pair with probability density (seeded); the fixed strided pattern of the
// Sparse Transformer: keys in the query's block of `stride` positions and every stride-th key.
AttentionGraph random_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, double density, const AttentionMask& mask,
                            Generator& gen);
AttentionGraph strided_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t stride, const AttentionMask& mask);

AttentionGraph graph_union(const AttentionGraph& a, const AttentionGraph& b);

}  // namespace attnlab::sparsefinder

// Routing attention (Roy, Saffar, Vaswani & Grangier, "Efficient Content-Based Sparse Attention with
// Routing Transformers", TACL 2021), with the semantics of the official code (../shared/docs/methods.md
// §6): queries and keys are shared (share_qk) and layer-normalised without affine, x̂ = LN(q); each
// head has k centroids μ; cluster c takes the w tokens with the largest ⟨x̂_t, μ_c⟩ (balanced top-w, so
// a token may be in several clusters or in none), in position order; each cluster attends inside
// itself (causally by position), and a token's output is the sum of its clusters' outputs divided by
// (count + 1e-2): zero for a token no cluster took.
//
// The fused path sorts tokens by cluster (one gathered copy of x̂ and v: k contiguous segments of w),
// runs the block-sparse engine on the segments (query segment c reads key segment c, causal inside)
// and scatter-adds the outputs back; O(n k d + k w² d), O(n^1.5 d) at k ≈ w ≈ √n. The assignments are
// constants of the backward. Centroids are trained by EMA k-means outside the gradient (after_step),
// with a commitment loss β·mean(x̂ − sg(μ_c(t)))² through aux_loss. Derivations: docs/routing.md.
#pragma once
#include <optional>
#include <string>

#include "attention/attention.h"
#include "attention/softmax.h"

namespace attnlab {

namespace routing {

// The routing of one call, constant for the backward: for each (batch, head), k clusters of w
// slots. Cluster c of (b, h) holds positions index[b, h, c·w .. (c+1)·w), strictly increasing, then
// possibly empty slots (-1, only with the "nearest" assignment: a cluster with fewer than w tokens).
struct Routing {
  int64_t k = 0, w = 0, T = 0;
  bool partial = false;  // some slots are empty
  Tensor index;          // i64 [B, H, k·w]
  Tensor nearest;        // i64 [B, H, T]: argmax_c ⟨x̂_t, μ_c⟩, the token's own centroid (EMA, commitment)
  Tensor count;          // i64 [B, H, T]: how many clusters took the token
};

// The scatter-mean divisor of the official code: a token's summed outputs are divided by count + 1e-2.
inline constexpr double kCountSmoothing = 1e-2;
// Laplace smoothing of the EMA cluster sizes (official online_kmeans).
inline constexpr double kLaplaceEps = 1e-5;

// Routes x̂ [B, H, T, dh] with centroids [H, k, dh]: the top-w tokens per cluster by dot product (ties
// to the earlier position), sorted by position. 1 <= w <= T.
Routing route(const Tensor& xhat, const Tensor& centroids, int64_t w);
// The causal alternative ("assign": "nearest"): each token goes to its nearest centroid only, and a
// cluster keeps its first w tokens by position (capacity w; later ones are unrouted). A token's
// routing then depends on it and the tokens before it, never on later ones, unlike the official
// top-w over the whole sequence; clusters are not balanced (empty slots are -1).
Routing route_nearest(const Tensor& xhat, const Tensor& centroids, int64_t w);
// A routing from given clusters (tests, gradcheck cases): index i64 [B, H, k·w] with w positions per
// cluster, strictly increasing inside each; nearest is left undefined.
Routing from_index(const Tensor& index, int64_t k, int64_t T);
// The cluster window the method uses for T tokens: `window` when set (capped at T), else ceil(T / k),
// so that the k clusters can cover every token.
int64_t window_for(int64_t T, int64_t k, int64_t window);

// Sums of the tokens nearest to each centroid over one batch: count [H, k] and sum [H, k, dh] (f64),
// the statistics of one EMA step; padded tokens (key_padding b8 [B, T]) are left out.
struct BatchSums {
  Tensor count, sum;
};
BatchSums nearest_sums(const Tensor& xhat, const Tensor& nearest, int64_t k, const Tensor& key_padding = {});

// One EMA k-means step (official online_kmeans, VQ-VAE style), in place, per head h and cluster c:
//   N ← d N + (1−d) n_c,   S ← d S + (1−d) Σ x,   N' = (N + ε) / (Σ_c N + k ε) · Σ_c N,   μ ← S / N'.
// ema_count [H, k], ema_sum [H, k, dh], centroids [H, k, dh] (any floating dtype), sums in f64.
void ema_update(Tensor& centroids, Tensor& ema_count, Tensor& ema_sum, const BatchSums& batch, double decay,
                double eps = kLaplaceEps);

// The commitment loss β · mean_{b,h,t,d} (x̂ − sg(μ_nearest(t)))²: gradient 2β (x̂ − μ) / numel into x̂ only.
Tensor commitment_loss(const Tensor& xhat, const Tensor& centroids, const Tensor& nearest, double beta);
}  // namespace routing

// The LN of the official routing heads: zero mean, unit variance over the head dim, no affine.
Tensor routing_layer_norm(const Tensor& q);

// The fused op: x̂ [B, H, T, dh] (shared queries and keys), v [B, H, T, dh], f32 or f64; key_padding
// optional b8 [B, T]. The routing is a constant.
Tensor routing_attention(const Tensor& xhat, const Tensor& v, const routing::Routing& r, bool causal,
                         const Tensor& key_padding, double scale);

// The composite reference from registered ops: per cluster c, dense softmax attention of x̂ on x̂ with
// the mask "both tokens in cluster c (and causal)", rows outside c giving 0; summed over clusters and
// divided by count + 1e-2. weights_out receives the equivalent full attention matrix [B, H, T, T]
// (Σ_c P_c / (count + 1e-2): zero outside the clusters).
Tensor routing_attention_composite(const Tensor& xhat, const Tensor& v, const routing::Routing& r, bool causal,
                                   const Tensor& key_padding, double scale, Tensor* weights_out = nullptr);

class LocalAttention;

class RoutingAttention : public AttentionMethod {
 public:
  struct Options {
    int64_t clusters = 0;     // k; 0: round(√max_len)
    int64_t window = 0;       // w; 0: ceil(T / k) at each call
    int64_t local_heads = 0;  // the first local_heads heads are block-local (as the paper's models mix them)
    int64_t local_block = 64;
    bool nearest = false;  // "assign": "nearest" (causal routing) instead of the official "top_w"
    double scale = 0;      // of ⟨x̂_i, x̂_j⟩
    double decay = 0.999;
    double commitment = 1e-4;
    AttentionImpl impl = AttentionImpl::fused;
  };
  RoutingAttention(const Options& opt, const AttentionContext& ctx);
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "routing"; }
  std::map<std::string, std::vector<double>> stats() const override;
  Tensor aux_loss() const override { return aux_; }
  void after_step() override;

  const Options& options() const { return opt_; }
  int64_t routing_heads() const { return n_heads_ - opt_.local_heads; }
  const Tensor& centroids() const { return *centroids_; }

 private:
  Tensor route_and_attend(const Tensor& q, const Tensor& v, const AttentionMask& mask);

  Options opt_;
  int64_t n_heads_, head_dim_;
  std::shared_ptr<LocalAttention> local_;
  Tensor *centroids_, *ema_count_, *ema_sum_;  // buffers: saved with the model, never trained by gradient
  Tensor aux_;
  // Sums of the training forwards since the last after_step (f64); forwards counts them.
  routing::BatchSums pending_;
  int64_t pending_forwards_ = 0;
  // Per routing head, from the last forward: the largest cluster's share of the tokens (by nearest
  // centroid; 1/k when balanced), the share of tokens no cluster took; and the last EMA step's mean
  // centroid move.
  std::vector<double> max_share_, unrouted_, drift_;
};

// Config: {"type": "routing", "clusters": k (default round(√max_len)), "window": w (default
// ceil(T / k)), "assign": "top_w" (default, official) | "nearest" (causal), "local_heads": int or
// [per layer] (default 0), "local_block": 64, "decay": 0.999,
// "commitment": 1e-4, "scale": optional (default 1/sqrt(head_dim)), "impl": "fused" | "composite"}.
AttentionBuilder parse_routing_attention(ConfigSection& cfg);

}  // namespace attnlab

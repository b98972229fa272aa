// Entmax attention (Correia, Niculae & Martins 2019, "Adaptively Sparse Transformers"):
//
//   out = α-entmax(q kᵀ · scale + mask) v,
//
// softmax replaced by α-entmax (attention/entmax.h), so each query's weights are exactly zero
// outside a support. α is fixed (2: sparsemax and 1.5: 1.5-entmax, both exact; any other α > 1 by
// bisection) or one per head, learned (α = 1 + sigmoid(a) ∈ (1, 2), as the paper did); an optional
// learned temperature per head multiplies the scores (useful on long inputs, as ASEntmax found).
//
// The fused kernel (AdaSplash, Gonçalves et al. 2025, on the CPU) never forms the n×n weights: per
// query tile it finds τ of every row on a strip of scores (linear in n), records which key tiles hold
// any non-zero weight in a bitmask, and runs the output products and the whole backward on those
// tiles only. The backward uses δ = rowsum(dO ∘ Õ) with Õ = Σ_j s_j v_j / Σ_j s_j (s = p^(2−α)),
// saved by the forward, and gives ∂L/∂α per head in the same sweep. Derivation: docs/entmax.md.
#pragma once
#include "attention/attention.h"
#include "attention/attention_graph.h"
#include "attention/softmax.h"

namespace attnlab {

// Which entmax: one α for every head, or one per head (a tensor that may require grad).
struct EntmaxAlpha {
  double value = 1.5;  // > 1; 2 and 1.5 use the exact sort-based thresholds, any other α bisection
  Tensor per_head;     // when defined: [H], q's dtype, every α > 1 (bisection; ∂L/∂α when it requires grad)
};

// What the fused forward found, for the tools and the training logs.
struct EntmaxAttentionStats {
  Tensor support;  // i64 [B, H, Tq]: keys with a non-zero weight (0 for a fully masked query)
  Tensor tiles;    // b8 [B, H, ceil(Tq / tile_q), ceil(Tk / tile_k)]: the key tiles each query tile visits
  int64_t tile_q = 0, tile_k = 0;
};

// q [B, H, Tq, dh], k and v [B, H, Tk, dh], f32 or f64, any strides. Masks as flash_attention's
// (causal aligned at the end when Tk > Tq); fully masked rows give zeros and zero gradient; a row
// with a NaN or +inf score gives NaN. Extra memory linear in n: Õ, three numbers per query, per-thread
// strips of scores, a packed copy of Kᵀ (and Vᵀ in the backward) for the f32 register kernel.
Tensor entmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                        const EntmaxAlpha& alpha, EntmaxAttentionStats* stats = nullptr);

// The composite reference from registered ops: matmul, masked_fill, sparsemax / entmax15 /
// entmax_bisect, matmul. weights_out receives the [B, H, Tq, Tk] weights.
Tensor entmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                  double scale, const EntmaxAlpha& alpha, Tensor* weights_out = nullptr);

namespace entmax_attention_tiles {
// Query rows and keys per tile of the fused kernel (the bitmask's granularity), and the density
// below which a tile's products run per non-zero weight instead of as dense tile products; 0 (and a
// negative density) restore the defaults. For the tests (many tiles on small inputs, each path
// forced) and the benchmark.
struct Tiles {
  int64_t q = 0, k = 0;
  double sparse_below = -1;  // a share of the tile's entries; 0: always dense, > 1: always per weight
};
void set(const Tiles& t);
Tiles get();
}  // namespace entmax_attention_tiles

class EntmaxAttention : public AttentionMethod {
 public:
  struct Options {
    double alpha = 1.5;              // the fixed α, or the initial α of every head when learned
    bool learn_alpha = false;        // α_h = 1 + sigmoid(a_h), a_h a parameter ("alpha" must lie in (1, 2))
    double temperature = 1;          // multiplies the scores: the fixed value, or the initial one when learned
    bool learn_temperature = false;  // t_h = exp(θ_h), θ_h a parameter
    double scale = 1;
    AttentionImpl impl = AttentionImpl::fused;
  };
  EntmaxAttention(const Options& opt, int64_t n_heads, DType dtype);
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "entmax"; }
  std::map<std::string, std::vector<double>> stats() const override;

  Tensor alpha() const;        // [H], detached: the α of each head
  Tensor temperature() const;  // [H], detached
  const Options& options() const { return opt_; }
  // The scale the scores get (the config's scale times a fixed temperature; a learned temperature
  // multiplies q instead, and the recorded "q" internal includes it).
  double score_scale() const;

  // When set, attention is computed on the graph it returns for the (temperature-scaled) q, k and
  // the mask, with graph_entmax_attention (Sparsefinder's attention on a predicted graph); a scalar α
  // only. Unset (the default): full entmax attention.
  using GraphProvider =
      std::function<std::shared_ptr<const AttentionGraph>(const Tensor& q, const Tensor& k, const AttentionMask& m)>;
  GraphProvider graph_provider;

 private:
  EntmaxAlpha current_alpha() const;
  Tensor forward_on_graph(const Tensor& qs, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                          const EntmaxAlpha& alpha);
  Options opt_;
  int64_t n_heads_;
  // The registered parameters (Module::to replaces the tensors these point at), when learned.
  Tensor* alpha_logit_ = nullptr;      // [H]
  Tensor* log_temperature_ = nullptr;  // [H]
  std::vector<double> support_;        // mean support size per head in the last forward
};

// Config: {"type": "entmax", "alpha": 1.5, "learn_alpha": false, "temperature": 1,
//          "learn_temperature": false, "scale": optional, "impl": "fused" | "composite"}.
AttentionBuilder parse_entmax_attention(ConfigSection& cfg);

}  // namespace attnlab

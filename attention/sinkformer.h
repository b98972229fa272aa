// Sinkformers (Sander, Ablin, Blondel & Peyré, AISTATS 2022): attention whose weights are made
// (approximately) doubly stochastic by Sinkhorn's alternating row and column normalisations of
// exp(S), S = scale · q kᵀ, in the log domain. Convention (../shared/docs/methods.md §4.1):
// `iterations` counts normalisations (half-iterations), starting with a row step, so 1 is exactly
// softmax attention and an odd count ends on a row step (rows sum to 1 exactly, columns → 1).
//
// Marginals are balanced: rows sum to 1, columns to n_rows / n_cols (1 when square), counting valid
// rows and columns only, so a fixed point exists when Tq != Tk or with padding. Padded keys are
// excluded from both marginals; when Tq == Tk (self-attention) key_padding also marks padded
// queries, which are left out of the column sums and get zero output (with iterations >= 2: with
// one normalisation there is no column sum, and the op is softmax attention as it stands).
// Causal masking is supported with iterations = 1 only: a column step lets later queries change the
// weights of earlier ones (and a causal doubly stochastic matrix tends to the identity), so
// iterations >= 2 with a causal mask is refused.
//
// The fused op keeps per (batch·head) only the row and column potentials f, g (P = exp(S + f + g));
// each normalisation is one tiled streaming pass (a row or column log-sum-exp of S + f + g), the
// output pass streams P V, and no n×n tensor is ever stored. Two backward passes, derivations in
// docs/sinkformer.md:
//   unrolled: the exact gradient of the `iterations` normalisations, in reverse, from the stored
//             potentials of every step (O(n · iterations)), recomputing score tiles;
//   implicit: the gradient at the fixed point, by conjugate gradients on the optimality system with
//             streaming products by P and Pᵀ (what the forward approximates: exact as iterations → ∞).
#pragma once
#include <string>

#include "attention/attention.h"
#include "attention/softmax.h"

namespace attnlab {

enum class SinkhornBackward { unrolled, implicit };

struct SinkhornOptions {
  int64_t iterations = 3;  // normalisations, >= 1
  SinkhornBackward backward = SinkhornBackward::unrolled;
  double tol = 1e-6;          // implicit: CG stops at ‖residual‖ <= tol ‖rhs‖ (per batch·head)
  int64_t max_cg_iter = 200;  // implicit: CG iterations at most; stopping short is a warning on stderr
};

// The fused op, q [B, H, Tq, dh], k and v [B, H, Tk, dh], f32 or f64, any strides. When f_out / g_out
// are set they receive the final potentials [B, H, Tq] / [B, H, Tk] (-inf where excluded).
Tensor sinkformer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                            const SinkhornOptions& opts = {}, Tensor* f_out = nullptr, Tensor* g_out = nullptr);

// The composite reference from registered ops (matmul, masked_fill, log_softmax, softmax, add):
// autograd through it is the unrolled gradient. weights_out receives the attention matrix.
Tensor sinkformer_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                      double scale, int64_t iterations, Tensor* weights_out = nullptr);

// The b8 mask of blocked (query, key) pairs the Sinkformer uses, broadcastable to [B, 1, Tq, Tk]
// (padded keys, and padded queries when Tq == Tk and iterations >= 2), or undefined.
Tensor sinkformer_blocked(const AttentionMask& mask, int64_t tq, int64_t tk, int64_t iterations);

// How far attention weights w [..., Tq, Tk] are from doubly stochastic, per matrix ([...]): the mean
// over valid keys of |column sum − n_rows / n_cols| (valid rows and columns: key_padding [B, Tk],
// also marking queries when Tq == Tk, as above; w's leading dim is B). Rows are not checked: every
// method normalises them. 0 for a doubly stochastic matrix, whatever Tq and Tk.
Tensor column_sum_deviation(const Tensor& w, const Tensor& key_padding = {});

namespace sinkformer {
// What the last backward on this thread did: CG iterations (implicit; the most over batch·heads), the
// largest final relative residual, and which form the gradient passes took.
struct BackwardStats {
  int64_t cg_iterations = 0;
  double residual = 0;
  bool converged = true;
  bool low_rank = false;  // the gradient passes took the step matrices as a low-rank correction of P
};
BackwardStats last_backward_stats();
// For tests: the largest drift of the potentials (over the steps, rows plus columns) for which the
// gradient passes use the low-rank form instead of one exponential per step and score (< 0: the
// default, 30 in f32 and 300 in f64; 0 forces the exponentials whenever there are two steps or more).
void set_low_rank_limit(double limit);
}  // namespace sinkformer

class SinkformerAttention : public AttentionMethod {
 public:
  SinkformerAttention(double scale, SinkhornOptions opts, AttentionImpl impl = AttentionImpl::fused);
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) override;
  std::string name() const override { return "sinkformer"; }
  const SinkhornOptions& options() const { return opts_; }
  AttentionImpl impl() const { return impl_; }

 private:
  double scale_;
  SinkhornOptions opts_;
  AttentionImpl impl_;
};

// Config: {"type": "sinkformer", "iterations": 3 (normalisations, 1..1000), "backward": "unrolled" |
//          "implicit", "tol": 1e-6, "max_cg_iter": 200, "scale": optional (default 1/sqrt(head_dim)),
//          "impl": "fused" (default) | "composite"}. "backward", "tol" and "max_cg_iter" are the fused op's;
//          the composite's gradient is autograd through its ops, i.e. the unrolled one.
// Internals (record_internals): "attn" the weights, "f" / "g" the potentials, "row_err" / "col_err"
// [iterations, B, H]: after each normalisation, the mean |row sum − 1| and |column sum − n_rows/n_cols|.
AttentionBuilder parse_sinkformer_attention(ConfigSection& cfg);

}  // namespace attnlab

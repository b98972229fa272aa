// The entmax family of sparse normalisers (Martins & Astudillo 2016; Peters, Niculae & Martins 2019;
// Blondel, Martins & Niculae 2019; Correia, Niculae & Martins 2019):
//
//   α-entmax(z) = argmax_{p ∈ Δ} ⟨p, z⟩ + H_α(p),   p_i = [(α−1) z_i − τ]_+^{1/(α−1)},
//
// with the threshold τ such that Σ p = 1; the support is {i : p_i > 0}. sparsemax is α = 2 and
// 1.5-entmax α = 1.5 (both exact: τ from a partial sort of the few candidates that can be in the
// support); entmax_bisect takes any α > 1 (τ by a safeguarded root finder). Every op saves only its
// output; the backward is the implicit derivative dz = s ⊙ g − s (sᵀg)/(1ᵀs) with s = p^(2−α) on the
// support. Derivations: docs/entmax.md.
//
// Masks: an entry equal to −inf is absent (p = 0, gradient 0); a row of −inf entries gives zeros and
// zero gradients; a row holding NaN or +inf gives NaN everywhere.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace attnlab {

// sparsemax(z) = argmin_{p ∈ Δ} ‖p − z‖²: the Euclidean projection onto the simplex, along `dim`.
Tensor sparsemax(const Tensor& x, int64_t dim = -1);
// 1.5-entmax along `dim`: p = [z/2 − τ]_+².
Tensor entmax15(const Tensor& x, int64_t dim = -1);

struct EntmaxBisectOptions {
  int max_iter = 50;           // root-finder iterations at most (it stops earlier once τ is converged)
  bool ensure_sum_one = true;  // divide p by Σ p at the end
};
// α-entmax along `dim` for any α > 1: a scalar, or a tensor of x's dtype that broadcasts to x with
// size 1 along `dim` (one α per row, per head, ...). A tensor α that requires grad gets ∂L/∂α.
Tensor entmax_bisect(const Tensor& x, double alpha, int64_t dim = -1, const EntmaxBisectOptions& opts = {});
Tensor entmax_bisect(const Tensor& x, const Tensor& alpha, int64_t dim = -1, const EntmaxBisectOptions& opts = {});

// Row kernels on one contiguous row z[0, n), for float and double: the ops above run them on every
// row; a fused attention kernel can run them on each query's row of scores.
namespace entmax {

// Where a row's threshold lies: p_i = [(α−1)(z_i − max) − tau]_+^{1/(α−1)}. τ is taken relative to
// the row max, so that it keeps its digits when the scores are large.
template <class T>
struct Threshold {
  T max = 0;            // max_i z_i; −inf for a fully masked (or empty) row
  T tau = 0;            // in [−1, 0)
  int64_t support = 0;  // #{i : p_i > 0}; 0 for a fully masked row, −1 for a row with NaN or +inf (tau NaN)
};

// τ of sparsemax / 1.5-entmax, exact. `scratch` holds n values (clobbered).
template <class T>
Threshold<T> sparsemax_threshold(const T* z, int64_t n, T* scratch);
template <class T>
Threshold<T> entmax15_threshold(const T* z, int64_t n, T* scratch);
// τ of α-entmax, α > 1, by safeguarded Halley/Newton steps inside a bisection bracket.
template <class T>
Threshold<T> bisect_threshold(const T* z, int64_t n, T alpha, int max_iter, T* scratch);

// Writes p to out[0, n) (zeros for a fully masked row, NaN for a NaN row) and returns Σ p.
template <class T>
double write_probabilities(const T* z, int64_t n, T alpha, const Threshold<T>& th, T* out);

// The Tsallis entropy H_α(p) = (1 − Σ p^α) / (α(α − 1)) of one row (the Fenchel–Young losses' Ω).
template <class T>
double tsallis_entropy(const T* p, int64_t n, T alpha);

// The backward of one row from its output p and upstream gradient g: dz = s ⊙ (g − Σ s g / Σ s),
// s = p^(2−α) on the support (dz = 0 for an all-zero p). With dalpha set, *dalpha = Σ_i g_i ∂p_i/∂α.
template <class T>
void backward_row(const T* p, const T* g, int64_t n, T alpha, T* dz, double* dalpha = nullptr);

}  // namespace entmax
}  // namespace attnlab

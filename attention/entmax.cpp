// sparsemax, 1.5-entmax and α-entmax: row kernels (threshold τ, probabilities, backward) and the
// registered ops built on them, forward and backward side by side. Derivations: docs/entmax.md.
#include "attention/entmax.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "attention/entmax_power.h"
#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"
#include "core/cpu/vmath.h"

namespace attnlab {
using namespace cases;

namespace entmax {
namespace {

// ---- one row ---------------------------------------------------------------------------------

template <class T>
struct RowScan {
  T max;
  bool finite;  // no NaN, no +inf
};

template <class T>
RowScan<T> scan_row(const T* z, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  int64_t bad = 0;
#pragma omp simd reduction(max : m) reduction(+ : bad)
  for (int64_t i = 0; i < n; ++i) {
    const T v = z[i];
    m = v > m ? v : m;
    bad += !(v < std::numeric_limits<T>::infinity());
  }
  return {m, bad == 0};
}

// y_i = (α−1)(z_i − max) for the entries that can be in the support: p_max ≤ 1 forces τ ≥ −1, so
// only y_i > −1 qualify. On random rows this leaves a small share of the n entries (and −inf never).
// AVX-512 compacts 16 (8) entries per instruction, in a register and then a full store (the
// compressing store to memory is microcoded and ~20x slower on AMD Zen 4); the portable loop is
// branch-free: every y is stored, the count moves on only for a candidate.
template <class T>
int64_t gather_candidates(const T* z, int64_t n, T max, T scale, T* buf) {
  int64_t c = 0, i = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 vm = _mm512_set1_ps(max), vs = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-1.0f);
    for (; i + 16 <= n; i += 16) {
      const __m512 y = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(z + i), vm), vs);
      const __mmask16 keep = _mm512_cmp_ps_mask(y, lo, _CMP_GT_OQ);
      _mm512_storeu_ps(buf + c, _mm512_maskz_compress_ps(keep, y));  // c <= i: stays inside buf[0, n)
      c += __builtin_popcount(keep);
    }
  } else {
    const __m512d vm = _mm512_set1_pd(max), vs = _mm512_set1_pd(scale), lo = _mm512_set1_pd(-1.0);
    for (; i + 8 <= n; i += 8) {
      const __m512d y = _mm512_mul_pd(_mm512_sub_pd(_mm512_loadu_pd(z + i), vm), vs);
      const __mmask8 keep = _mm512_cmp_pd_mask(y, lo, _CMP_GT_OQ);
      _mm512_storeu_pd(buf + c, _mm512_maskz_compress_pd(keep, y));
      c += __builtin_popcount(keep);
    }
  }
#endif
  for (; i < n; ++i) {
    const T y = (z[i] - max) * scale;
    buf[c] = y;
    c += y > T(-1);
  }
  return c;
}

// Keeps the candidates y > lo (in place, order kept); returns how many.
template <class T>
int64_t keep_above(T* buf, int64_t c, T lo) {
  int64_t k = 0;
  for (int64_t i = 0; i < c; ++i) {
    const T y = buf[i];
    buf[k] = y;
    k += y > lo;
  }
  return k;
}

// Threshold rules of the sort-based maps. The sorted candidates y(1) ≥ y(2) ≥ ... are pushed one by
// one; the support is a prefix of that order, so push() returns false at the first k outside it.
struct SparsemaxRule {  // k y(k) > Σ_{j≤k} y(j) − 1, τ = (Σ_{j≤k*} y(j) − 1)/k*
  double sum = 0, tau = 0;
  int64_t k = 0;
  template <class T>
  using Power = Linear<T>;
  // τ when exactly the k entries with these sums are the support.
  static double closed(double s, double, int64_t k) { return (s - 1) / double(k); }
  bool push(double y) {
    const double s = sum + y, t = (s - 1) / double(k + 1);
    if (!(y > t)) return false;
    sum = s, tau = t, ++k;
    return true;
  }
};
struct Entmax15Rule {  // τ_k = M_k − sqrt(max((1 − SS_k)/k, 0)) ≤ y(k), SS_k = Σ (y(j) − M_k)²
  double sum = 0, sumsq = 0, tau = 0;
  int64_t k = 0;
  template <class T>
  using Power = Square<T>;
  static double closed(double s, double q, int64_t k) {
    const double kk = double(k), mean = s / kk;
    return mean - std::sqrt(std::max((1 - (q - s * mean)) / kk, 0.0));
  }
  bool push(double y) {
    const double kk = double(k + 1), s = sum + y, q = sumsq + y * y, mean = s / kk;
    const double ss = q - s * mean, t = mean - std::sqrt(std::max((1 - ss) / kk, 0.0));
    if (!(t <= y)) return false;
    sum = s, sumsq = q, tau = t, ++k;
    return true;
  }
};

// Partial sort with the doubling trick: sort the top k candidates only; when all k are in the
// support, bring in the next k (nth_element on the rest, then sort that slice) and go on.
template <class T, class Rule>
void run_sorted_rule(T* buf, int64_t c, Rule& rule) {
  constexpr int64_t kFirst = 32;
  int64_t done = 0, k = std::min(c, kFirst);
  for (;;) {
    if (k < c) std::nth_element(buf + done, buf + k, buf + c, std::greater<T>());
    std::sort(buf + done, buf + k, std::greater<T>());
    for (; done < k; ++done)
      if (!rule.push(double(buf[done]))) return;
    if (k == c) return;
    k = std::min(c, 2 * k);
  }
}


// f(τ) = Σ_i [y_i − τ]_+^β − 1 and its first two derivatives, over the candidates.
struct RootEval {
  double f, d1, d2;
};
template <class T, class Power>
[[gnu::flatten]] RootEval eval_root(const T* y, int64_t c, T tau, const Power& pw) {
  double f = 0, d1 = 0, d2 = 0;
#pragma omp simd reduction(+ : f, d1, d2)
  for (int64_t i = 0; i < c; ++i) {
    const T t = y[i] - tau;
    const bool on = t > 0;
    // Computed for every t, kept where t > 0: whatever pow and the divisions give off the support
    // (NaN, inf) is dropped by the selects, and the loop stays branch-free.
    const T p = pw.prob(t), dp = pw.d1(t, p), d2p = pw.d2(t, p);
    f += double(on ? p : T(0));
    d1 += double(on ? dp : T(0));
    d2 += double(on ? d2p : T(0));
  }
  return {f - 1, -d1, d2};
}

// τ in the bracket [τ_lo, τ_hi] = [−1, −(1/c)^(α−1)] (f(τ_lo) ≥ 0: the max alone has p = 1;
// f(τ_hi) ≤ 0: every p ≤ 1/c). Each step evaluates f at τ and moves the bracket end by the sign of
// f(τ) alone — deep-spin/entmax PR #32: the old rule f(τ)·f(τ_lo) ≥ 0 walked away from a root at
// τ_lo with f(τ_lo) = 0 (one-hot rows) and returned garbage. The next τ is a Halley step (Newton when
// the Halley correction is large), kept only when it lands strictly inside the bracket and the step
// at least halves the one before last; otherwise bisection.
template <class T, class Power>
T solve_tau(const T* y, int64_t c, const Power& pw, int max_iter) {
  double lo = -1, hi = -std::pow(1.0 / double(c), double(pw.alpha) - 1);
  if (!(hi > lo)) return T(lo);
  // Converged when Σ p is 1 to within the rounding of its terms, or τ stops moving.
  const double tol = 4 * std::numeric_limits<T>::epsilon();
  double tau = lo, step_old = hi - lo, step = step_old;
  if (pw.alpha <= 2) {
    // Start at ȳ − (1/c)^(α−1), ȳ the candidates' mean: [·]_+^β is convex for β ≥ 1, so by Jensen
    // f there is ≥ c (ȳ − τ)^β − 1 = 0, a lower bound on the root. Exact when every candidate is
    // in the support, so near-uniform rows (all n candidates) converge in a couple of steps.
    double mean = 0;
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < c; ++i) mean += double(y[i]);
    tau = std::max(lo, mean / double(c) + hi);
  }
  for (int it = 0; it < max_iter; ++it) {
    const RootEval e = eval_root(y, c, T(tau), pw);
    if (e.f >= 0) lo = tau;
    else hi = tau;
    if (std::abs(e.f) <= tol) break;
    const double newton = e.f / e.d1, corr = 1 - 0.5 * newton * e.d2 / e.d1;
    double next = tau - (corr > 0.5 ? newton / corr : newton);
    if (!(next > lo && next < hi) || std::abs(2 * (next - tau)) > std::abs(step_old)) next = lo + 0.5 * (hi - lo);
    next = double(T(next));
    step_old = step;
    step = next - tau;
    tau = next;
    if (std::abs(step) <= tol * std::abs(tau) || hi - lo <= tol * std::abs(tau)) break;
  }
  return T(tau);
}

constexpr int64_t kSample = 32, kRootAbove = 64;

template <class T, class Rule>
Threshold<T> sorted_threshold(const T* z, int64_t n, T alpha, T* scratch) {
  const RowScan<T> r = scan_row(z, n);
  if (!r.finite) return {r.max, std::numeric_limits<T>::quiet_NaN(), -1};
  if (r.max == -std::numeric_limits<T>::infinity()) return {r.max, T(0), 0};
  int64_t c = gather_candidates(z, n, r.max, alpha - 1, scratch);
  if (c > 4 * kSample) {
    // τ of any subset of the entries is a lower bound on τ (the subset's Σ p(τ) − 1 is never above
    // the whole row's, and both fall with τ): the τ of kSample candidates drops the entries at or
    // below it, which cannot be in the support, before the partial sort.
    T sample[kSample];
    std::copy(scratch, scratch + kSample, sample);
    Rule bound;
    run_sorted_rule(sample, kSample, bound);
    c = keep_above(scratch, c, T(bound.tau));
  }
  if (c > kRootAbove) {
    // Many candidates (near-uniform rows: all n, and a support of most of them): a partial sort would
    // sort nearly everything. Halley/Newton steps locate τ instead; the closed form over the support
    // they imply is then the exact τ, once no entry changes side (an entry on the boundary: again).
    double tau = double(solve_tau(scratch, c, typename Rule::template Power<T>{}, 50));
    for (int round = 0; round < 4; ++round) {
      double sum = 0, sumsq = 0;
      int64_t k = 0;
#pragma omp simd reduction(+ : sum, sumsq, k)
      for (int64_t i = 0; i < c; ++i) {
        const double y = double(scratch[i]), on = y > tau;
        sum += on * y, sumsq += on * y * y, k += y > tau;
      }
      if (k == 0) break;
      const double exact = Rule::closed(sum, sumsq, k);
      int64_t moved = 0;
#pragma omp simd reduction(+ : moved)
      for (int64_t i = 0; i < c; ++i) moved += (double(scratch[i]) > exact) != (double(scratch[i]) > tau);
      if (moved == 0) return {r.max, T(exact), k};
      tau = exact;
    }
  }
  Rule rule;  // few candidates, or the closed form did not settle: the partial sort
  run_sorted_rule(scratch, c, rule);
  return {r.max, T(rule.tau), rule.k};
}

template <class T, class Power>
Threshold<T> bisect_threshold_with(const T* z, int64_t n, const Power& pw, int max_iter, T* scratch) {
  const RowScan<T> r = scan_row(z, n);
  if (!r.finite) return {r.max, std::numeric_limits<T>::quiet_NaN(), -1};
  if (r.max == -std::numeric_limits<T>::infinity()) return {r.max, T(0), 0};
  const int64_t c = gather_candidates(z, n, r.max, T(pw.alpha - 1), scratch);
  const T tau = solve_tau(scratch, c, pw, max_iter);
  int64_t support = 0;
  for (int64_t i = 0; i < c; ++i) support += scratch[i] > tau;
  return {r.max, tau, support};
}

template <class T, class Power>
[[gnu::flatten]] double write_with(const T* z, int64_t n, const Power& pw, const Threshold<T>& th, T* out) {
  if (th.support < 0) {
    std::fill(out, out + n, std::numeric_limits<T>::quiet_NaN());
    return std::numeric_limits<double>::quiet_NaN();
  }
  if (th.support == 0) {
    std::fill(out, out + n, T(0));
    return 0;
  }
  const T m = th.max, scale = T(pw.alpha - 1), tau = th.tau;
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const T t = (z[i] - m) * scale - tau;  // the same y as gather_candidates, so the supports agree
    const T p = t > 0 ? pw.prob(t) : T(0);
    out[i] = p;
    sum += double(p);
  }
  return sum;
}

template <class T, class Power>
[[gnu::flatten]] void backward_with(const T* p, const T* g, int64_t n, const Power& pw, T* dz, double* dalpha) {
  double S = 0, Sg = 0;  // Σ s, Σ s g
#pragma omp simd reduction(+ : S, Sg)
  for (int64_t i = 0; i < n; ++i) {
    const T s = pw.s(p[i]);
    dz[i] = s;
    S += double(s);
    Sg += double(s) * double(g[i]);
  }
  if (S == 0) {  // an all-zero row (fully masked): no gradient, not 0/0
    std::fill(dz, dz + n, T(0));
    if (dalpha) *dalpha = 0;
    return;
  }
  const double q = Sg / S;  // Σ g p̃ with p̃ = s / Σ s
  const T qt = T(q);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dz[i] *= g[i] - qt;
  if (!dalpha) return;
  // ∂p_i/∂α = β²(p_i − p̃_i) − β(p_i log p_i − p̃_i Σ_j p_j log p_j), β = 1/(α−1), 0 log 0 = 0.
  double gp = 0, gplogp = 0, plogp = 0;
#pragma omp simd reduction(+ : gp, gplogp, plogp)
  for (int64_t i = 0; i < n; ++i) {
    const T pi = p[i];
    const T lp = pi > 0 ? pi * cpu::log_fast(pi > 0 ? pi : T(1)) : T(0);
    gp += double(g[i]) * double(pi);
    gplogp += double(g[i]) * double(lp);
    plogp += double(lp);
  }
  const double beta = 1.0 / (double(pw.alpha) - 1);
  *dalpha = beta * beta * (gp - q) - beta * (gplogp - q * plogp);
}

template <class T, class Power>
[[gnu::flatten]] double entropy_with(const T* p, int64_t n, const Power& pw) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += double(pw.pow_alpha(p[i]));
  const double a = double(pw.alpha);
  return (1 - sum) / (a * (a - 1));
}

}  // namespace

template <class T>
Threshold<T> sparsemax_threshold(const T* z, int64_t n, T* scratch) {
  return sorted_threshold<T, SparsemaxRule>(z, n, T(2), scratch);
}
template <class T>
Threshold<T> entmax15_threshold(const T* z, int64_t n, T* scratch) {
  return sorted_threshold<T, Entmax15Rule>(z, n, T(1.5), scratch);
}
template <class T>
Threshold<T> bisect_threshold(const T* z, int64_t n, T alpha, int max_iter, T* scratch) {
  return with_power(alpha, [&](const auto& pw) { return bisect_threshold_with(z, n, pw, max_iter, scratch); });
}
template <class T>
double write_probabilities(const T* z, int64_t n, T alpha, const Threshold<T>& th, T* out) {
  return with_power(alpha, [&](const auto& pw) { return write_with(z, n, pw, th, out); });
}
template <class T>
void backward_row(const T* p, const T* g, int64_t n, T alpha, T* dz, double* dalpha) {
  with_power(alpha, [&](const auto& pw) { backward_with(p, g, n, pw, dz, dalpha); });
}

template <class T>
double tsallis_entropy(const T* p, int64_t n, T alpha) {
  return with_power(alpha, [&](const auto& pw) { return entropy_with(p, n, pw); });
}

template Threshold<float> sparsemax_threshold(const float*, int64_t, float*);
template Threshold<double> sparsemax_threshold(const double*, int64_t, double*);
template Threshold<float> entmax15_threshold(const float*, int64_t, float*);
template Threshold<double> entmax15_threshold(const double*, int64_t, double*);
template Threshold<float> bisect_threshold(const float*, int64_t, float, int, float*);
template Threshold<double> bisect_threshold(const double*, int64_t, double, int, double*);
template double write_probabilities(const float*, int64_t, float, const Threshold<float>&, float*);
template double write_probabilities(const double*, int64_t, double, const Threshold<double>&, double*);
template void backward_row(const float*, const float*, int64_t, float, float*, double*);
template void backward_row(const double*, const double*, int64_t, double, double*, double*);
template double tsallis_entropy(const float*, int64_t, float);
template double tsallis_entropy(const double*, int64_t, double);

}  // namespace entmax

// ---- the ops -----------------------------------------------------------------------------------

namespace {

enum class Map { sparsemax, entmax15, bisect };

// Runs row(lane, rows, out_row, scratch) on every lane of the [outer, R, inner] layout, in parallel
// above the grain. rows[k] points at input k's row; a strided dim (inner > 1) is copied to and from
// per-thread buffers so that the row kernels always see contiguous rows. scratch holds R values.
template <class T, size_t K, class Row>
void for_each_row(const cpu::DimLayout& l, const std::array<const T*, K>& in, T* out, Row row) {
  const int64_t lanes = l.outer * l.inner;
  const bool par = lanes > 1 && lanes * l.R >= cpu::parallel_grain() && !omp_in_parallel();
  const bool strided = l.inner != 1;
#pragma omp parallel if (par)
  {
    std::vector<T> buf(size_t(l.R) * (strided ? K + 2 : 1));
    T* scratch = buf.data();
    T* copies = scratch + l.R;
#pragma omp for schedule(static)
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t base = (lane / l.inner) * l.R * l.inner + lane % l.inner;
      std::array<const T*, K> rows;
      if (!strided) {
        for (size_t k = 0; k < K; ++k) rows[k] = in[k] + base;
        row(lane, rows, out + base, scratch);
        continue;
      }
      for (size_t k = 0; k < K; ++k) {
        T* c = copies + int64_t(k) * l.R;
        for (int64_t r = 0; r < l.R; ++r) c[r] = in[k][base + r * l.inner];
        rows[k] = c;
      }
      T* o = copies + int64_t(K) * l.R;
      row(lane, rows, o, scratch);
      for (int64_t r = 0; r < l.R; ++r) out[base + r * l.inner] = o[r];
    }
  }
}

// α of each lane (f64 view of a contiguous [outer·inner] tensor), or one α for every lane.
struct LaneAlpha {
  const Tensor* lanes = nullptr;  // x's dtype, contiguous, one value per lane
  double constant = 0;
  template <class T>
  T at(int64_t lane) const {
    return lanes ? lanes->data<T>()[lane] : T(constant);
  }
};

Tensor forward_map(const char* op, Map map, const Tensor& x, int64_t dim, const LaneAlpha& alpha,
                   const EntmaxBisectOptions& opts) {
  Tensor xc = x.contiguous();
  const cpu::DimLayout l = cpu::dim_layout(x.shape(), dim);
  Tensor out = empty(x.shape(), x.dtype());
  if (x.numel() == 0) return out;
  dispatch_floating(x.dtype(), op, [&]<class T>() {
    for_each_row<T, 1>(l, {xc.data<T>()}, out.data<T>(), [&](int64_t lane, const auto& rows, T* o, T* scratch) {
      const T a = alpha.at<T>(lane);
      entmax::Threshold<T> th;
      if (map == Map::sparsemax) th = entmax::sparsemax_threshold(rows[0], l.R, scratch);
      else if (map == Map::entmax15) th = entmax::entmax15_threshold(rows[0], l.R, scratch);
      else th = entmax::bisect_threshold(rows[0], l.R, a, opts.max_iter, scratch);
      const double sum = entmax::write_probabilities(rows[0], l.R, a, th, o);
      if (map == Map::bisect && opts.ensure_sum_one && sum > 0) {
        const T inv = T(1 / sum);
#pragma omp simd
        for (int64_t r = 0; r < l.R; ++r) o[r] *= inv;
      }
    });
  });
  return out;
}

// dz for every lane, and ∂L/∂α per lane into dalpha (x's dtype, [outer·inner]) when it is defined.
Tensor backward_map(const Tensor& p, const Tensor& g, int64_t dim, const LaneAlpha& alpha, Tensor* dalpha) {
  Tensor gc = g.contiguous();
  const cpu::DimLayout l = cpu::dim_layout(p.shape(), dim);
  Tensor dz = empty(p.shape(), p.dtype());
  if (dalpha) *dalpha = zeros({l.outer * l.inner}, p.dtype());
  if (p.numel() == 0) return dz;
  dispatch_floating(p.dtype(), "entmax backward", [&]<class T>() {
    T* da = dalpha ? dalpha->data<T>() : nullptr;
    for_each_row<T, 2>(l, {p.data<T>(), gc.data<T>()}, dz.data<T>(), [&](int64_t lane, const auto& rows, T* o, T*) {
      double d = 0;
      entmax::backward_row(rows[0], rows[1], l.R, alpha.at<T>(lane), o, da ? &d : nullptr);
      if (da) da[lane] = T(d);
    });
  });
  return dz;
}

// The same input as make_inputs gives, with some entries masked (−inf) and the last row fully.
Tensor with_masked(const Tensor& x) {
  std::vector<double> v = x.to_vector<double>();
  const int64_t cols = x.size(-1);
  for (size_t i = 0; i < v.size(); ++i)
    if (int64_t(i) % 3 == 1 || int64_t(i) >= x.numel() - cols) v[i] = -INFINITY;
  return from_vector(v, x.shape());
}

Tensor sorted_map(const OpDef& def, Map map, double alpha, const Tensor& x, int64_t dim) {
  const char* op = def.name.c_str();
  if (!is_floating(x.dtype())) fail<DTypeError>(op, "expected a floating tensor, got ", describe(x));
  const int64_t d = wrap_dim(op, dim, x.dim());
  if (x.dim() == 0) return sorted_map(def, map, alpha, x.reshape({1}), 0).reshape({});
  LaneAlpha a{nullptr, alpha};
  Tensor out = forward_map(op, map, x, d, a, {});
  if (needs_grad({x}))
    record(out, def, {x}, [sp = SavedTensor(out.detach(), op), d, a](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{backward_map(sp.get(), g, d, a, nullptr)};
    });
  return out;
}

}  // namespace

// clang-format off: one case per line pair (docs/design-notes.md)
static const OpDef kSparsemax("sparsemax", "dx = s (g - Σ s g / Σ s), s = [p > 0]",
                              {{"dim -1 of [3,6]",
                                [](Generator& g) {
                                  return Inputs{rn(g, {3, 6})};
                                },
                                [](const Inputs& in) { return sparsemax(in[0], -1); }},
                               {"dim 0 of non-contiguous [5,3]",
                                [](Generator& g) {
                                  return Inputs{rn_t(g, {5, 3})};
                                },
                                [](const Inputs& in) { return sparsemax(in[0], 0); }},
                               {"dim 1 of [2,4,3] (strided rows)",
                                [](Generator& g) {
                                  return Inputs{rn(g, {2, 4, 3})};
                                },
                                [](const Inputs& in) { return sparsemax(in[0], 1); }},
                               {"masked (-inf) entries and a fully masked row",
                                [](Generator& g) {
                                  return Inputs{with_masked(rn(g, {4, 5}))};
                                },
                                [](const Inputs& in) { return sparsemax(in[0], -1); }}});
// clang-format on
Tensor sparsemax(const Tensor& x, int64_t dim) { return sorted_map(kSparsemax, Map::sparsemax, 2, x, dim); }

// clang-format off
static const OpDef kEntmax15(
    "entmax15", "dx = s (g - Σ s g / Σ s), s = sqrt(p)",
    {{"dim -1 of [3,6]", [](Generator& g) { return Inputs{rn(g, {3, 6})}; },
      [](const Inputs& in) { return entmax15(in[0], -1); }},
     {"dim 0 of non-contiguous [5,3]", [](Generator& g) { return Inputs{rn_t(g, {5, 3})}; },
      [](const Inputs& in) { return entmax15(in[0], 0); }},
     {"dim 1 of [2,4,3] (strided rows)", [](Generator& g) { return Inputs{rn(g, {2, 4, 3})}; },
      [](const Inputs& in) { return entmax15(in[0], 1); }},
     {"masked (-inf) entries and a fully masked row", [](Generator& g) { return Inputs{with_masked(rn(g, {4, 5}))}; },
      [](const Inputs& in) { return entmax15(in[0], -1); }}});
// clang-format on
Tensor entmax15(const Tensor& x, int64_t dim) { return sorted_map(kEntmax15, Map::entmax15, 1.5, x, dim); }

// ---- entmax_bisect -------------------------------------------------------------------------------

namespace {

// α broadcast to x with size 1 along dim, as one contiguous value per lane; refuses anything else.
Tensor alpha_lanes(const Tensor& x, const Tensor& alpha, int64_t dim) {
  const char* op = "entmax_bisect";
  if (alpha.dtype() != x.dtype())
    fail<DTypeError>(op, "alpha ", describe(alpha), " must have the dtype of x ", describe(x));
  Shape lane_shape = x.shape();
  lane_shape[size_t(dim)] = 1;
  bool fits = alpha.dim() <= x.dim();
  for (int64_t i = 0; fits && i < alpha.dim(); ++i) {
    const int64_t a = alpha.size(alpha.dim() - 1 - i), want = lane_shape[size_t(x.dim() - 1 - i)];
    fits = a == 1 || a == want;
  }
  if (!fits)
    fail<ShapeError>(op, "alpha ", describe(alpha), " must broadcast to x ", describe(x), " with size 1 along dim ",
                     dim, " (one alpha per row: at most ", shape_str(lane_shape), ")");
  Shape aligned(size_t(x.dim() - alpha.dim()), 1);
  aligned.insert(aligned.end(), alpha.shape().begin(), alpha.shape().end());
  // A copy, never a view of α: the backward must see the α of the forward even if α is updated in place.
  Tensor expanded = alpha.detach().reshape(aligned).expand(lane_shape);
  return (expanded.is_contiguous() ? expanded.clone() : expanded.contiguous()).reshape({-1});
}

}  // namespace

// clang-format off
static const OpDef kEntmaxBisect(
    "entmax_bisect",
    "dx = s (g - Σ s g / Σ s), s = p^(2-α); dα = Σ g [β²(p - p̃) - β(p log p - p̃ Σ p log p)], β = 1/(α-1), "
    "p̃ = s / Σ s",
    {{"α = 1.25 on [3,5], ∂/∂α", [](Generator& g) { return Inputs{rn(g, {3, 5}), scalar_tensor(1.25, DType::f64)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"α = 1.5 on [3,5], ∂/∂α", [](Generator& g) { return Inputs{rn(g, {3, 5}), scalar_tensor(1.5, DType::f64)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"α = 1.75 on [3,5], ∂/∂α", [](Generator& g) { return Inputs{rn(g, {3, 5}), scalar_tensor(1.75, DType::f64)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"α = 2.5 on [3,5], ∂/∂α", [](Generator& g) { return Inputs{rn(g, {3, 5}), scalar_tensor(2.5, DType::f64)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"per-row α [3,1] on [3,6]", [](Generator& g) { return Inputs{rn(g, {3, 6}), uni(g, {3, 1}, 1.2, 2.4)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"per-head α [2,1,1] on [2,2,3,4]", [](Generator& g) { return Inputs{rn(g, {2, 2, 3, 4}), uni(g, {2, 1, 1}, 1.3, 2.2)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }},
     {"dim 0 of non-contiguous [5,3], α per column [1,3]", [](Generator& g) { return Inputs{rn_t(g, {5, 3}), uni(g, {1, 3}, 1.3, 2.2)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1], 0); }},
     {"α = 1.6, masked (-inf) entries and a fully masked row", [](Generator& g) { return Inputs{with_masked(rn(g, {4, 5})), scalar_tensor(1.6, DType::f64)}; },
      [](const Inputs& in) { return entmax_bisect(in[0], in[1]); }}});
// clang-format on

Tensor entmax_bisect(const Tensor& x, const Tensor& alpha, int64_t dim, const EntmaxBisectOptions& opts) {
  const char* op = "entmax_bisect";
  if (!is_floating(x.dtype())) fail<DTypeError>(op, "expected a floating tensor, got ", describe(x));
  if (!alpha.defined()) fail<ValueError>(op, "alpha is undefined");
  if (opts.max_iter < 1) fail<ValueError>(op, "max_iter must be at least 1, got ", opts.max_iter);
  const int64_t d = wrap_dim(op, dim, x.dim());
  if (x.dim() == 0) return entmax_bisect(x.reshape({1}), alpha, 0, opts).reshape({});
  Tensor per_lane = alpha_lanes(x, alpha, d);  // α ≤ 1 has no root in the bracket, NaN none at all
  for (double a : per_lane.to_vector<double>())
    if (!(a > 1) || !std::isfinite(a))
      fail<ValueError>(op, "alpha must be finite and > 1 (use softmax for α = 1), got ", a, " in alpha ",
                       describe(alpha), " for x ", describe(x));
  LaneAlpha la{&per_lane, 0};
  Tensor out = forward_map(op, Map::bisect, x, d, la, opts);
  if (needs_grad({x, alpha}))
    record(out, kEntmaxBisect, {x, alpha},
           [sp = SavedTensor(out.detach(), op), per_lane, d, alpha_shape = alpha.shape()](
               const Tensor& g, const std::vector<bool>& need) {
             LaneAlpha a{&per_lane, 0};
             Tensor dalpha;
             Tensor dx = backward_map(sp.get(), g, d, a, need[1] ? &dalpha : nullptr);
             std::vector<Tensor> grads{need[0] ? dx : Tensor(), Tensor()};
             if (need[1]) {
               Shape lane_shape = sp.get().shape();
               lane_shape[size_t(d)] = 1;
               grads[1] = sum_to(dalpha.reshape(lane_shape), alpha_shape);
             }
             return grads;
           });
  return out;
}

Tensor entmax_bisect(const Tensor& x, double alpha, int64_t dim, const EntmaxBisectOptions& opts) {
  if (!(alpha > 1) || !std::isfinite(alpha))
    fail<ValueError>("entmax_bisect", "alpha must be finite and > 1 (use softmax for α = 1), got ", alpha, " for x ",
                     describe(x));
  if (!is_floating(x.dtype())) fail<DTypeError>("entmax_bisect", "expected a floating tensor, got ", describe(x));
  return entmax_bisect(x, scalar_tensor(alpha, x.dtype()), dim, opts);
}

}  // namespace attnlab

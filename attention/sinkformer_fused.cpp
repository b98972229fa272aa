// The fused Sinkformer op: streaming log-domain Sinkhorn (the structure of FlashSinkhorn, 2026) on
// the CPU tiles of attention/tiles.h. Notation: S = scale q kᵀ, row potentials f, column potentials
// g, P = exp(S + f + g), column marginal b = n_rows / n_cols.
//
// Forward: f = 0, g = 0 (-inf on excluded rows / columns: masking lives in the potentials); a row
// step is f = −LSE_r(S + g), a column step g = log b − LSE_c(S + f), each one tiled pass that
// recomputes S tile by tile; then O = P V in one more pass. The potentials after every step are
// saved (O(n · iterations)); no n×n tensor is ever stored.
// Every pass reduces along the rows of S or of Sᵀ (keys as rows: Sᵀ = scale k qᵀ), so the column
// step is the row code on the transposed side, and each work item (batch·head, row tile) writes only
// its own rows: results do not depend on threads or scheduling.
// Backward (docs/sinkformer.md): dV = Pᵀ dO; then unrolled (the adjoints of the potentials in
// reverse over the steps, one matrix-vector pass per step) or implicit (conjugate gradients with
// P and Pᵀ products); finally dS as a sum of weighted step matrices, streamed into dQ = scale dS K
// (one pass over S) and dK = scale dSᵀ Q (one pass over Sᵀ).
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <vector>

#include "attention/flash.h"
#include "attention/sinkformer.h"
#include "attention/sinkformer_marginals.h"
#include "attention/tiles.h"
#include "autograd/cases.h"
#include "autograd/node.h"

namespace attnlab {
using namespace cases;

using flash::ScopedTiles;

namespace {
using namespace tiled;
using sinkformer::kOp;
using sinkformer::Marginals;

struct SinkPlan {
  int64_t B, H, Tq, Tk, dh, BH;
  double scale;
  int64_t iters;
  int64_t bx, by;  // rows per tile of the side being reduced, columns per tile
  Marginals mg;
};

// S (queries as rows, keys as columns) or Sᵀ (keys as rows): every pass reduces along the rows of one.
template <class T>
struct Side {
  const Operand* x;     // the rows
  const Operand* y;     // the columns
  const T* yt;          // y packed transposed, [BH, dh, ny], for the register kernel; else null
  int64_t nx, ny;       //
  const uint8_t* x_ok;  // [B, nx]
};

template <class T>
void score_tile(const SinkPlan& p, const Side<T>& s, int64_t bh, int64_t i0, int64_t mi, int64_t j0, int64_t nj, T* S,
                int64_t ld) {
  const int64_t b = bh / p.H, h = bh % p.H;
  const Mat<T> yt = s.yt ? Mat<T>{s.yt + bh * p.dh * s.ny + j0, s.ny, 1} : s.y->template rows_t<T>(b, h, j0);
  tile_gemm(mi, nj, p.dh, T(p.scale), s.x->template rows<T>(b, h, i0), yt, T(0), S, ld);
}

// x's rows transposed once per head, [BH, dh, n] (the register kernel reads B's rows contiguously).
template <class T>
Tensor pack_transposed(const SinkPlan& p, const Operand& x, int64_t n) {
  return x.pack_heads_t<T>(p.BH / p.H, p.H, n, run_parallel(double(p.BH * n * p.dh) * 32));
}

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Runs body(bh, i0, i1, scratch) for every (batch·head, row tile) of a side, in parallel.
template <class T, class Body>
void for_row_tiles(const SinkPlan& p, const Side<T>& s, int64_t per_thread, double flops_per_entry, Body&& body) {
  const int64_t ntile = (s.nx + p.bx - 1) / p.bx, items = p.BH * ntile;
  const bool par = run_parallel(double(p.BH) * double(s.nx) * double(s.ny) * flops_per_entry);
  const int nt = par ? omp_get_max_threads() : 1;
  Tensor scratch = empty({nt, per_thread}, dtype_of<T>());
  T* s0 = scratch.data<T>();
#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nt)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t bh = it / ntile, i0 = (it % ntile) * p.bx;
    body(bh, i0, std::min(i0 + p.bx, s.nx), s0 + int64_t(omp_get_thread_num()) * per_thread);
  }
}

template <class T>
void add_row(T* x, const T* y, int64_t n) {
#pragma omp simd simdlen(kLanes <T>)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// ---- the passes ----------------------------------------------------------------------------------

// With p_ij = exp(St_ij + xb_i + yb_j): sums[i] = Σ_j p_ij w_j (Σ_j p_ij without w), in double, and,
// when vals is set, vals_out[i, :] = Σ_j p_ij vals_j (the output O = P V, or dV = Pᵀ dO).
template <class T>
void weighted_pass(const SinkPlan& p, const Side<T>& s, const T* xb, const T* yb, const T* w, double* sums,
                   const Operand* vals, T* vals_out) {
  const int64_t bx = p.bx, by = p.by, dh = p.dh;
  const double flops = vals ? 4.0 * double(dh) : 2.0 * double(dh);
  for_row_tiles(p, s, bx * by, flops, [&](int64_t bh, int64_t i0, int64_t i1, T* S) {
    const int64_t mi = i1 - i0, b = bh / p.H, h = bh % p.H;
    double* sr = sums ? sums + bh * s.nx + i0 : nullptr;
    if (sr) std::fill(sr, sr + mi, 0.0);
    T* o = vals_out ? vals_out + (bh * s.nx + i0) * dh : nullptr;
    for (int64_t j0 = 0; j0 < s.ny; j0 += by) {
      const int64_t nj = std::min(by, s.ny - j0);
      score_tile(p, s, bh, i0, mi, j0, nj, S, p.by);
      const T* wj = w ? w + bh * s.ny + j0 : nullptr;
      for (int64_t r = 0; r < mi; ++r) {
        T* row = S + r * by;
        add_row(row, yb + bh * s.ny + j0, nj);
        const T rowsum = exp_row(row, nj, T(-xb[bh * s.nx + i0 + r]));  // xb = -inf: an excluded row is 0
        if (!sr) continue;
        if (!wj) {
          sr[r] += double(rowsum);
        } else {
          double acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < nj; ++c) acc += double(row[c]) * double(wj[c]);
          sr[r] += acc;
        }
      }
      if (o) tile_gemm(mi, dh, nj, T(1), Mat<T>{S, by, 1}, vals->template rows<T>(b, h, j0), j0 ? T(1) : T(0), o, dh);
    }
  });
}

// ---- strip passes: two reductions from one product per score --------------------------------------
//
// A strip holds the scores of one row tile against every column, S[bx × ny] (row stride ld), while
// the tile is processed. A row reduction needs a whole row before anything can be normalised; a
// column reduction of the same scores then reads the strip instead of recomputing it on the
// transposed side. So a row step and the column step after it (forward), a column step and the row
// step before it (unrolled backward), and P β with Pᵀ α (implicit backward) each cost one score
// product instead of two. Column reductions are kept per (batch·head, part), the parts a fixed split of
// a head's row tiles (never the thread count), and merged in part order: results do not depend on
// threads or scheduling.

constexpr int64_t kMaxParts = 8;

struct StripGrid {
  int64_t ntile, per_part, parts, ld;
};

template <class T>
StripGrid strip_grid(const SinkPlan& p, const Side<T>& s, int64_t max_parts = kMaxParts) {
  StripGrid g{};
  g.ntile = (s.nx + p.bx - 1) / p.bx;
  g.per_part = (g.ntile + max_parts - 1) / max_parts;
  g.parts = (g.ntile + g.per_part - 1) / g.per_part;
  g.ld = (s.ny + 15) / 16 * 16;
  return g;
}

// Runs body(bh, part, i0, i1, scratch) for every row tile, the tiles of a (batch·head, part) in order
// by one thread; scratch: per_thread elements.
template <class T, class Body>
void for_parts(const SinkPlan& p, const Side<T>& s, const StripGrid& g, int64_t per_thread, double flops_per_entry,
               Body&& body) {
  const int64_t items = p.BH * g.parts;
  const bool par = run_parallel(double(p.BH) * double(s.nx) * double(s.ny) * flops_per_entry);
  const int nt = par ? omp_get_max_threads() : 1;
  Tensor buf = empty({nt, per_thread}, dtype_of<T>());
  T* b0 = buf.data<T>();
#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nt)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t bh = it / g.parts, part = it % g.parts;
    T* scratch = b0 + int64_t(omp_get_thread_num()) * per_thread;
    for (int64_t t = part * g.per_part; t < std::min(g.ntile, (part + 1) * g.per_part); ++t)
      body(bh, part, t * p.bx, std::min((t + 1) * p.bx, s.nx), scratch);
  }
}

// for_parts with each row tile's strip S = scale x yᵀ computed; body(bh, part, i0, i1, S, scratch),
// scratch: `extra` elements after the strip.
template <class T, class Body>
void for_strips(const SinkPlan& p, const Side<T>& s, const StripGrid& g, int64_t extra, double flops_per_entry,
                Body&& body) {
  for_parts(p, s, g, p.bx * g.ld + extra, flops_per_entry, [&](int64_t bh, int64_t part, int64_t i0, int64_t i1, T* S) {
    score_tile(p, s, bh, i0, i1 - i0, 0, s.ny, S, g.ld);
    body(bh, part, i0, i1, S, S + p.bx * g.ld);
  });
}

// e := S_row + bias, then f = −LSE(e) (−inf for an excluded row or one with no included column), e
// left as exp(e − max) and l its sum.
template <class T>
T row_potential(const T* srow, const T* bias, int64_t n, bool ok, T* e, T& l) {
  const T ninf = -std::numeric_limits<T>::infinity();
  T m = ninf;
#pragma omp simd simdlen(kLanes <T>) reduction(max : m)
  for (int64_t c = 0; c < n; ++c) {
    e[c] = srow[c] + bias[c];
    m = e[c] > m ? e[c] : m;
  }
  l = exp_row(e, n, m == ninf ? T(0) : m);
  return ok && !(m == ninf && l == T(0)) ? T(-(m + std::log(l))) : ninf;
}

// Running column log-sum-exp over strips: (M, L) per column with M the max of S_ic + f_i so far and
// L = Σ exp(S_ic + f_i − M); the strip's included rows (f finite) folded in.
template <class T>
void fold_columns(const T* S, int64_t ld, const T* f, int64_t mi, int64_t n, T* M, T* L, T* mx, T* e) {
  const T ninf = -std::numeric_limits<T>::infinity();
  bool any = false;
  std::fill(mx, mx + n, ninf);
  for (int64_t r = 0; r < mi; ++r) {
    if (f[r] == ninf) continue;
    any = true;
    const T* srow = S + r * ld;
    const T fr = f[r];
#pragma omp simd simdlen(kLanes <T>)
    for (int64_t c = 0; c < n; ++c) mx[c] = std::max(mx[c], srow[c] + fr);
  }
  if (!any) return;
    // mx is finite now (scores are): rescale L to the new max (M = −inf gives exp(−inf) = 0).
#pragma omp simd simdlen(kLanes <T>)
  for (int64_t c = 0; c < n; ++c) {
    mx[c] = std::max(mx[c], M[c]);
    e[c] = M[c] - mx[c];
  }
  exp_row(e, n, T(0));
#pragma omp simd simdlen(kLanes <T>)
  for (int64_t c = 0; c < n; ++c) {
    L[c] *= e[c];
    M[c] = mx[c];
  }
  for (int64_t r = 0; r < mi; ++r) {
    if (f[r] == ninf) continue;
    const T* srow = S + r * ld;
    const T fr = f[r];
#pragma omp simd simdlen(kLanes <T>)
    for (int64_t c = 0; c < n; ++c) e[c] = srow[c] + fr - M[c];
    exp_row(e, n, T(0));
    add_row(L, e, n);
  }
}

// g_out = log b − LSE_c(S + f) in the log domain, with a running max per column: the fallback of
// row_col_pass for columns whose weights underflow.
template <class T>
void column_lse_pass(const SinkPlan& p, const Side<T>& s, const T* f, T* g_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const StripGrid grid = strip_grid(p, s);
  const size_t nacc = size_t(p.BH * grid.parts * s.ny);
  Tensor ms_t = full({int64_t(nacc)}, double(ninf), dtype_of<T>()), ls_t = zeros({int64_t(nacc)}, dtype_of<T>());
  T* Ms = ms_t.data<T>();
  T* Ls = ls_t.data<T>();
  for_strips(p, s, grid, 2 * grid.ld, 2.0 * double(p.dh) + 8.0,
             [&](int64_t bh, int64_t part, int64_t i0, int64_t i1, T* S, T* e) {
               const size_t at = size_t((bh * grid.parts + part) * s.ny);
               fold_columns(S, grid.ld, f + bh * s.nx + i0, i1 - i0, s.ny, Ms + at, Ls + at, e, e + grid.ld);
             });
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    const int64_t b = bh / p.H;
    const T c = T(p.mg.log_b[size_t(b)]);
    for (int64_t j = 0; j < s.ny; ++j) {
      T m = ninf, l = 0;
      for (int64_t part = 0; part < grid.parts; ++part)
        m = std::max(m, Ms[size_t((bh * grid.parts + part) * s.ny + j)]);
      if (m != ninf)
        for (int64_t part = 0; part < grid.parts; ++part) {
          const size_t at = size_t((bh * grid.parts + part) * s.ny + j);
          l += Ls[at] * std::exp(Ms[at] - m);
        }
      const bool ok = p.mg.col_ok[size_t(b * s.ny + j)] && l > T(0);
      g_out[bh * s.ny + j] = ok ? T(c - (m + std::log(l))) : ninf;
    }
  }
}

// A row step and the column step after it from one strip pass and one exponential per score: with
// e_ij = exp(S_ij + g_j − m_i) and l_i = Σ_j e_ij from the row step (f_i = −m_i − log l_i),
// Σ_i exp(S_ij + f_i) = e^(−g_j) Σ_i e_ij / l_i, so g_out_j = log b + g_j − log Σ_i e_ij / l_i. That sum
// is a column sum of the row-normalised matrix; where it underflows (a column every row ignores by
// e^-87 in f32) the step is redone in the log domain.
template <class T>
void row_col_pass(const SinkPlan& p, const Side<T>& s, const T* g_in, T* f_out, T* g_out) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const StripGrid grid = strip_grid(p, s);
  Tensor sums_t = zeros({p.BH * grid.parts * s.ny}, dtype_of<T>());
  T* sums = sums_t.data<T>();
  for_strips(p, s, grid, grid.ld, 2.0 * double(p.dh) + 8.0,
             [&](int64_t bh, int64_t part, int64_t i0, int64_t i1, T* S, T* e) {
               const int64_t b = bh / p.H, ny = s.ny;
               T* col = sums + (bh * grid.parts + part) * ny;
               for (int64_t r = 0; r < i1 - i0; ++r) {
                 T l;
                 const T f = row_potential(S + r * grid.ld, g_in + bh * ny, ny, s.x_ok[b * s.nx + i0 + r], e, l);
                 f_out[bh * s.nx + i0 + r] = f;
                 if (f == ninf) continue;
                 const T inv = T(1) / l;
#pragma omp simd simdlen(kLanes <T>)
                 for (int64_t c = 0; c < ny; ++c) col[c] += e[c] * inv;
               }
             });
  const T tiny = std::numeric_limits<T>::min() * T(1 << 24);
  bool underflow = false;
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    const int64_t b = bh / p.H;
    const T c = T(p.mg.log_b[size_t(b)]);
    for (int64_t j = 0; j < s.ny; ++j) {
      T sum = 0;
      for (int64_t part = 0; part < grid.parts; ++part) sum += sums[size_t((bh * grid.parts + part) * s.ny + j)];
      const int64_t e = bh * s.ny + j;
      const bool ok = p.mg.col_ok[size_t(b * s.ny + j)];
      underflow |= ok && !(sum >= tiny);
      g_out[e] = ok ? T(c + g_in[e] - std::log(sum)) : ninf;
    }
  }
  if (underflow) column_lse_pass(p, s, f_out, g_out);
}

// The last row step with the output: f = −LSE_r(S + g), P = exp(S + f + g) in the strip, O = P V,
// and P's row sums (1 up to rounding) for the implicit backward.
template <class T>
void row_output_pass(const SinkPlan& p, const Side<T>& s, const T* g, T* f_out, double* rowsums, const Operand& v,
                     T* out) {
  const StripGrid grid = strip_grid(p, s);
  const int64_t dh = p.dh;
  for_strips(p, s, grid, 0, 4.0 * double(dh), [&](int64_t bh, int64_t, int64_t i0, int64_t i1, T* S, T*) {
    const int64_t b = bh / p.H, h = bh % p.H, mi = i1 - i0, ny = s.ny;
    for (int64_t r = 0; r < mi; ++r) {
      T* row = S + r * grid.ld;
      T l;
      const T f = row_potential(row, g + bh * ny, ny, s.x_ok[b * s.nx + i0 + r], row, l);
      f_out[bh * s.nx + i0 + r] = f;
      const T inv = std::isinf(f) ? T(0) : T(1) / l;
      double sum = 0;
#pragma omp simd simdlen(kLanes <T>) reduction(+ : sum)
      for (int64_t c = 0; c < ny; ++c) {
        row[c] *= inv;
        sum += double(row[c]);
      }
      rowsums[bh * s.nx + i0 + r] = sum;
    }
    tile_gemm(mi, dh, ny, T(1), Mat<T>{S, grid.ld, 1}, v.rows<T>(b, h, 0), T(0), out + (bh * s.nx + i0) * dh, dh);
  });
}

// With e_ij = exp(S_ij + f_i + g_j): t_i = Σ_j e_ij w_j for every row (in double), then the caller's
// c_i = row_weight(bh, i, t_i), and, when col is set, col_j = Σ_i exp(S_ij + f_i + g2_j) c_i (g2 == g:
// the same e). The backward's matrix-vector products: unrolled, a column step's C w with the row
// step before it, Rᵀ f̄ (f̄ updated by C w first); implicit, P β with Pᵀ α.
// When g2 − g stays within kReuseLimit on the included columns, exp(S + f + g2) = e ∘ exp(g2 − g) by
// columns, and that factor is applied to the column sums at the end: one exponential per score.
template <class T>
constexpr double kReuseLimit = sizeof(T) == 4 ? 30.0 : 300.0;

template <class T, class RowWeight>
void adjoint_pass(const SinkPlan& p, const Side<T>& s, const T* f, const T* g, const T* w, const T* g2, double* col,
                  RowWeight&& row_weight) {
  const StripGrid grid = strip_grid(p, s);
  const int64_t ny = s.ny;
  Tensor acc_t = zeros({col ? p.BH * grid.parts * ny : 0}, DType::f64);
  double* acc = acc_t.data<double>();
  Tensor factor_t;  // exp(g2 − g) per column when reused (0 for excluded columns)
  if (col && g2 != g) {
    factor_t = empty({p.BH * ny}, DType::f64);
    double* fa = factor_t.data<double>();
    for (int64_t e = 0; e < p.BH * ny && factor_t.defined(); ++e) {
      const bool excluded = std::isinf(g[e]) || std::isinf(g2[e]);
      const double d = excluded ? 0.0 : double(g2[e]) - double(g[e]);
      if (!(std::abs(d) <= kReuseLimit<T>)) factor_t = Tensor();  // NaN too
      else fa[e] = excluded ? 0.0 : std::exp(d);
    }
  }
  const double* factor = factor_t.defined() ? factor_t.data<double>() : nullptr;
  const bool reuse = g2 == g || factor;
  // Column sums: a strip's rows in T (at most bx terms), then in double across strips.
  for_strips(p, s, grid, 2 * grid.ld, 2.0 * double(p.dh) + 8.0,
             [&](int64_t bh, int64_t part, int64_t i0, int64_t i1, T* S, T* e) {
               double* a = col ? acc + (bh * grid.parts + part) * ny : nullptr;
               T* as = e + grid.ld;
               if (a) std::fill(as, as + ny, T(0));
               const T* wj = w + bh * ny;
               for (int64_t r = 0; r < i1 - i0; ++r) {
                 const int64_t i = i0 + r;
                 const T fi = f[bh * s.nx + i];
                 if (std::isinf(fi)) {  // an excluded row: e = 0
                   row_weight(bh, i, 0.0);
                   continue;
                 }
                 const T* srow = S + r * grid.ld;
                 exp_row_biased(e, srow, g + bh * ny, ny, T(-fi));
                 double t = 0;
#pragma omp simd reduction(+ : t)
                 for (int64_t c = 0; c < ny; ++c) t += double(e[c]) * double(wj[c]);
                 const double ci = row_weight(bh, i, t);
                 if (!a || ci == 0) continue;
                 if (!reuse) exp_row_biased(e, srow, g2 + bh * ny, ny, T(-fi));
                 const T cit = T(ci);
#pragma omp simd simdlen(kLanes <T>)
                 for (int64_t c = 0; c < ny; ++c) as[c] += e[c] * cit;
               }
               if (a) {
#pragma omp simd
                 for (int64_t c = 0; c < ny; ++c) a[c] += double(as[c]);
               }
             });
  if (!col) return;
  for (int64_t bh = 0; bh < p.BH; ++bh)
    for (int64_t j = 0; j < ny; ++j) {
      double sum = 0;
      for (int64_t part = 0; part < grid.parts; ++part) sum += acc[size_t((bh * grid.parts + part) * ny + j)];
      col[bh * ny + j] = factor ? sum * factor[bh * ny + j] : sum;
    }
}

// A matrix (xw_i + yw_j) exp(St_ij + xb_i + yb_j) of dS; a null weight is zero.
template <class T>
struct Term {
  const T *xw, *yw, *xb, *yb;
};

// The terms after the first as a low-rank correction of it: exp(St + xb_t + yb_t) = p ∘ (a_t b_tᵀ) with
// a_t = exp(xb_t − xb_0), b_t = exp(yb_t − yb_0) (0 where the first term excludes the row or column),
// so that dS = p ∘ (dPt + xw_0 + yw_0 + U Wᵀ): one tile product of inner size `rank` instead of an
// exponential per term and score. Each term after the first has one weight (a row or a column step).
template <class T>
struct LowRank {
  Tensor u, wt;  // [BH, nx, rank], [BH, rank, ny]
  int64_t rank = 0;
};

template <class T>
LowRank<T> low_rank(const SinkPlan& p, const Side<T>& s, const std::vector<Term<T>>& terms) {
  LowRank<T> lr;
  lr.rank = int64_t(terms.size()) - 1;
  if (lr.rank <= 0) return lr;
  lr.u = empty({p.BH, s.nx, lr.rank}, dtype_of<T>());
  lr.wt = empty({p.BH, lr.rank, s.ny}, dtype_of<T>());
  T* u = lr.u.template data<T>();
  T* wt = lr.wt.template data<T>();
  const T *x0 = terms[0].xb, *y0 = terms[0].yb;
  for (int64_t t = 1; t <= lr.rank; ++t) {
    const Term<T>& tm = terms[size_t(t)];
    for (int64_t e = 0; e < p.BH * s.nx; ++e) {
      const T a = std::isinf(x0[e]) ? T(0) : std::exp(tm.xb[e] - x0[e]);
      u[e * lr.rank + t - 1] = tm.xw ? tm.xw[e] * a : a;
    }
    for (int64_t bh = 0; bh < p.BH; ++bh)
      for (int64_t j = 0; j < s.ny; ++j) {
        const int64_t e = bh * s.ny + j;
        const T b = std::isinf(y0[e]) ? T(0) : std::exp(tm.yb[e] - y0[e]);
        wt[(bh * lr.rank + t - 1) * s.ny + j] = tm.yw ? tm.yw[e] * b : b;
      }
  }
  return lr;
}

// Whether the low-rank form is safe: a_t b_t stays within range (and p does not underflow where a
// term does not) while the potentials of every step are within `limit` of the last ones. Beyond it
// (very peaked scores) each term gets its own exponential.
double g_low_rank_limit = -1;  // < 0: the default for the dtype

template <class T>
bool low_rank_ok(const SinkPlan& p, const std::vector<Term<T>>& terms) {
  const double limit = g_low_rank_limit >= 0 ? g_low_rank_limit : sizeof(T) == 4 ? 30.0 : 300.0;
  double dx = 0, dy = 0;
  for (size_t t = 1; t < terms.size(); ++t) {
    for (int64_t e = 0; e < p.BH * p.Tq; ++e)
      if (!std::isinf(terms[0].xb[e])) dx = std::max(dx, double(std::abs(terms[t].xb[e] - terms[0].xb[e])));
    for (int64_t e = 0; e < p.BH * p.Tk; ++e)
      if (!std::isinf(terms[0].yb[e])) dy = std::max(dy, double(std::abs(terms[t].yb[e] - terms[0].yb[e])));
  }
  return dx + dy <= limit;  // false for NaN
}

// dQ_i = scale Σ_j dS_ij K_j and dK_j = scale Σ_i dS_ij Q_i from one pass over S, with
// dS_ij = p_ij dP_ij + Σ_t (xw_ti + yw_tj) exp(S_ij + xb_ti + yb_tj), p the first term's matrix and
// dP = dO Vᵀ; the terms after the first from lr when set. dQ rows have one writer; dK is summed per
// part of the row tiles (two parts: each holds a [Tk, dh] copy per head) and the parts in order.
constexpr int64_t kGradParts = 2;

template <class T>
void grad_pass(const SinkPlan& p, const Side<T>& s, const std::vector<Term<T>>& terms, const LowRank<T>* lr,
               const Operand& go, const Operand& v, const T* vt, T* dq, T* dk) {
  const int64_t bx = p.bx, by = p.by, dh = p.dh;
  const size_t nterms = lr ? 1 : terms.size();
  const double flops = double(8 * dh) + (lr ? 2.0 * double(lr->rank) : 20.0 * double(nterms));
  const StripGrid grid = strip_grid(p, s, kGradParts);
  Tensor acc_t = zeros({p.BH, grid.parts, s.ny, dh}, dtype_of<T>());
  T* acc = acc_t.data<T>();
  for_parts(p, s, grid, 2 * bx * by + by, flops, [&](int64_t bh, int64_t part, int64_t i0, int64_t i1, T* S) {
    T* D = S + bx * by;
    T* e = D + bx * by;
    const int64_t mi = i1 - i0, b = bh / p.H, h = bh % p.H;
    T* o = dq + (bh * s.nx + i0) * dh;
    T* dkp = acc + (bh * grid.parts + part) * s.ny * dh;
    for (int64_t j0 = 0; j0 < s.ny; j0 += by) {
      const int64_t nj = std::min(by, s.ny - j0);
      score_tile(p, s, bh, i0, mi, j0, nj, S, by);
      const Mat<T> vtile = vt ? Mat<T>{vt + bh * dh * s.ny + j0, s.ny, 1} : v.template rows_t<T>(b, h, j0);
      tile_gemm(mi, nj, dh, T(1), go.template rows<T>(b, h, i0), vtile, T(0), D, by);  // dP
      if (lr && lr->rank > 0)                                                          // dP += U_i W_jᵀ
        tile_gemm(mi, nj, lr->rank, T(1), Mat<T>{lr->u.template data<T>() + (bh * s.nx + i0) * lr->rank, lr->rank, 1},
                  Mat<T>{lr->wt.template data<T>() + bh * lr->rank * s.ny + j0, s.ny, 1}, T(1), D, by);
      for (int64_t r = 0; r < mi; ++r) {
        const T* srow = S + r * by;
        T* drow = D + r * by;
        for (size_t t = 0; t < nterms; ++t) {
          const Term<T>& tm = terms[t];
          const T* yb = tm.yb + bh * s.ny + j0;
#pragma omp simd simdlen(kLanes <T>)
          for (int64_t c = 0; c < nj; ++c) e[c] = srow[c] + yb[c];
          exp_row(e, nj, T(-tm.xb[bh * s.nx + i0 + r]));
          const T xw = tm.xw ? tm.xw[bh * s.nx + i0 + r] : T(0);
          const T* yw = tm.yw ? tm.yw + bh * s.ny + j0 : nullptr;
          if (t == 0 && yw) {
#pragma omp simd simdlen(kLanes <T>)
            for (int64_t c = 0; c < nj; ++c) drow[c] = e[c] * (drow[c] + xw + yw[c]);
          } else if (t == 0) {
#pragma omp simd simdlen(kLanes <T>)
            for (int64_t c = 0; c < nj; ++c) drow[c] = e[c] * (drow[c] + xw);
          } else if (yw) {
#pragma omp simd simdlen(kLanes <T>)
            for (int64_t c = 0; c < nj; ++c) drow[c] += e[c] * (xw + yw[c]);
          } else {
#pragma omp simd simdlen(kLanes <T>)
            for (int64_t c = 0; c < nj; ++c) drow[c] += e[c] * xw;
          }
        }
      }
      tile_gemm(mi, dh, nj, T(p.scale), Mat<T>{D, by, 1}, s.y->template rows<T>(b, h, j0), j0 ? T(1) : T(0), o, dh);
      tile_gemm(nj, dh, mi, T(p.scale), Mat<T>{D, 1, by}, s.x->template rows<T>(b, h, i0), T(1), dkp + j0 * dh, dh);
    }
  });
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    T* out = dk + bh * s.ny * dh;
    std::copy(acc + bh * grid.parts * s.ny * dh, acc + (bh * grid.parts + 1) * s.ny * dh, out);
    for (int64_t part = 1; part < grid.parts; ++part)
      add_row(out, acc + (bh * grid.parts + part) * s.ny * dh, s.ny * dh);
  }
}

// ---- forward -------------------------------------------------------------------------------------

// What the backward needs: the potentials after every normalisation (l = 0..iters) and P's row sums.
struct Saved {
  Tensor fs, gs;  // [iters + 1, BH, Tq], [iters + 1, BH, Tk]
  Tensor rows;    // f64 [BH, Tq]
};

template <class T>
void forward_kernel(const SinkPlan& p, const Operand& q, const Operand& k, const Operand& v, T* out, Saved& sv) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t nq = p.BH * p.Tq, nk = p.BH * p.Tk;
  T* fs = sv.fs.data<T>();
  T* gs = sv.gs.data<T>();
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    const int64_t b = bh / p.H;
    for (int64_t i = 0; i < p.Tq; ++i) fs[bh * p.Tq + i] = p.mg.row_ok[size_t(b * p.Tq + i)] ? T(0) : ninf;
    for (int64_t j = 0; j < p.Tk; ++j) gs[bh * p.Tk + j] = p.mg.col_ok[size_t(b * p.Tk + j)] ? T(0) : ninf;
  }
  const Tensor kt = pack_transposed<T>(p, k, p.Tk);
  const Side<T> rows{&q, &k, data_or_null<T>(kt), p.Tq, p.Tk, p.mg.row_ok.data()};
  int64_t l = 1;
  for (; l + 1 <= p.iters; l += 2) {  // row step l and column step l + 1, from one strip pass
    const T* gp = gs + (l - 1) * nk;
    row_col_pass(p, rows, gp, fs + l * nq, gs + (l + 1) * nk);
    std::copy(gp, gp + nk, gs + l * nk);                           // a row step keeps g
    std::copy(fs + l * nq, fs + (l + 1) * nq, fs + (l + 1) * nq);  // a column step keeps f
  }
  if (l == p.iters) {  // the last step is a row step: with the output pass
    const T* gp = gs + (l - 1) * nk;
    std::copy(gp, gp + nk, gs + l * nk);
    row_output_pass(p, rows, gp, fs + l * nq, sv.rows.data<double>(), v, out);
  } else {
    weighted_pass(p, rows, fs + p.iters * nq, gs + p.iters * nk, static_cast<const T*>(nullptr), sv.rows.data<double>(),
                  &v, out);
  }
}

// ---- backward ------------------------------------------------------------------------------------

thread_local sinkformer::BackwardStats g_stats{};

struct Grads {
  Tensor dq, dk, dv;
};

// a_i · b_i over dh for every row i of an operand and a contiguous [BH, n, dh] array.
template <class T>
std::vector<double> row_dots(const SinkPlan& p, const Operand& a, const T* bdata, int64_t n) {
  std::vector<double> out(static_cast<size_t>(p.BH * n));
  for (int64_t bh = 0; bh < p.BH; ++bh)
    for (int64_t i = 0; i < n; ++i) {
      const T* ar = a.at<T>(bh / p.H, bh % p.H, i);
      const T* br = bdata + (bh * n + i) * p.dh;
      double acc = 0;
      for (int64_t d = 0; d < p.dh; ++d) acc += double(ar[d * a.sc]) * double(br[d]);
      out[size_t(bh * n + i)] = acc;
    }
  return out;
}

// Conjugate gradients (Jacobi preconditioner) on the optimality system at the fixed point, per
// batch·head: [diag(r) P; Pᵀ diag(c)] [α; β] + ridge u uᵀ [α; β] = [h_r; h_c], r, c the row and column
// sums of P, u = (1, −1) on the included rows and columns: the null direction (f + t, g − t). The
// right-hand side is orthogonal to u, so the ridge makes the system definite without moving the solution.
template <class T>
void solve_implicit(const SinkPlan& p, const Side<T>& rows, const T* f, const T* g, const std::vector<double>& rsum,
                    const std::vector<double>& csum, const std::vector<double>& hr, const std::vector<double>& hc,
                    const SinkhornOptions& opts, std::vector<double>& alpha, std::vector<double>& beta) {
  const int64_t nq = p.BH * p.Tq, nk = p.BH * p.Tk, n = p.Tq + p.Tk;
  auto at = [n](int64_t bh, int64_t i) { return size_t(bh * n + i); };  // x = (α, β) per head
  std::vector<uint8_t> ok(static_cast<size_t>(p.BH * n));
  std::vector<double> ridge(static_cast<size_t>(p.BH)), diag(static_cast<size_t>(p.BH * n), 1.0),
      rhs(static_cast<size_t>(p.BH * n), 0.0);
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    const int64_t b = bh / p.H;
    int64_t cnt = 0;
    for (int64_t i = 0; i < p.Tq; ++i) cnt += ok[at(bh, i)] = p.mg.row_ok[size_t(b * p.Tq + i)];
    for (int64_t j = 0; j < p.Tk; ++j) cnt += ok[at(bh, p.Tq + j)] = p.mg.col_ok[size_t(b * p.Tk + j)];
    ridge[size_t(bh)] = cnt ? 1.0 / double(cnt) : 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (!ok[at(bh, i)]) continue;
      const bool row = i < p.Tq;
      diag[at(bh, i)] = (row ? rsum[size_t(bh * p.Tq + i)] : csum[size_t(bh * p.Tk + i - p.Tq)]) + ridge[size_t(bh)];
      rhs[at(bh, i)] = row ? hr[size_t(bh * p.Tq + i)] : hc[size_t(bh * p.Tk + i - p.Tq)];
    }
  }
  std::vector<double> x(rhs.size(), 0.0), res = rhs, z(rhs.size()), dir(rhs.size()), ad(rhs.size());
  std::vector<T> wq(static_cast<size_t>(nq)), wk(static_cast<size_t>(nk));
  std::vector<double> pd(static_cast<size_t>(nq)), ptd(static_cast<size_t>(nk));
  auto sign = [&](int64_t i) { return i < p.Tq ? 1.0 : -1.0; };
  auto apply = [&] {  // ad = A dir for every head: P β and Pᵀ α from one strip pass
    for (int64_t bh = 0; bh < p.BH; ++bh) {
      for (int64_t i = 0; i < p.Tq; ++i) wq[size_t(bh * p.Tq + i)] = T(dir[at(bh, i)]);
      for (int64_t j = 0; j < p.Tk; ++j) wk[size_t(bh * p.Tk + j)] = T(dir[at(bh, p.Tq + j)]);
    }
    adjoint_pass(p, rows, f, g, wk.data(), g, ptd.data(), [&](int64_t bh, int64_t i, double t) {
      pd[size_t(bh * p.Tq + i)] = t;
      return double(wq[size_t(bh * p.Tq + i)]);
    });
    for (int64_t bh = 0; bh < p.BH; ++bh) {
      double ud = 0;
      for (int64_t i = 0; i < n; ++i)
        if (ok[at(bh, i)]) ud += sign(i) * dir[at(bh, i)];
      for (int64_t i = 0; i < n; ++i) {
        const size_t e = at(bh, i);
        const double cross = i < p.Tq ? pd[size_t(bh * p.Tq + i)] : ptd[size_t(bh * p.Tk + i - p.Tq)];
        ad[e] = ok[e] ? (diag[e] - ridge[size_t(bh)]) * dir[e] + cross + ridge[size_t(bh)] * sign(i) * ud : 0.0;
      }
    }
  };
  std::vector<double> rz(static_cast<size_t>(p.BH), 0.0), bnorm(static_cast<size_t>(p.BH), 0.0),
      rnorm(static_cast<size_t>(p.BH), 0.0);
  std::vector<uint8_t> active(static_cast<size_t>(p.BH), 1);
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    for (int64_t i = 0; i < n; ++i) {
      const size_t e = at(bh, i);
      z[e] = dir[e] = rhs[e] / diag[e];
      rz[size_t(bh)] += rhs[e] * z[e];
      bnorm[size_t(bh)] += rhs[e] * rhs[e];
    }
    rnorm[size_t(bh)] = bnorm[size_t(bh)] = std::sqrt(bnorm[size_t(bh)]);
    active[size_t(bh)] = bnorm[size_t(bh)] > 0 && std::isfinite(bnorm[size_t(bh)]);
  }
  int64_t it = 0;
  for (; it < opts.max_cg_iter && std::count(active.begin(), active.end(), 1) > 0; ++it) {
    apply();
    for (int64_t bh = 0; bh < p.BH; ++bh) {
      if (!active[size_t(bh)]) continue;  // stopped heads: their products were computed, unused
      double pap = 0;
      for (int64_t i = 0; i < n; ++i) pap += dir[at(bh, i)] * ad[at(bh, i)];
      if (!(pap > 0)) {  // exact solution (or breakdown): stop this head
        active[size_t(bh)] = 0;
        continue;
      }
      const double a = rz[size_t(bh)] / pap;
      double rz_new = 0, rr = 0;
      for (int64_t i = 0; i < n; ++i) {
        const size_t e = at(bh, i);
        x[e] += a * dir[e];
        res[e] -= a * ad[e];
        z[e] = res[e] / diag[e];
        rz_new += res[e] * z[e];
        rr += res[e] * res[e];
      }
      rnorm[size_t(bh)] = std::sqrt(rr);
      if (rnorm[size_t(bh)] <= opts.tol * bnorm[size_t(bh)]) {
        active[size_t(bh)] = 0;
        continue;
      }
      const double bt = rz_new / rz[size_t(bh)];
      rz[size_t(bh)] = rz_new;
      for (int64_t i = 0; i < n; ++i) dir[at(bh, i)] = z[at(bh, i)] + bt * dir[at(bh, i)];
    }
  }
  double worst = 0;
  for (int64_t bh = 0; bh < p.BH; ++bh)
    if (bnorm[size_t(bh)] > 0) worst = std::max(worst, rnorm[size_t(bh)] / bnorm[size_t(bh)]);
  g_stats.cg_iterations = it;
  g_stats.residual = worst;
  g_stats.converged = !(worst > opts.tol);
  if (!g_stats.converged)
    std::cerr << "warning: " << kOp << ": implicit backward: conjugate gradients stopped after " << it
              << " iterations (max_cg_iter " << opts.max_cg_iter << ") at relative residual " << worst << " > tol "
              << opts.tol << "; the gradient is approximate\n";
  alpha.assign(size_t(nq), 0.0);
  beta.assign(size_t(nk), 0.0);
  for (int64_t bh = 0; bh < p.BH; ++bh) {
    for (int64_t i = 0; i < p.Tq; ++i) alpha[size_t(bh * p.Tq + i)] = x[at(bh, i)];
    for (int64_t j = 0; j < p.Tk; ++j) beta[size_t(bh * p.Tk + j)] = x[at(bh, p.Tq + j)];
  }
}

template <class T>
Grads backward_kernel(const SinkPlan& p, const SinkhornOptions& opts, const Operand& q, const Operand& k,
                      const Operand& v, const Tensor& out, const Saved& sv, const Tensor& g_t) {
  const DType dt = dtype_of<T>();
  const int64_t nq = p.BH * p.Tq, nk = p.BH * p.Tk, L = p.iters;
  Grads gr{empty({p.B, p.H, p.Tq, p.dh}, dt), empty({p.B, p.H, p.Tk, p.dh}, dt), empty({p.B, p.H, p.Tk, p.dh}, dt)};
  const Operand go(g_t);
  const T* fs = sv.fs.data<T>();
  const T* gs = sv.gs.data<T>();
  const T *fT = fs + L * nq, *gT = gs + L * nk;
  const Tensor qt = pack_transposed<T>(p, q, p.Tq), kt = pack_transposed<T>(p, k, p.Tk);
  const Tensor vt = pack_transposed<T>(p, v, p.Tk);
  const Side<T> rows{&q, &k, data_or_null<T>(kt), p.Tq, p.Tk, p.mg.row_ok.data()};
  const Side<T> cols{&k, &q, data_or_null<T>(qt), p.Tk, p.Tq, p.mg.col_ok.data()};

  // The adjoints of the final potentials: f̄ = rowsum(P ∘ dP) = dO·O and ḡ = colsum(P ∘ dP) = V·dV,
  // exactly zero on excluded rows and columns; dV = Pᵀ dO in one pass over Sᵀ, which also gives P's
  // column sums (implicit) or, when the last step is a row step, its Rᵀ f̄ (unrolled, R = P).
  const bool implicit = opts.backward == SinkhornBackward::implicit;
  std::vector<double> fbar = row_dots<T>(p, go, out.data<T>(), p.Tq);
  for (int64_t e = 0; e < nq; ++e)
    if (!p.mg.row_ok[size_t(e / (p.H * p.Tq) * p.Tq + e % p.Tq)]) fbar[size_t(e)] = 0;
  const bool last_row_step = !implicit && L % 2;
  std::vector<T> fbar_t(static_cast<size_t>(last_row_step ? nq : 0));
  for (size_t e = 0; e < fbar_t.size(); ++e) fbar_t[e] = T(fbar[e]);
  std::vector<double> csum(static_cast<size_t>(nk));
  weighted_pass(p, cols, gT, fT, last_row_step ? fbar_t.data() : nullptr, csum.data(), &go, gr.dv.data<T>());
  std::vector<double> gbar = row_dots<T>(p, v, gr.dv.data<T>(), p.Tk);
  for (int64_t e = 0; e < nk; ++e)
    if (!p.mg.col_ok[size_t(e / (p.H * p.Tk) * p.Tk + e % p.Tk)]) gbar[size_t(e)] = 0;

  // Step weights: wf[l] (row steps) and wg[l] (column steps), the terms of dS.
  Tensor wf_t = zeros({L + 1, nq}, dt), wg_t = zeros({L + 1, nk}, dt);
  T* wf = wf_t.data<T>();
  T* wg = wg_t.data<T>();
  std::vector<Term<T>> terms;
  g_stats = {};
  if (implicit) {
    std::vector<double> alpha, beta;
    solve_implicit(p, rows, fT, gT, sv.rows.to_vector<double>(), csum, fbar, gbar, opts, alpha, beta);
    for (int64_t e = 0; e < nq; ++e) wf[e] = T(-alpha[size_t(e)]);
    for (int64_t e = 0; e < nk; ++e) wg[e] = T(-beta[size_t(e)]);
    terms.push_back({wf, wg, fT, gT});  // dS = P ∘ (dP − α 1ᵀ − 1 βᵀ)
  } else {
    // In reverse: a row step l (f^l = −LSE_r(S + g^(l−1))) adds −f̄_i R_ij to dS and −Rᵀ f̄ to ḡ, with
    // R = exp(S + f^l + g^l); a column step adds −ḡ_j C_ij and −C ḡ to f̄, C = exp(S + f^l + g^l) / b.
    int64_t l = L;
    if (last_row_step) {  // its Rᵀ f̄ came with dV (in csum)
      for (int64_t e = 0; e < nq; ++e) wf[L * nq + e] = T(-fbar[size_t(e)]);
      for (int64_t e = 0; e < nk; ++e) gbar[size_t(e)] -= csum[size_t(e)];
      std::fill(fbar.begin(), fbar.end(), 0.0);
      --l;
    }
    std::vector<T> w(static_cast<size_t>(nk));
    std::vector<double> t(static_cast<size_t>(nk));
    for (; l >= 2; l -= 2) {  // column step l, then row step l − 1 (g^0 is a constant: no Rᵀ f̄ for l − 1 = 1)
      for (int64_t e = 0; e < nk; ++e) {
        w[size_t(e)] = T(gbar[size_t(e)] * std::exp(-p.mg.log_b[size_t(e / (p.H * p.Tk))]));
        wg[l * nk + e] = -w[size_t(e)];
      }
      T* wrow = wf + (l - 1) * nq;
      adjoint_pass(p, rows, fs + l * nq, gs + l * nk, w.data(), gs + (l - 1) * nk, l - 1 > 1 ? t.data() : nullptr,
                   [&](int64_t bh, int64_t i, double ti) {
                     double& fb = fbar[size_t(bh * p.Tq + i)];
                     fb -= ti;  // the column step's −C w
                     wrow[bh * p.Tq + i] = T(-fb);
                     return fb;
                   });
      for (int64_t e = 0; e < nk; ++e) gbar[size_t(e)] = l - 1 > 1 ? -t[size_t(e)] : 0.0;
      std::fill(fbar.begin(), fbar.end(), 0.0);
    }
    // The last step's matrix is P itself (a column step's 1/b is in its weight): one term with dP.
    terms.push_back({L % 2 ? wf + L * nq : nullptr, L % 2 ? nullptr : wg + L * nk, fT, gT});
    for (int64_t st = 1; st < L; ++st)
      terms.push_back({st % 2 ? wf + st * nq : nullptr, st % 2 ? nullptr : wg + st * nk, fs + st * nq, gs + st * nk});
  }
  const bool factored = low_rank_ok(p, terms);
  g_stats.low_rank = factored;
  const LowRank<T> lr = factored ? low_rank(p, rows, terms) : LowRank<T>{};
  grad_pass(p, rows, terms, factored ? &lr : nullptr, go, v, data_or_null<T>(vt), gr.dq.data<T>(), gr.dk.data<T>());
  return gr;
}

// ---- the op ------------------------------------------------------------------------------------

Tensor fused_sinkformer(const OpDef& op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                        double scale, const SinkhornOptions& opts, Tensor* f_out, Tensor* g_out) {
  const char* name = op.name.c_str();
  check_fused_inputs(name, q, k, v, mask, scale);
  sinkformer::check_options(name, q, k, mask, opts.iterations);
  if (opts.backward == SinkhornBackward::implicit && (!(opts.tol > 0) || !(opts.tol < 1) || opts.max_cg_iter < 1))
    fail<ValueError>(name, "the implicit backward needs tol in (0, 1) and max_cg_iter >= 1, got tol ", opts.tol,
                     ", max_cg_iter ", opts.max_cg_iter);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2);
  const DType dt = q.dtype();
  if (opts.iterations == 1 || q.numel() == 0 || k.numel() == 0) {
    // One normalisation is softmax attention, exactly: the flash kernel. Its backward is the unrolled
    // and the implicit one alike (rows only: β = 0 and α = rowsum(P ∘ dP)).
    Tensor lse;
    Tensor out = flash_attention(q, k, v, mask, scale, &lse);
    if (f_out) *f_out = neg(lse);
    if (g_out) {
      const Marginals mg = sinkformer::marginals(mask, B, Tq, Tk, 1);
      std::vector<double> gv(static_cast<size_t>(B * H * Tk));
      for (size_t e = 0; e < gv.size(); ++e)
        gv[e] = mg.col_ok[e / size_t(H * Tk) * size_t(Tk) + e % size_t(Tk)] ? 0 : -INFINITY;
      *g_out = from_vector(gv, {B, H, Tk}, dt);
    }
    return out;
  }
  const flash::Tiles tl = flash::tiles();
  auto plan =
      std::make_shared<const SinkPlan>(SinkPlan{B, H, Tq, Tk, q.size(3), B * H, scale, opts.iterations, tl.fwd_q,
                                                tl.fwd_k, sinkformer::marginals(mask, B, Tq, Tk, opts.iterations)});
  auto saved = std::make_shared<Saved>();
  saved->fs = empty({opts.iterations + 1, B * H, Tq}, dt);
  saved->gs = empty({opts.iterations + 1, B * H, Tk}, dt);
  saved->rows = empty({B * H, Tq}, DType::f64);
  Tensor out = empty(q.shape(), dt);
  dispatch_floating(dt, name, [&]<class T>() {
    forward_kernel<T>(*plan, Operand(q), Operand(k), Operand(v), out.data<T>(), *saved);
  });
  if (f_out) *f_out = saved->fs.select(0, opts.iterations).reshape({B, H, Tq});
  if (g_out) *g_out = saved->gs.select(0, opts.iterations).reshape({B, H, Tk});
  if (needs_grad({q, k, v}))
    record(out, op, {q, k, v},
           [plan, saved, opts, name, sq = SavedTensor(q, name), sk = SavedTensor(k, name), sv = SavedTensor(v, name),
            so = SavedTensor(out.detach(), name)](const Tensor& g, const std::vector<bool>& need) {
             const Tensor& qv = sq.get();
             Grads gr = dispatch_floating(g.dtype(), name, [&]<class T>() {
               return backward_kernel<T>(*plan, opts, Operand(qv), Operand(sk.get()), Operand(sv.get()), so.get(),
                                         *saved, g.dtype() == qv.dtype() ? g : g.to(qv.dtype()));
             });
             return std::vector<Tensor>{need[0] ? gr.dq : Tensor(), need[1] ? gr.dk : Tensor(),
                                        need[2] ? gr.dv : Tensor()};
           });
  return out;
}

// ---- registration --------------------------------------------------------------------------------

Tensor padding_mask(std::vector<double> v, int64_t B, int64_t T) { return from_vector(v, {B, T}, DType::b8); }

// The implicit gradient is the truncated forward's only at convergence: many steps, a tight CG.
SinkhornOptions converged_implicit(int64_t iterations) { return {iterations, SinkhornBackward::implicit, 1e-12, 500}; }

const OpDef kSinkformer(
    "sinkformer_attention",
    "dV = Pᵀ dO; dS = P∘dP + Σ_steps: unrolled, in reverse from f̄ = dO·O, ḡ = V·dV: row step −f̄∘R (ḡ −= Rᵀf̄), "
    "column step −ḡ∘C (f̄ −= Cḡ); implicit: −P∘(α1ᵀ + 1βᵀ), [diag(P1) P; Pᵀ diag(Pᵀ1)][α; β] = [f̄; ḡ]; "
    "dQ = scale dS K, dK = scale dSᵀ Q",
    {{"[1,2,5,3], 2 normalisations, unrolled, tiles 2x3",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 3, 2, 3});
        return sinkformer_attention(in[0], in[1], in[2], {}, 0.7, {2});
      }},
     {"Tq 4 < Tk 6, 3 normalisations, unrolled, tiles 3x2",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 4, 3}), rn(g, {2, 1, 6, 3}), rn(g, {2, 1, 6, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 2, 3, 2});
        return sinkformer_attention(in[0], in[1], in[2], {}, 0.8, {3});
      }},
     {"key padding (queries too; batch 1: one valid position), 7 normalisations, unrolled, tiles 2x2",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 5, 2}), rn(g, {2, 1, 5, 2}), rn(g, {2, 1, 5, 2}),
                      padding_mask({0, 1, 0, 0, 1, 1, 1, 0, 1, 1}, 2, 5)};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 2, 2, 2});
        return sinkformer_attention(in[0], in[1], in[2], {false, in[3]}, 0.6, {7});
      }},
     {"Tq 6 > Tk 4, key padding, 4 normalisations, unrolled, non-contiguous inputs",
      [](Generator& g) {
        return Inputs{rn_t(g, {1, 2, 6, 3}), rn(g, {1, 4, 2, 3}).permute({0, 2, 1, 3}), rn_t(g, {1, 2, 4, 3}),
                      padding_mask({0, 0, 1, 0}, 1, 4)};
      },
      [](const Inputs& in) {
        ScopedTiles st({4, 3, 4, 3});
        return sinkformer_attention(in[0], in[1], in[2], {false, in[3]}, 0.5, {4});
      }},
     {"implicit at the fixed point (301 normalisations), [1,2,5,3], tiles 2x3",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 3, 2, 3});
        return sinkformer_attention(in[0], in[1], in[2], {}, 0.5, converged_implicit(301));
      }},
     {"implicit, Tq 5 > Tk 4, key padding, 300 normalisations, tiles 3x2",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 5, 2}), rn(g, {2, 1, 4, 2}), rn(g, {2, 1, 4, 2}),
                      padding_mask({0, 1, 0, 0, 0, 0, 0, 1}, 2, 4)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 2, 3, 2});
        return sinkformer_attention(in[0], in[1], in[2], {false, in[3]}, 0.6, converged_implicit(300));
      }}});

}  // namespace

namespace sinkformer {
BackwardStats last_backward_stats() { return g_stats; }
void set_low_rank_limit(double limit) { g_low_rank_limit = limit; }
}  // namespace sinkformer

Tensor sinkformer_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                            const SinkhornOptions& opts, Tensor* f_out, Tensor* g_out) {
  return fused_sinkformer(kSinkformer, q, k, v, mask, scale, opts, f_out, g_out);
}

}  // namespace attnlab

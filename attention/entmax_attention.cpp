// Entmax attention: the composite reference, the fused kernel (forward and backward side by side),
// and the attention method. Notation (docs/entmax.md#entmax-attention): per query row,
//   z_j = scale · q·k_j (−inf where masked),  u_j = (α−1)(z_j − max z) − τ,  p_j = [u_j]_+^β / N
// with β = 1/(α−1) and N = 1 for the exact maps (sparsemax, 1.5-entmax) or Σ_j [u_j]_+^β for the
// bisection (which renormalises, as entmax_bisect does), and s_j = p_j^(2−α) on the support.
//
// Forward, per (batch·head, query tile): the strip Z = scale Q_i Kᵀ of the tile's rows against every
// key it may see (one product; rows ≤ tile, keys ≤ n: linear in n), τ of each row by the row kernels
// of attention/entmax.h, then for each key tile the P and s tiles; a tile with any p > 0 sets its bit
// and adds P_j V_j to O and s_j V_j to Õ (Õ /= Σ s at the end). Saved: O, Õ, (max, τ, 1/N) per row,
// the bitmask.
// Backward, per (batch·head, query tiles), on the set bits only: P and s from the saved row numbers,
// dV_j += Pᵀ dO_i, dP = dO_i V_jᵀ, dZ = s ∘ (dP − δ) with δ = rowsum(dO_i ∘ Õ_i), dK_j += scale dZᵀ Q_i,
// dQ_i += scale dZ K_j, and per row ∂L/∂α = β²(Σ dP p − δ) − β(Σ dP p log p − δ Σ p log p).
#include "attention/entmax_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "attention/entmax.h"
#include "attention/entmax_power.h"
#include "attention/graph_entmax.h"
#include "attention/tiles.h"
#include "autograd/anomaly.h"
#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"

namespace attnlab {
using namespace cases;
using namespace tiled;

// ---- tiles -------------------------------------------------------------------------------------

namespace {
// 64 × 64: the bitmask's granularity. Finer tiles skip more on sparse rows, coarser ones make the
// tile products more efficient; 64 keeps the register kernel at full width. Below 1/8 of its entries
// non-zero, a tile's products run per weight (an axpy or a dot of dh per weight): dense tile products
// reach ~8x more flop/s than those gathers, so that is about where the two cost the same.
constexpr entmax_attention_tiles::Tiles kDefaultTiles{64, 64, 0.125};
entmax_attention_tiles::Tiles g_tiles{};

entmax_attention_tiles::Tiles effective_tiles() {
  return {g_tiles.q > 0 ? g_tiles.q : kDefaultTiles.q, g_tiles.k > 0 ? g_tiles.k : kDefaultTiles.k,
          g_tiles.sparse_below >= 0 ? g_tiles.sparse_below : kDefaultTiles.sparse_below};
}

struct ScopedTiles {
  entmax_attention_tiles::Tiles saved = g_tiles;
  explicit ScopedTiles(entmax_attention_tiles::Tiles t) { g_tiles = t; }
  ~ScopedTiles() { g_tiles = saved; }
  ScopedTiles(const ScopedTiles&) = delete;
  ScopedTiles& operator=(const ScopedTiles&) = delete;
};

// At most this many scores in one thread's strip: longer rows are cut into fewer query rows per pass.
constexpr int64_t kStripElems = int64_t(1) << 21;
}  // namespace

namespace entmax_attention_tiles {
void set(const Tiles& t) { g_tiles = t; }
Tiles get() { return effective_tiles(); }
}  // namespace entmax_attention_tiles

// ---- the composite reference -----------------------------------------------------------------

namespace {
enum class Map { sparsemax, entmax15, bisect };

Map map_of(const EntmaxAlpha& a) {
  if (a.per_head.defined()) return Map::bisect;
  return a.value == 2 ? Map::sparsemax : a.value == 1.5 ? Map::entmax15 : Map::bisect;
}

void check_alpha(const char* op, const EntmaxAlpha& a, const Tensor& q) {
  if (!a.per_head.defined()) {
    if (!(a.value > 1) || !std::isfinite(a.value))
      fail<ValueError>(op, "alpha must be finite and > 1 (softmax attention is α = 1), got ", a.value);
    return;
  }
  if (a.per_head.dim() != 1 || a.per_head.size(0) != q.size(1) || a.per_head.dtype() != q.dtype())
    fail<ShapeError>(op, "per-head alpha must be [H] = [", q.size(1), "] of q's dtype, got ", describe(a.per_head),
                     " for q ", describe(q));
  for (double v : a.per_head.to_vector<double>())
    if (!(v > 1) || !std::isfinite(v))
      fail<ValueError>(op, "alpha must be finite and > 1 for every head, got ", v, " in ", describe(a.per_head));
}
}  // namespace

Tensor entmax_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                  double scale, const EntmaxAlpha& alpha, Tensor* weights_out) {
  check_qkv("entmax_attention", q, k, v, mask);
  check_alpha("entmax_attention", alpha, q);
  Tensor scores = matmul(q, k.transpose(-1, -2)) * scale;
  Tensor blocked = blocked_positions(mask, q.size(2), k.size(2));
  if (blocked.defined()) scores = masked_fill(scores, blocked, -std::numeric_limits<double>::infinity());
  Tensor w;
  switch (map_of(alpha)) {
    case Map::sparsemax:
      w = sparsemax(scores, -1);
      break;
    case Map::entmax15:
      w = entmax15(scores, -1);
      break;
    case Map::bisect:
      w = alpha.per_head.defined() ? entmax_bisect(scores, alpha.per_head.reshape({q.size(1), 1, 1}), -1)
                                   : entmax_bisect(scores, alpha.value, -1);
      break;
  }
  if (weights_out) *weights_out = w;
  return matmul(w, v);
}

// ---- the fused kernel --------------------------------------------------------------------------

namespace {

// Per query row: the threshold's numbers, enough to rebuild every p_j from z_j.
template <class T>
struct RowStat {
  T max, tau, inv_norm;
};

struct Setup {
  int64_t bq, bk, nqt, nkt;
  double sparse_below;
  Map map;
  std::vector<double> alpha;  // per head
  int max_iter = EntmaxBisectOptions{}.max_iter;
};

template <class T>
Mat<T> keys_t(const Plan& p, const Operand& x, const Tensor& packed, int64_t bh, int64_t j0) {
  if (packed.defined()) return {packed.data<T>() + bh * p.dh * p.Tk + j0, p.Tk, 1};
  return x.rows_t<T>(bh / p.H, bh % p.H, j0);
}

// P and s of rows [0, mi) of a tile of scores z (row stride ldz) against nj keys, into P and s (row
// stride ld). Rows with a NaN τ (a NaN or +inf score) give NaN; fully masked rows give zeros.
// Returns the number of non-zero weights (NaN counts as non-zero).
template <class T, class Power>
[[gnu::flatten]] int64_t weights_tile(const T* z, int64_t ldz, const RowStat<T>* st, int64_t mi, int64_t nj,
                                      const Power& pw, T* P, T* s, int64_t ld, T* sum_s) {
  const T am1 = T(pw.alpha - 1), nan = std::numeric_limits<T>::quiet_NaN();
  int64_t nonzero = 0;
  for (int64_t r = 0; r < mi; ++r) {
    const T* zr = z + r * ldz;
    T* pr = P + r * ld;
    T* sr = s + r * ld;
    const RowStat<T> rs = st[r];
    if (std::isnan(rs.tau)) {
      std::fill(pr, pr + nj, nan);
      std::fill(sr, sr + nj, nan);
      if (sum_s) sum_s[r] = nan;
      nonzero += nj;
      continue;
    }
    if (rs.max == -std::numeric_limits<T>::infinity()) {
      std::fill(pr, pr + nj, T(0));
      std::fill(sr, sr + nj, T(0));
      continue;
    }
    const T m = rs.max, tau = rs.tau, inv = rs.inv_norm, s_inv = pw.s(inv);  // s = (t^β c)^(2−α) = s(c) s_t(t)
    int64_t cnt = 0;
    T ssum = 0;
#pragma omp simd simdlen(kLanes <T>) reduction(+ : cnt, ssum)
    for (int64_t c = 0; c < nj; ++c) {
      const T t = (zr[c] - m) * am1 - tau;  // the expression of entmax::write_probabilities: same support
      const bool on = t > 0;
      const T p = on ? pw.prob(t) * inv : T(0);
      const T w = on ? s_inv * pw.s_t(t) : T(0);  // no sqrt for 1.5-entmax: s = t
      pr[c] = p;
      sr[c] = w;
      cnt += on;
      ssum += w;
    }
    if (sum_s) sum_s[r] += ssum;
    nonzero += cnt;
  }
  return nonzero;
}

// Calls f(c) for every c < n with row[c] != 0 (NaN included), in order: a vector compare per 16
// entries and a walk over the set bits, so that rows of a few non-zeros among 64 cost little.
template <class T, class F>
inline void for_each_nonzero(const T* row, int64_t n, F&& f) {
  int64_t c0 = 0;
#if ATTNLAB_FLASH_AVX512
  if constexpr (std::is_same_v<T, float>) {
    for (; c0 + 16 <= n; c0 += 16) {
      unsigned m = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + c0), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      for (; m; m &= m - 1) f(c0 + __builtin_ctz(m));
    }
  }
#endif
  for (int64_t c = c0; c < n; ++c)
    if (row[c] != T(0)) f(c);
}

// y += a x and x·y over dh contiguous entries (rows of the operands: unit stride when dh > 1).
template <class T>
inline void axpy(int64_t n, T a, const T* x, T* y) {
#pragma omp simd simdlen(kLanes <T>)
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}
template <class T>
inline T dot(int64_t n, const T* x, const T* y) {
  T acc = 0;
#pragma omp simd simdlen(kLanes <T>) reduction(+ : acc)
  for (int64_t d = 0; d < n; ++d) acc += x[d] * y[d];
  return acc;
}

template <class T>
entmax::Threshold<T> row_threshold(Map map, const T* z, int64_t n, T alpha, int max_iter, T* scratch) {
  if (map == Map::sparsemax) return entmax::sparsemax_threshold(z, n, scratch);
  if (map == Map::entmax15) return entmax::entmax15_threshold(z, n, scratch);
  return entmax::bisect_threshold(z, n, alpha, max_iter, scratch);
}

// Σ_j [u_j]_+^β over a row: the bisection's normaliser N.
template <class T, class Power>
[[gnu::flatten]] double row_norm(const T* z, int64_t n, const entmax::Threshold<T>& th, const Power& pw) {
  const T am1 = T(pw.alpha - 1), m = th.max, tau = th.tau;
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) {
    const T t = (z[c] - m) * am1 - tau;
    sum += t > 0 ? double(pw.prob(t)) : 0.0;
  }
  return sum;
}

struct ForwardOut {
  Tensor out, otilde, rowstat, support, tiles;
};

template <class T>
void forward_kernel(const Plan& p, const Setup& su, const Operand& q, const Operand& k, const Operand& v,
                    ForwardOut& fo) {
  const int64_t bq = su.bq, bk = su.bk, dh = p.dh, BH = p.B * p.H, Tk = p.Tk;
  const Segment& seg = p.segs[0];
  const int64_t rows_per_pass = std::clamp<int64_t>(kStripElems / std::max<int64_t>(Tk, 1), 1, bq);
  double work = 0;
  for (int64_t i0 = 0; i0 < p.Tq; i0 += bq) {
    const int64_t i1 = std::min(i0 + bq, p.Tq);
    work += double(i1 - i0) * double(p.key_end(seg, i1)) * double(4 * dh);
  }
  const bool par = run_parallel(work * double(BH));
  const int nthreads = par ? omp_get_max_threads() : 1;
  const Tensor kt = k.pack_heads_t<T>(p.B, p.H, p.Tk, par);
  // Per thread: the strip of scores, the threshold's scratch row, the P and s tiles, Σ s per row.
  const int64_t ld_strip = std::max<int64_t>(Tk, 1);
  const int64_t per_thread = rows_per_pass * ld_strip + ld_strip + 2 * bq * bk + bq;
  Tensor scratch = empty({nthreads, per_thread}, dtype_of<T>());
  T* scratch0 = scratch.data<T>();
  T* out = fo.out.data<T>();
  T* ot = fo.otilde.data<T>();
  auto* st = reinterpret_cast<RowStat<T>*>(fo.rowstat.data<T>());
  int64_t* support = fo.support.data<int64_t>();
  uint8_t* bits = fo.tiles.data<uint8_t>();
  const T scale = T(p.scale), ninf = -std::numeric_limits<T>::infinity();
  const int64_t items = BH * su.nqt;

#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nthreads)
  for (int64_t it = 0; it < items; ++it) {
    T* S = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
    T* row_scratch = S + rows_per_pass * ld_strip;
    T* Pt = row_scratch + ld_strip;
    T* St = Pt + bq * bk;
    T* sum_s = St + bq * bk;
    const int64_t bh = it / su.nqt, qt = it % su.nqt, b = bh / p.H, h = bh % p.H;
    const T alpha = T(su.alpha[size_t(h)]);
    uint8_t* tile_bits = bits + (bh * su.nqt + qt) * su.nkt;
    const int64_t i0 = qt * bq, i1 = std::min(i0 + bq, p.Tq);
    entmax::with_power(alpha, [&](const auto& pw) {
      for (int64_t r0 = i0; r0 < i1; r0 += rows_per_pass) {
        const int64_t r1 = std::min(r0 + rows_per_pass, i1), mr = r1 - r0;
        const int64_t kend = p.key_end(seg, r1);
        T* o = out + (bh * p.Tq + r0) * dh;
        T* otr = ot + (bh * p.Tq + r0) * dh;
        RowStat<T>* rst = st + bh * p.Tq + r0;
        if (kend > 0)  // Z = scale Q Kᵀ for the rows of this pass against every key they may see
          tile_gemm(mr, kend, dh, scale, q.rows<T>(b, h, r0), keys_t<T>(p, k, kt, bh, 0), T(0), S, ld_strip);
        for (int64_t j0 = 0; j0 < kend; j0 += bk) {
          const int64_t j1 = std::min(j0 + bk, kend);
          const TileMask mk = p.classify(b, r0, r1, j0, j1);
          if (mk.skip) {
            for (int64_t r = 0; r < mr; ++r) std::fill(S + r * ld_strip + j0, S + r * ld_strip + j1, ninf);
          } else {
            p.apply_mask(S + j0, ld_strip, b, r0, mr, j0, j1 - j0, mk);
          }
        }
        for (int64_t r = 0; r < mr; ++r) {
          const T* z = S + r * ld_strip;
          const entmax::Threshold<T> th = row_threshold(su.map, z, kend, alpha, su.max_iter, row_scratch);
          T inv = 1;
          if (su.map == Map::bisect && th.support > 0) inv = T(1 / row_norm(z, kend, th, pw));
          rst[r] = {th.support == 0 ? ninf : th.max, th.support < 0 ? std::numeric_limits<T>::quiet_NaN() : th.tau,
                    inv};
          support[bh * p.Tq + r0 + r] = std::max<int64_t>(th.support, 0);
          sum_s[r] = 0;
        }
        std::fill(o, o + mr * dh, T(0));
        std::fill(otr, otr + mr * dh, T(0));
        for (int64_t j0 = 0; j0 < kend; j0 += bk) {
          const int64_t nj = std::min(bk, kend - j0);
          const int64_t nnz = weights_tile(S + j0, ld_strip, rst, mr, nj, pw, Pt, St, bk, sum_s);
          if (nnz == 0) continue;
          tile_bits[j0 / bk] = 1;
          if (double(nnz) < su.sparse_below * double(mr * nj)) {  // per weight: O_r += p v_j, Õ_r += s v_j
            for (int64_t r = 0; r < mr; ++r)
              for_each_nonzero(Pt + r * bk, nj, [&](int64_t c) {
                axpy(dh, Pt[r * bk + c], v.at<T>(b, h, j0 + c), o + r * dh);
                axpy(dh, St[r * bk + c], v.at<T>(b, h, j0 + c), otr + r * dh);
              });
            continue;
          }
          const Mat<T> vj = v.rows<T>(b, h, j0);
          tile_gemm(mr, dh, nj, T(1), Mat<T>{Pt, bk, 1}, vj, T(1), o, dh);    // O += P_j V_j
          tile_gemm(mr, dh, nj, T(1), Mat<T>{St, bk, 1}, vj, T(1), otr, dh);  // Õ += s_j V_j
        }
        for (int64_t r = 0; r < mr; ++r) {
          if (!(sum_s[r] > 0) && !std::isnan(sum_s[r])) {
            std::fill(otr + r * dh, otr + (r + 1) * dh, T(0));
            continue;
          }
          scale_row(otr + r * dh, dh, T(1) / sum_s[r]);
        }
      }
    });
  }
}

struct Grads {
  Tensor dq, dk, dv, dalpha;  // dalpha: [H] when asked for
};

template <class T>
Grads backward_kernel(const Plan& p, const Setup& su, const Operand& q, const Operand& k, const Operand& v,
                      const Tensor& otilde, const Tensor& rowstat, const Tensor& tiles, const Tensor& g,
                      const std::vector<bool>& need) {
  const int64_t bq = su.bq, bk = su.bk, dh = p.dh, BH = p.B * p.H, Tk = p.Tk, nqt = su.nqt, nkt = su.nkt;
  const DType dt = dtype_of<T>();
  const bool need_alpha = need.size() > 3 && need[3];
  const bool need_dp = need[0] || need[1] || need_alpha;
  Grads gr{zeros({p.B, p.H, p.Tq, dh}, dt), zeros({p.B, p.H, Tk, dh}, dt), zeros({p.B, p.H, Tk, dh}, dt), Tensor()};
  const Operand go(g);
  const uint8_t* bits = tiles.data<uint8_t>();
  const auto* st = reinterpret_cast<const RowStat<T>*>(rowstat.data<T>());
  const T* pot = otilde.data<T>();

  // Work units: (head, a range of its query tiles). With few heads a head is cut into parts (a fixed
  // number, so the result does not depend on the thread count), each adding into dK, dV buffers of
  // its own, summed in part order afterwards; dQ rows always have one writer.
  const int64_t parts = std::clamp<int64_t>((8 + BH - 1) / BH, 1, std::max<int64_t>(nqt, 1));
  std::vector<int64_t> tile_cost(size_t(BH * nqt));
  double total = 0;
  for (int64_t t = 0; t < BH * nqt; ++t) {
    int64_t c = 1;
    for (int64_t j = 0; j < nkt; ++j) c += bits[t * nkt + j];
    tile_cost[size_t(t)] = c;
    total += double(c) * double(bq * bk) * double(10 * dh);
  }
  std::vector<int64_t> part_start(size_t(BH * (parts + 1)));  // query tile where each part starts
  for (int64_t bh = 0; bh < BH; ++bh) {
    int64_t head_cost = 0;
    for (int64_t t = 0; t < nqt; ++t) head_cost += tile_cost[size_t(bh * nqt + t)];
    int64_t acc = 0, part = 1;
    part_start[size_t(bh * (parts + 1))] = 0;
    for (int64_t t = 0; t < nqt && part < parts; ++t) {
      acc += tile_cost[size_t(bh * nqt + t)];
      while (part < parts && acc * parts >= head_cost * part) part_start[size_t(bh * (parts + 1) + part++)] = t + 1;
    }
    while (part < parts) part_start[size_t(bh * (parts + 1) + part++)] = nqt;
    part_start[size_t(bh * (parts + 1) + parts)] = nqt;
  }
  const bool par = run_parallel(total);
  const int nt = par ? omp_get_max_threads() : 1;
  const Tensor kt = k.pack_heads_t<T>(p.B, p.H, p.Tk, par), vt = v.pack_heads_t<T>(p.B, p.H, p.Tk, par);
  Tensor part_buf;  // [BH, parts, 2, Tk, dh] when heads are cut
  if (parts > 1) part_buf = zeros({BH, parts, 2, Tk, dh}, dt);
  std::vector<double> dalpha_rows(need_alpha ? size_t(BH * p.Tq) : 0, 0.0);
  const int64_t per_thread = 3 * bq * bk + bq;
  Tensor scratch = empty({nt, per_thread}, dt);
  T* scratch0 = scratch.data<T>();
  T *dq = gr.dq.data<T>(), *dk = gr.dk.data<T>(), *dv = gr.dv.data<T>();
  const T scale = T(p.scale);
  const int64_t units = BH * parts;

#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nt)
  for (int64_t u = 0; u < units; ++u) {
    T* P = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
    T* Sw = P + bq * bk;  // s, then reused for nothing else
    T* dP = Sw + bq * bk;
    T* delta = dP + bq * bk;
    const int64_t bh = u / parts, part = u % parts, b = bh / p.H, h = bh % p.H;
    const T alpha = T(su.alpha[size_t(h)]);
    const double beta = 1.0 / (double(alpha) - 1);
    T* dk_head = parts > 1 ? part_buf.data<T>() + (bh * parts + part) * 2 * Tk * dh : dk + bh * Tk * dh;
    T* dv_head = parts > 1 ? dk_head + Tk * dh : dv + bh * Tk * dh;
    const int64_t t0 = part_start[size_t(bh * (parts + 1) + part)],
                  t1 = part_start[size_t(bh * (parts + 1) + part + 1)];
    entmax::with_power(alpha, [&](const auto& pw) {
      for (int64_t qt = t0; qt < t1; ++qt) {
        const int64_t i0 = qt * bq, i1 = std::min(i0 + bq, p.Tq), mi = i1 - i0;
        const Mat<T> qi = q.rows<T>(b, h, i0), gi = go.rows<T>(b, h, i0);
        const RowStat<T>* rst = st + bh * p.Tq + i0;
        for (int64_t r = 0; r < mi; ++r) {  // δ = rowsum(dO ∘ Õ)
          const T* grow = go.at<T>(b, h, i0 + r);
          const T* orow = pot + (bh * p.Tq + i0 + r) * dh;
          double acc = 0;
          for (int64_t d = 0; d < dh; ++d) acc += double(grow[d * go.sc]) * double(orow[d]);
          delta[r] = T(acc);
        }
        double gp[256], gplogp[256], plogp[256];  // per row ∂α sums; bq ≤ 256 (checked at setup)
        std::fill(gp, gp + mi, 0.0);
        std::fill(gplogp, gplogp + mi, 0.0);
        std::fill(plogp, plogp + mi, 0.0);
        const uint8_t* tile_bits = bits + (bh * nqt + qt) * nkt;
        for (int64_t jt = 0; jt < nkt; ++jt) {
          if (!tile_bits[jt]) continue;
          const int64_t j0 = jt * bk, nj = std::min(bk, Tk - j0);
          tile_gemm(mi, nj, dh, scale, qi, keys_t<T>(p, k, kt, bh, j0), T(0), P, bk);  // Z = scale Q_i K_jᵀ
          p.apply_mask(P, bk, b, i0, mi, j0, nj, p.classify(b, i0, i1, j0, j0 + nj));
          const int64_t nnz = weights_tile(P, bk, rst, mi, nj, pw, P, Sw, bk, static_cast<T*>(nullptr));  // P over Z
          if (double(nnz) < su.sparse_below * double(mi * nj)) {  // per weight, the same steps as below
            for (int64_t r = 0; r < mi; ++r) {
              const T* grow = go.at<T>(b, h, i0 + r);
              const T* qrow = q.at<T>(b, h, i0 + r);
              T* dqr = dq + (bh * p.Tq + i0 + r) * dh;
              const T dl = delta[r];
              double a = 0, b2 = 0, c2 = 0;
              for_each_nonzero(P + r * bk, nj, [&](int64_t c) {
                const T pv = P[r * bk + c];
                const int64_t j = j0 + c;
                if (need[2]) axpy(dh, pv, grow, dv_head + j * dh);  // dV_j += p dO_r
                if (!need_dp) return;
                const T dp = dot(dh, grow, v.at<T>(b, h, j));  // dP = dO_r · v_j
                if (need_alpha) {
                  const T lp = pv > 0 ? pv * cpu::log_fast(pv) : pv;
                  a += double(dp) * double(pv), b2 += double(dp) * double(lp), c2 += double(lp);
                }
                const T dz = Sw[r * bk + c] * (dp - dl);
                if (need[1]) axpy(dh, scale * dz, qrow, dk_head + j * dh);  // dK_j += scale dZ q_r
                if (need[0]) axpy(dh, scale * dz, k.at<T>(b, h, j), dqr);   // dQ_r += scale dZ k_j
              });
              gp[r] += a, gplogp[r] += b2, plogp[r] += c2;
            }
            continue;
          }
          if (need[2]) tile_gemm(nj, dh, mi, T(1), Mat<T>{P, 1, bk}, gi, T(1), dv_head + j0 * dh, dh);  // dV += Pᵀ dO
          if (!need_dp) continue;
          tile_gemm(mi, nj, dh, T(1), gi, keys_t<T>(p, v, vt, bh, j0), T(0), dP, bk);  // dP = dO_i V_jᵀ
          for (int64_t r = 0; r < mi; ++r) {
            const T* pr = P + r * bk;
            const T* sr = Sw + r * bk;
            T* dr = dP + r * bk;
            const T dl = delta[r];
            if (need_alpha) {
              double a = 0, b2 = 0, c = 0;
#pragma omp simd reduction(+ : a, b2, c)
              for (int64_t x = 0; x < nj; ++x) {
                const T pv = pr[x];
                const T lp = pv > 0 ? pv * cpu::log_fast(pv > 0 ? pv : T(1)) : T(0) * pv;
                a += double(dr[x]) * double(pv);
                b2 += double(dr[x]) * double(lp);
                c += double(lp);
              }
              gp[r] += a, gplogp[r] += b2, plogp[r] += c;
            }
#pragma omp simd simdlen(kLanes <T>)
            for (int64_t x = 0; x < nj; ++x) dr[x] = sr[x] * (dr[x] - dl);  // dZ = s ∘ (dP − δ)
          }
          if (need[1]) tile_gemm(nj, dh, mi, scale, Mat<T>{dP, 1, bk}, qi, T(1), dk_head + j0 * dh, dh);  // dK
          if (need[0])
            tile_gemm(mi, dh, nj, scale, Mat<T>{dP, bk, 1}, k.rows<T>(b, h, j0), T(1), dq + (bh * p.Tq + i0) * dh,
                      dh);  // dQ_i += scale dZ K_j
        }
        if (need_alpha)
          for (int64_t r = 0; r < mi; ++r) {
            const double dl = double(delta[r]);
            double d = beta * beta * (gp[r] - dl) - beta * (gplogp[r] - dl * plogp[r]);
            if (std::isnan(double(rst[r].tau))) d = std::numeric_limits<double>::quiet_NaN();
            else if (rst[r].max == -std::numeric_limits<T>::infinity()) d = 0;
            dalpha_rows[size_t(bh * p.Tq + i0 + r)] = d;
          }
      }
    });
  }
  if (parts > 1) {  // sum the parts of each head in part order
    const T* pb = part_buf.data<T>();
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t part = 0; part < parts; ++part) {
        const T* src = pb + (bh * parts + part) * 2 * Tk * dh;
        T* dks = dk + bh * Tk * dh;
        T* dvs = dv + bh * Tk * dh;
#pragma omp simd
        for (int64_t e = 0; e < Tk * dh; ++e) dks[e] += src[e];
#pragma omp simd
        for (int64_t e = 0; e < Tk * dh; ++e) dvs[e] += src[Tk * dh + e];
      }
  }
  if (need_alpha) {
    std::vector<double> per_head(size_t(p.H), 0.0);
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t i = 0; i < p.Tq; ++i) per_head[size_t(bh % p.H)] += dalpha_rows[size_t(bh * p.Tq + i)];
    gr.dalpha = from_vector(per_head, {p.H}, dt);
  }
  return gr;
}

// clang-format off
const OpDef kEntmaxAttention(
    "entmax_attention",
    "δ = rowsum(g∘Õ), P, s = p^(2-α) on the tiles with weights; dV = Pᵀ g, dZ = s∘(g Vᵀ - δ), dQ = scale dZ K, "
    "dK = scale dZᵀ Q, dα = Σ β²(Σ dP p - δ) - β(Σ dP p log p - δ Σ p log p)",
    {{"1.5-entmax, [2,2,5,3], one tile",
      [](Generator& g) { return Inputs{rn(g, {2, 2, 5, 3}), rn(g, {2, 2, 5, 3}), rn(g, {2, 2, 5, 3})}; },
      [](const Inputs& in) { return entmax_attention(in[0], in[1], in[2], {}, 1.3, {1.5, {}}); }},
     {"1.5-entmax, causal, Tq 5 < Tk 7, tiles 2x3",
      [](Generator& g) { return Inputs{rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 7, 3}), rn(g, {1, 2, 7, 3})}; },
      [](const Inputs& in) {
        ScopedTiles st({2, 3});
        return entmax_attention(in[0], in[1], in[2], {true, {}}, 1.1, {1.5, {}});
      }},
     {"sparsemax, key padding (batch 1 fully padded) + causal, tiles 3x2 run per weight",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 5, 3}), rn(g, {2, 1, 5, 3}), rn(g, {2, 1, 5, 3}),
                      from_vector({0, 1, 0, 0, 1, 1, 1, 1, 1, 1}, {2, 5}, DType::b8)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 2, 2.0});  // every tile per weight
        return entmax_attention(in[0], in[1], in[2], {true, in[3]}, 0.9, {2.0, {}});
      }},
     {"α = 1.25 (bisection), non-contiguous q, k, v, tiles 3x3",
      [](Generator& g) {
        return Inputs{rn(g, {1, 4, 2, 3}).permute({0, 2, 1, 3}), rn_t(g, {1, 2, 4, 3}), rn(g, {1, 2, 4, 6}).narrow(3, 1, 3)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 3});
        return entmax_attention(in[0], in[1], in[2], {}, 1.2, {1.25, {}});
      }},
     {"per-head α [2] ∂/∂α, [2,2,6,3], tiles 2x2 run per weight",
      [](Generator& g) {
        return Inputs{rn(g, {2, 2, 6, 3}), rn(g, {2, 2, 6, 3}), rn(g, {2, 2, 6, 3}), uni(g, {2}, 1.2, 1.9)};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 2, 2.0});  // every tile per weight
        return entmax_attention(in[0], in[1], in[2], {}, 1.4, {0, in[3]});
      }},
     {"per-head α [3] ∂/∂α, causal Tq 6 > Tk 4 (first rows see nothing), tiles 4x3",
      [](Generator& g) {
        return Inputs{rn(g, {1, 3, 6, 2}), rn(g, {1, 3, 4, 2}), rn(g, {1, 3, 4, 2}), uni(g, {3}, 1.3, 2.5)};
      },
      [](const Inputs& in) {
        ScopedTiles st({4, 3});
        return entmax_attention(in[0], in[1], in[2], {true, {}}, 1.5, {0, in[3]});
      }}});
// clang-format on

}  // namespace

Tensor entmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                        const EntmaxAlpha& alpha, EntmaxAttentionStats* stats) {
  const char* name = "entmax_attention";
  check_fused_inputs(name, q, k, v, mask, scale);
  check_alpha(name, alpha, q);
  const entmax_attention_tiles::Tiles tl = effective_tiles();
  if (tl.q > 256) fail<ValueError>(name, "query tile ", tl.q, " is larger than 256");
  auto setup = std::make_shared<Setup>();
  setup->bq = tl.q;
  setup->bk = tl.k;
  setup->sparse_below = tl.sparse_below;
  setup->map = map_of(alpha);
  setup->alpha = alpha.per_head.defined() ? alpha.per_head.to_vector<double>()
                                          : std::vector<double>(size_t(q.size(1)), alpha.value);
  auto plan = std::make_shared<const Plan>(q, k, mask, scale, flash::Tiles{tl.q, tl.k, tl.q, tl.k});
  setup->nqt = (plan->Tq + tl.q - 1) / tl.q;
  setup->nkt = (plan->Tk + tl.k - 1) / tl.k;
  const DType dt = q.dtype();
  const int64_t B = plan->B, H = plan->H, Tq = plan->Tq, dh = plan->dh;
  ForwardOut fo{zeros(q.shape(), dt), zeros(q.shape(), dt), empty({B, H, Tq, 3}, dt), zeros({B, H, Tq}, DType::i64),
                zeros({B, H, setup->nqt, setup->nkt}, DType::b8)};
  const bool empty_problem = q.numel() == 0 || k.numel() == 0;
  if (empty_problem) {
    fo.rowstat = full({B, H, Tq, 3}, 0.0, dt);
  } else {
    dispatch_floating(dt, name,
                      [&]<class T>() { forward_kernel<T>(*plan, *setup, Operand(q), Operand(k), Operand(v), fo); });
  }
  (void)dh;
  if (stats) *stats = {fo.support, fo.tiles, tl.q, tl.k};
  Tensor out = fo.out;
  std::vector<Tensor> inputs{q, k, v};
  if (alpha.per_head.defined()) inputs.push_back(alpha.per_head);
  if (needs_grad(inputs))
    record(out, kEntmaxAttention, inputs,
           [plan, setup, name, empty_problem, sq = SavedTensor(q, name), sk = SavedTensor(k, name),
            sv = SavedTensor(v, name), ot = fo.otilde, rs = fo.rowstat, tiles = fo.tiles,
            n_inputs = inputs.size()](const Tensor& g, const std::vector<bool>& need) {
             const Tensor &qv = sq.get(), &kv = sk.get(), &vv = sv.get();
             std::vector<Tensor> grads(n_inputs);
             if (empty_problem) {
               if (need[0]) grads[0] = zeros_like(qv);
               if (need[1]) grads[1] = zeros_like(kv);
               if (need[2]) grads[2] = zeros_like(vv);
               if (n_inputs > 3 && need[3]) grads[3] = zeros({plan->H}, qv.dtype());
               return grads;
             }
             Grads gr = dispatch_floating(qv.dtype(), name, [&]<class T>() {
               return backward_kernel<T>(*plan, *setup, Operand(qv), Operand(kv), Operand(vv), ot, rs, tiles,
                                         g.dtype() == qv.dtype() ? g : g.to(qv.dtype()), need);
             });
             if (need[0]) grads[0] = gr.dq;
             if (need[1]) grads[1] = gr.dk;
             if (need[2]) grads[2] = gr.dv;
             if (n_inputs > 3 && need[3]) grads[3] = gr.dalpha;
             return grads;
           });
  return out;
}

// ---- the method --------------------------------------------------------------------------------

EntmaxAttention::EntmaxAttention(const Options& opt, int64_t n_heads, DType dtype)
    : opt_(opt), n_heads_(n_heads), support_(size_t(n_heads), 0.0) {
  const char* op = "entmax attention";
  if (!(opt.alpha > 1) || !std::isfinite(opt.alpha)) fail<ValueError>(op, "alpha must be > 1, got ", opt.alpha);
  if (opt.learn_alpha && !(opt.alpha < 2))
    fail<ValueError>(op, "a learned alpha lives in (1, 2) (α = 1 + sigmoid(a)); initial alpha ", opt.alpha,
                     " is outside");
  if (!(opt.temperature > 0) || !std::isfinite(opt.temperature))
    fail<ValueError>(op, "temperature must be finite and > 0, got ", opt.temperature);
  if (opt.learn_alpha) {
    const double a = std::log((opt.alpha - 1) / (2 - opt.alpha));  // sigmoid⁻¹(α − 1)
    alpha_logit_ = &register_parameter("alpha_logit", full({n_heads}, a, dtype));
  }
  if (opt.learn_temperature)
    log_temperature_ = &register_parameter("log_temperature", full({n_heads}, std::log(opt.temperature), dtype));
}

EntmaxAlpha EntmaxAttention::current_alpha() const {
  if (!opt_.learn_alpha) return {opt_.alpha, {}};
  return {0, add(sigmoid(*alpha_logit_), scalar_tensor(1.0, alpha_logit_->dtype()))};
}

Tensor EntmaxAttention::alpha() const {
  NoGradGuard ng;
  return opt_.learn_alpha ? current_alpha().per_head.detach() : full({n_heads_}, opt_.alpha, DType::f64);
}

Tensor EntmaxAttention::temperature() const {
  NoGradGuard ng;
  return opt_.learn_temperature ? exp(*log_temperature_).detach() : full({n_heads_}, opt_.temperature, DType::f64);
}

std::map<std::string, std::vector<double>> EntmaxAttention::stats() const {
  std::map<std::string, std::vector<double>> s{{"support", support_}, {"alpha", alpha().to_vector<double>()}};
  if (opt_.learn_temperature) s["temperature"] = temperature().to_vector<double>();
  return s;
}

Tensor EntmaxAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  double scale = opt_.scale;
  Tensor qs = q;
  if (opt_.learn_temperature) {
    qs = mul(q, exp(*log_temperature_).reshape({1, n_heads_, 1, 1}));  // t_h q·k = (t_h q)·k
  } else {
    scale *= opt_.temperature;
  }
  const EntmaxAlpha alpha = current_alpha();
  if (record_internals) {  // what attention was computed from: Sparsefinder's teacher extraction reads it
    internals["q"] = qs.detach();
    internals["k"] = k.detach();
  }
  if (graph_provider) return forward_on_graph(qs, k, v, mask, scale, alpha);
  EntmaxAttentionStats st;
  Tensor weights;
  Tensor out;
  if (opt_.impl == AttentionImpl::fused) {
    out = entmax_attention(qs, k, v, mask, scale, alpha, &st);
    if (record_internals) {
      NoGradGuard ng;
      EntmaxAlpha a{alpha.value, alpha.per_head.defined() ? alpha.per_head.detach() : Tensor()};
      entmax_attention_composite(qs.detach(), k.detach(), v.detach(), mask, scale, a, &weights);
    }
  } else {
    out = entmax_attention_composite(qs, k, v, mask, scale, alpha, &weights);
  }
  // The mean support per head over the queries that see any key (the weights' count when composite).
  {
    NoGradGuard ng;
    Tensor support =
        st.support.defined() ? st.support : sum(gt(weights, zeros({}, weights.dtype())).to(DType::f64), -1);
    const std::vector<int64_t> s = support.to(DType::i64).to_vector<int64_t>();
    const int64_t B = q.size(0), T = q.size(2);
    for (int64_t h = 0; h < n_heads_; ++h) {
      double acc = 0;
      int64_t rows = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < T; ++i) {
          const int64_t n = s[size_t((b * n_heads_ + h) * T + i)];
          acc += double(n), rows += n > 0;
        }
      support_[size_t(h)] = rows ? acc / double(rows) : 0.0;
    }
    if (record_internals) {
      internals["attn"] = weights.detach();
      internals["support"] = support.to(DType::i64);
      internals["alpha"] =
          alpha.per_head.defined() ? alpha.per_head.detach() : full({n_heads_}, alpha.value, q.dtype());
      internals["temperature"] = temperature().to(q.dtype());
      if (st.tiles.defined()) internals["tiles"] = st.tiles;
    }
  }
  return out;
}

double EntmaxAttention::score_scale() const {
  return opt_.learn_temperature ? opt_.scale : opt_.scale * opt_.temperature;
}

Tensor EntmaxAttention::forward_on_graph(const Tensor& qs, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                         double scale, const EntmaxAlpha& alpha) {
  if (alpha.per_head.defined())
    fail<ValueError>("entmax attention", "attention on a predicted graph takes a fixed alpha, not a learned one");
  const std::shared_ptr<const AttentionGraph> graph = graph_provider(qs, k, mask);
  if (!graph) fail<ValueError>("entmax attention", "the graph provider returned no graph");
  // Only pairs the mask lets through: a predictor's graph must not open the future or padding.
  const auto visible = std::make_shared<const AttentionGraph>(restrict_to_visible(*graph, mask));
  Tensor out = graph_entmax_attention(qs, k, v, visible, alpha.value, scale);
  // The mean number of computed pairs per query, per head (the support is not known here).
  for (int64_t h = 0; h < n_heads_; ++h) {
    double acc = 0;
    int64_t rows = 0;
    for (int64_t b = 0; b < visible->B; ++b)
      for (int64_t i = 0; i < visible->Tq; ++i) {
        const int64_t row = (b * n_heads_ + h) * visible->Tq + i, n = visible->end(row) - visible->begin(row);
        acc += double(n), rows += n > 0;
      }
    support_[size_t(h)] = rows ? acc / double(rows) : 0.0;
  }
  if (record_internals) internals["graph"] = visible->to_mask();
  return out;
}

AttentionBuilder parse_entmax_attention(ConfigSection& cfg) {
  EntmaxAttention::Options o;
  o.alpha = cfg.number("alpha", 1.5, NumberRange::above(1));  // α = 1 is softmax attention
  o.learn_alpha = cfg.boolean("learn_alpha", false);
  o.temperature = cfg.number("temperature", 1.0, NumberRange::above(0));
  o.learn_temperature = cfg.boolean("learn_temperature", false);
  if (o.learn_alpha && !(o.alpha < 2))
    cfg.fail("alpha", "a learned alpha stays in (1, 2) (α = 1 + sigmoid(a)); got initial alpha ", o.alpha);
  const std::optional<double> scale = parse_attention_scale(cfg);
  o.impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    EntmaxAttention::Options opt = o;
    opt.scale = attention_scale(scale, ctx);
    return std::make_shared<EntmaxAttention>(opt, ctx.n_heads, ctx.dtype);
  };
}

}  // namespace attnlab

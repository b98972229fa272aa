// Fused, tiled softmax attention (FlashAttention-2, Dao 2023) for the CPU. Notation as in the paper:
// S = scale · Q Kᵀ (masked with -inf), P = softmax_rows(S), O = P V, LSE = logsumexp_rows(S).
//
// Forward: work items are (batch·head, query tile); each walks the key/value tiles of its segment,
// keeping a running row max m and row sum l, and rescales its output rows when m grows:
//   m' = max(m, rowmax S_j),  P_j = exp(S_j - m'),  l' = e^(m-m') l + rowsum P_j,  O' = e^(m-m') O + P_j V_j.
// At the end O /= l and LSE = m + log l. Key tiles entirely above the causal diagonal (or entirely
// padded) are skipped.
// Backward (key-tile major, so dK and dV of a key tile have one writer): D = rowsum(dO ∘ O), and per
// (query tile i, key tile j): P = exp(S - LSE), dV_j += Pᵀ dO_i, dP = dO_i V_jᵀ, dS = P ∘ (dP - D_i),
// dK_j += scale dSᵀ Q_i, dQ_i += scale dS K_j. The dQ rows of a (batch·head, segment) group are
// shared by its key tiles: with enough groups each runs whole on one thread; otherwise items are
// split statically by cost and a group cut between threads sums per-thread buffers in thread order.
// Either way the result does not depend on scheduling.
//
// The loops run over "segments", rectangles of queries [q0, q1) × keys [k0, k1); global attention is
// one. Block-local attention, which used one per block, is a client of the block-sparse engine now
// (attention/block_sparse.h): a global layout would be one key block per head there, and this kernel's
// backward splits a head's key tiles among threads with per-thread dQ buffers, which the engine's
// schedule does not (docs/block-sparse.md).
//
// Tile products (attention/tiles.h): f32 with AVX-512 uses a register-blocked kernel (no per-call
// packing: Kᵀ and Vᵀ are packed once per head or key tile), ~1.3x faster end to end than cblas on the
// same tiles (cblas repacks both operands on every call); f64, and f32 without AVX-512, call cblas.
#include "attention/flash.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>

#include "attention/tiles.h"
#include "autograd/cases.h"
#include "autograd/node.h"

namespace attnlab {
using namespace cases;

// ---- tile configuration ----------------------------------------------------------------------

using flash::ScopedTiles;

namespace {
constexpr flash::Tiles kDefaultTiles{64, 1024, 64, 128};
flash::Tiles g_tiles{};  // 0 = default

flash::Tiles effective_tiles() {
  flash::Tiles t = g_tiles;
  if (t.fwd_q <= 0) t.fwd_q = kDefaultTiles.fwd_q;
  if (t.fwd_k <= 0) t.fwd_k = kDefaultTiles.fwd_k;
  if (t.bwd_q <= 0) t.bwd_q = kDefaultTiles.bwd_q;
  if (t.bwd_k <= 0) t.bwd_k = kDefaultTiles.bwd_k;
  return t;
}
}  // namespace

namespace flash {
void set_tiles(const Tiles& t) { g_tiles = t; }
Tiles tiles() { return effective_tiles(); }
thread_local Tiles g_last_backward_tiles{};
Tiles last_backward_tiles() { return g_last_backward_tiles; }
const char* f32_tile_kernel() { return ATTNLAB_FLASH_AVX512 ? "avx512" : "blas"; }
}  // namespace flash

namespace {

using namespace tiled;

// ---- forward -----------------------------------------------------------------------------------

struct QTile {
  int64_t seg, i0, i1;
};

template <class T>
void forward_kernel(const Plan& p, const Operand& q, const Operand& k, const Operand& v, T* out, T* lse) {
  const flash::Tiles tl = p.tiles;
  const int64_t bq = tl.fwd_q, bk = tl.fwd_k, dh = p.dh, BH = p.B * p.H;
  std::vector<QTile> tiles;
  double work = 0;
  for (size_t s = 0; s < p.segs.size(); ++s)
    for (int64_t i0 = p.segs[s].q0; i0 < p.segs[s].q1; i0 += bq) {
      const int64_t i1 = std::min(i0 + bq, p.segs[s].q1);
      tiles.push_back({int64_t(s), i0, i1});
      work += double(i1 - i0) * double(p.key_end(p.segs[s], i1) - p.segs[s].k0) * double(2 * dh);
    }
  const int64_t nt_tiles = int64_t(tiles.size()), items = BH * nt_tiles;
  const bool par = run_parallel(work * double(BH));
  const int nthreads = par ? omp_get_max_threads() : 1;
  // The register kernel reads Kᵀ row by row. When several query tiles share a key tile, pack it once
  // per head, [BH, dh, Tk] (the size of K); when each key tile meets one query tile (block-local),
  // pack each tile as it is used instead, saving a pass over K.
  bool shared_keys = false;
  for (const Segment& seg : p.segs) shared_keys = shared_keys || seg.q1 - seg.q0 > bq;
  const Tensor kt = shared_keys ? k.pack_heads_t<T>(p.B, p.H, p.Tk, par) : Tensor();
  const T* pkt = kt.defined() ? kt.data<T>() : nullptr;
  const bool pack_tiles = kRegisterKernel<T> && !kt.defined();
  // Score tile, running max, running sum, and a packed K_jᵀ tile when packing per tile.
  const int64_t per_thread = bq * bk + 2 * bq + (pack_tiles ? dh * bk : 0);
  Tensor scratch = empty({nthreads, per_thread}, dtype_of<T>());
  T* scratch0 = scratch.data<T>();
  const T scale = T(p.scale), ninf = -std::numeric_limits<T>::infinity();

#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nthreads)
  for (int64_t it = 0; it < items; ++it) {
    T* S = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
    T* m = S + bq * bk;
    T* l = m + bq;
    const int64_t bh = it / nt_tiles, b = bh / p.H, h = bh % p.H;
    const QTile& t = tiles[size_t(it % nt_tiles)];
    const Segment& seg = p.segs[size_t(t.seg)];
    const int64_t mi = t.i1 - t.i0;
    T* o = out + (bh * p.Tq + t.i0) * dh;
    bool first = true;  // the first visited key tile writes O (beta = 0) instead of rescaling it
    std::fill(m, m + mi, ninf);
    std::fill(l, l + mi, T(0));
    const Mat<T> qi = q.rows<T>(b, h, t.i0);
    const int64_t kend = p.key_end(seg, t.i1);
    for (int64_t j0 = seg.k0; j0 < kend; j0 += bk) {
      const int64_t j1 = std::min(j0 + bk, kend), nj = j1 - j0;
      const TileMask mk = p.classify(b, t.i0, t.i1, j0, j1);
      if (mk.skip) continue;
      Mat<T> kjt = pkt ? Mat<T>{pkt + bh * dh * p.Tk + j0, p.Tk, 1} : k.rows_t<T>(b, h, j0);
      if (pack_tiles) {
        k.pack_t<T>(b, h, j0, nj, l + bq, bk);
        kjt = {l + bq, bk, 1};
      }
      tile_gemm(mi, nj, dh, scale, qi, kjt, T(0), S, bk);  // S = scale Q_i K_jᵀ
      p.apply_mask(S, bk, b, t.i0, mi, j0, nj, mk);
      Softmax::absorb(S, bk, mi, nj, m, l, o, dh, first);
      tile_gemm(mi, dh, nj, T(1), Mat<T>{S, bk, 1}, v.rows<T>(b, h, j0), first ? T(0) : T(1), o, dh);  // O_i += P V_j
      first = false;
    }
    Softmax::finish(o, dh, mi, m, l, lse + bh * p.Tq + t.i0, !first);
  }
}

// ---- backward ----------------------------------------------------------------------------------

struct KItem {
  int64_t bh, seg, j0, j1;
};

template <class T>
FusedGrads backward_kernel(const Plan& p, const Operand& q, const Operand& k, const Operand& v, const Tensor& out,
                           const Tensor& lse_t, const Tensor& g, const std::vector<bool>& need) {
  const flash::Tiles tl = p.tiles;
  flash::g_last_backward_tiles = tl;
  const int64_t bq = tl.bwd_q, bk = tl.bwd_k, dh = p.dh, nseg = int64_t(p.segs.size()), BH = p.B * p.H;
  const int64_t G = BH * nseg;  // groups (bh, segment): the items that add into the same dQ rows
  const DType dt = dtype_of<T>();
  FusedGrads gr{empty({p.B, p.H, p.Tq, dh}, dt), empty({p.B, p.H, p.Tk, dh}, dt), empty({p.B, p.H, p.Tk, dh}, dt)};
  const Operand go(g);
  const T* po = out.data<T>();
  const T* lse = lse_t.data<T>();
  T *dq = gr.dq.data<T>(), *dk = gr.dk.data<T>(), *dv = gr.dv.data<T>();

  // Items in (bh, segment, key tile) order; group gi owns items [group_start[gi], group_start[gi + 1]).
  std::vector<KItem> items;
  std::vector<double> cost;
  std::vector<int64_t> group_start;
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t s = 0; s < nseg; ++s) {
      group_start.push_back(int64_t(items.size()));
      const Segment& seg = p.segs[size_t(s)];
      for (int64_t j0 = seg.k0; j0 < seg.k1; j0 += bk) {
        const int64_t j1 = std::min(j0 + bk, seg.k1);
        // Causal: query rows i with i + shift >= j0 see this tile.
        const int64_t first_row = p.causal ? std::clamp(j0 - p.shift, seg.q0, seg.q1) : seg.q0;
        items.push_back({bh, s, j0, j1});
        cost.push_back(double(seg.q1 - first_row) * double(j1 - j0) * double(4 * dh) + 1.0);
      }
    }
  group_start.push_back(int64_t(items.size()));
  const int64_t n_items = int64_t(items.size());
  double total = 0;
  for (double c : cost) total += c;
  const bool par = run_parallel(total);
  const int nt = par ? omp_get_max_threads() : 1;

  // Rows no item writes: keys outside every segment, queries of segments without keys.
  {
    int64_t covered = 0;
    std::vector<std::pair<int64_t, int64_t>> gaps;
    for (const Segment& seg : p.segs) {
      if (seg.k0 > covered) gaps.push_back({covered, seg.k0});
      covered = std::max(covered, seg.k1);
    }
    if (covered < p.Tk) gaps.push_back({covered, p.Tk});
    for (int64_t bh = 0; bh < BH; ++bh) {
      for (auto [a, e] : gaps) {
        std::fill(dk + (bh * p.Tk + a) * dh, dk + (bh * p.Tk + e) * dh, T(0));
        std::fill(dv + (bh * p.Tk + a) * dh, dv + (bh * p.Tk + e) * dh, T(0));
      }
      for (const Segment& seg : p.segs)
        if (seg.k0 == seg.k1) std::fill(dq + (bh * p.Tq + seg.q0) * dh, dq + (bh * p.Tq + seg.q1) * dh, T(0));
    }
  }

  // Per thread: P (over S) and dP (then dS), [bq, bk]; for the register kernel also K_jᵀ and V_jᵀ, [dh, bk].
  // Then D = rowsum(dO ∘ O) for the rows of the thread's current group (computed when it starts,
  // while those rows are about to be used).
  const int64_t packed = kRegisterKernel<T> ? dh * bk : 0;
  int64_t max_rows = 1;
  for (const Segment& seg : p.segs) max_rows = std::max(max_rows, seg.q1 - seg.q0);
  const int64_t per_thread = 2 * bq * bk + 2 * packed + max_rows;
  Tensor scratch = empty({nt, per_thread}, dt);
  T* scratch0 = scratch.data<T>();
  const T scale = T(p.scale);

  // One key tile against every query tile of its segment; dq_rows is the segment's first dQ row and
  // q_written[t] says whether its query tile t already holds a partial sum (else beta = 0 writes it).
  auto run_item = [&](const KItem& it, T* dq_rows, char* q_written, T* P) {
    T* dP = P + bq * bk;
    const T* D = dP + bq * bk + 2 * packed;  // D of the group's rows, from row seg.q0
    const int64_t b = it.bh / p.H, h = it.bh % p.H, nj = it.j1 - it.j0;
    const Segment& seg = p.segs[size_t(it.seg)];
    Mat<T> kjt = k.rows_t<T>(b, h, it.j0), vjt = v.rows_t<T>(b, h, it.j0);
    if constexpr (kRegisterKernel<T>) {
      T* pk = dP + bq * bk;
      k.pack_t<T>(b, h, it.j0, nj, pk, bk);
      v.pack_t<T>(b, h, it.j0, nj, pk + packed, bk);
      kjt = {pk, bk, 1};
      vjt = {pk + packed, bk, 1};
    }
    const Mat<T> kj = k.rows<T>(b, h, it.j0);
    T* dk_rows = dk + (it.bh * p.Tk + it.j0) * dh;
    T* dv_rows = dv + (it.bh * p.Tk + it.j0) * dh;
    bool kv_written = false;
    for (int64_t i0 = seg.q0; i0 < seg.q1; i0 += bq) {
      const int64_t i1 = std::min(i0 + bq, seg.q1), mi = i1 - i0;
      const TileMask mk = p.classify(b, i0, i1, it.j0, it.j1);
      if (mk.skip) continue;
      const Mat<T> qi = q.rows<T>(b, h, i0), gi = go.rows<T>(b, h, i0);
      tile_gemm(mi, nj, dh, scale, qi, kjt, T(0), P, bk);  // S = scale Q_i K_jᵀ
      p.apply_mask(P, bk, b, i0, mi, it.j0, nj, mk);
      Softmax::weights(P, bk, mi, nj, lse + it.bh * p.Tq + i0);
      const Mat<T> Pt{P, 1, bk}, dSt{dP, 1, bk};
      const T beta_kv = kv_written ? T(1) : T(0);
      kv_written = true;
      if (need[2]) tile_gemm(nj, dh, mi, T(1), Pt, gi, beta_kv, dv_rows, dh);  // dV_j += Pᵀ dO_i
      if (!need[0] && !need[1]) continue;
      tile_gemm(mi, nj, dh, T(1), gi, vjt, T(0), dP, bk);  // dP = dO_i V_jᵀ
      Softmax::dscores(P, dP, bk, mi, nj, D + (i0 - seg.q0));
      if (need[1]) tile_gemm(nj, dh, mi, scale, dSt, qi, beta_kv, dk_rows, dh);  // dK_j += scale dSᵀ Q_i
      if (need[0]) {                                                             // dQ_i += scale dS K_j
        char& written = q_written[(i0 - seg.q0) / bq];
        tile_gemm(mi, dh, nj, scale, Mat<T>{dP, bk, 1}, kj, written ? T(1) : T(0), dq_rows + (i0 - seg.q0) * dh, dh);
        written = 1;
      }
    }
    if (!kv_written) {  // every query tile skipped this key tile
      std::fill(dk_rows, dk_rows + nj * dh, T(0));
      std::fill(dv_rows, dv_rows + nj * dh, T(0));
    }
  };
  int64_t max_qtiles = 1;
  for (const Segment& seg : p.segs) max_qtiles = std::max(max_qtiles, (seg.q1 - seg.q0 + bq - 1) / bq);
  // A group starts on a thread: nothing of its dQ written yet; D of its rows.
  auto start_group = [&](int64_t gi, T* P, char* q_written) {
    std::fill(q_written, q_written + max_qtiles, 0);
    const Segment& seg = p.segs[size_t(gi % nseg)];
    const int64_t bh = gi / nseg, b = bh / p.H, h = bh % p.H, gs = go.sc;
    T* D = P + 2 * bq * bk + 2 * packed;
    for (int64_t i = seg.q0; i < seg.q1; ++i) {
      D[i - seg.q0] = Softmax::row_term(go.at<T>(b, h, i), gs, po + (bh * p.Tq + i) * dh, dh);
    }
  };
  // dQ rows of a group (or of a thread's share of it) that no item wrote are zero.
  auto finish_group = [&](int64_t gi, T* dq_rows, const char* q_written) {
    const Segment& seg = p.segs[size_t(gi % nseg)];
    for (int64_t t = 0; t * bq < seg.q1 - seg.q0; ++t)
      if (!q_written[t]) std::fill(dq_rows + t * bq * dh, dq_rows + std::min((t + 1) * bq, seg.q1 - seg.q0) * dh, T(0));
  };

  auto group_rows = [&](int64_t gi) { return (p.segs[size_t(gi % nseg)].q1 - p.segs[size_t(gi % nseg)].q0) * dh; };
  auto group_dq = [&](int64_t gi) { return dq + ((gi / nseg) * p.Tq + p.segs[size_t(gi % nseg)].q0) * dh; };

  if (G >= 2 * nt) {
    // Enough groups: each runs whole on one thread (dynamic: robust to a busy core), in item order.
#pragma omp parallel if (par) num_threads(nt)
    {
      std::vector<char> q_written(static_cast<size_t>(max_qtiles));
      T* P = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
#pragma omp for schedule(dynamic, 1)
      for (int64_t gi = 0; gi < G; ++gi) {
        if (group_start[size_t(gi)] == group_start[size_t(gi) + 1]) continue;  // zeroed above
        T* dq_rows = group_dq(gi);
        start_group(gi, P, q_written.data());
        for (int64_t i = group_start[size_t(gi)]; i < group_start[size_t(gi) + 1]; ++i)
          run_item(items[size_t(i)], dq_rows, q_written.data(), P);
        if (need[0]) finish_group(gi, dq_rows, q_written.data());
      }
    }
    return gr;
  }

  // Few groups: split the items statically into contiguous ranges of equal cost. A group split
  // between threads accumulates its dQ in one private buffer per thread, summed in thread order.
  std::vector<int64_t> start(size_t(nt) + 1, n_items);
  start[0] = 0;
  {
    double acc = 0;
    int t = 1;
    for (int64_t i = 0; i < n_items && t < nt; ++i) {
      acc += cost[size_t(i)];
      while (t < nt && acc >= total * double(t) / double(nt)) start[size_t(t++)] = i + 1;
    }
  }
  std::vector<int64_t> group_of(static_cast<size_t>(n_items));
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t i = group_start[size_t(gi)]; i < group_start[size_t(gi) + 1]; ++i) group_of[size_t(i)] = gi;
  std::vector<char> shared(size_t(G), 0);
  for (int t = 1; t < nt; ++t) {
    const int64_t cut = start[size_t(t)];
    if (cut > 0 && cut < n_items && group_of[size_t(cut - 1)] == group_of[size_t(cut)])
      shared[size_t(group_of[size_t(cut)])] = 1;
  }
  struct Partial {
    int t;
    int64_t group, offset;
  };
  std::vector<Partial> partials;  // in thread order
  int64_t partial_elems = 0;
  for (int t = 0; t < nt; ++t) {
    const int64_t a = start[size_t(t)], e = start[size_t(t) + 1];
    if (a >= e) continue;
    for (int64_t gi : {group_of[size_t(a)], group_of[size_t(e - 1)]}) {
      if (!shared[size_t(gi)] || (!partials.empty() && partials.back().t == t && partials.back().group == gi)) continue;
      partials.push_back({t, gi, partial_elems});
      partial_elems += group_rows(gi);
    }
  }
  Tensor partial_buf = empty({std::max<int64_t>(partial_elems, 1)}, dt);
  T* pbuf = partial_buf.data<T>();

  cpu::parallel_parts(nt, [&](int t) {
    T* P = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
    std::vector<char> q_written(static_cast<size_t>(max_qtiles));
    {
      T* dq_rows = nullptr;
      const int64_t a = start[size_t(t)], e = start[size_t(t) + 1];
      for (int64_t i = a; i < e; ++i) {
        const int64_t gi = group_of[size_t(i)];
        if (i == a || gi != group_of[size_t(i - 1)]) {  // first item of a group here
          dq_rows = group_dq(gi);
          for (const Partial& pa : partials)
            if (pa.t == t && pa.group == gi) dq_rows = pbuf + pa.offset;
          start_group(gi, P, q_written.data());
        }
        run_item(items[size_t(i)], dq_rows, q_written.data(), P);
        if (need[0] && (i + 1 == e || group_of[size_t(i + 1)] != gi)) finish_group(gi, dq_rows, q_written.data());
      }
    }
  });
  std::stable_sort(partials.begin(), partials.end(),
                   [](const Partial& a, const Partial& b) { return a.group < b.group; });
  for (size_t i = 0; i < partials.size(); ++i) {
    const Partial& pa = partials[i];
    const int64_t n = group_rows(pa.group);
    T* dst = group_dq(pa.group);
    const T* src = pbuf + pa.offset;
    if (i == 0 || partials[i - 1].group != pa.group) {
      std::copy(src, src + n, dst);
    } else {
#pragma omp simd
      for (int64_t e = 0; e < n; ++e) dst[e] += src[e];
    }
  }
  return gr;
}

// ---- the op ------------------------------------------------------------------------------------

Tensor fused_attention(const OpDef& op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                       double scale, Tensor* lse_out) {
  const char* name = op.name.c_str();
  check_fused_inputs(name, q, k, v, mask, scale);
  auto plan = std::make_shared<const Plan>(q, k, mask, scale, effective_tiles());
  const DType dt = q.dtype();
  const bool empty_problem = q.numel() == 0 || k.numel() == 0;
  // Every row is written by the kernel; an empty problem is zeros (and the LSE of nothing).
  Tensor out = empty_problem ? zeros(q.shape(), dt) : empty(q.shape(), dt);
  const Shape lse_shape{plan->B, plan->H, plan->Tq};
  Tensor lse = empty_problem ? full(lse_shape, -INFINITY, dt) : empty(lse_shape, dt);
  if (!empty_problem)
    dispatch_floating(dt, name, [&]<class T>() {
      forward_kernel<T>(*plan, Operand(q), Operand(k), Operand(v), out.data<T>(), lse.data<T>());
    });
  if (lse_out) *lse_out = lse;
  record_fused(op, out, q, k, v, lse, empty_problem,
               [plan, name](const Tensor& qv, const Tensor& kv, const Tensor& vv, const Tensor& o, const Tensor& l,
                            const Tensor& g, const std::vector<bool>& need) {
                 return dispatch_floating(g.dtype(), name, [&]<class T>() {
                   return backward_kernel<T>(*plan, Operand(qv), Operand(kv), Operand(vv), o, l, g, need);
                 });
               });
  return out;
}

// ---- registration --------------------------------------------------------------------------------

Tensor padding_mask(std::vector<double> v, int64_t B, int64_t T) { return from_vector(v, {B, T}, DType::b8); }

static const OpDef kFlashAttention(
    "flash_attention",
    "D = rowsum(g∘O), P = exp(S - LSE); dV = Pᵀ g, dS = P∘(g Vᵀ - D), dQ = scale dS K, dK = scale dSᵀ Q",
    {{"[2,2,5,3] no mask, one tile",
      [](Generator& g) {
        return Inputs{rn(g, {2, 2, 5, 3}), rn(g, {2, 2, 5, 3}), rn(g, {2, 2, 5, 3})};
      },
      [](const Inputs& in) { return flash_attention(in[0], in[1], in[2], {}, 0.6); }},
     {"causal, Tq 5 < Tk 7, tiles 2x3 (n not a multiple of the tile)",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 7, 3}), rn(g, {1, 2, 7, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 3, 2, 3});
        return flash_attention(in[0], in[1], in[2], {true, {}}, 0.7);
      }},
     {"causal, Tq 6 > Tk 4 (first rows see nothing), tiles 4x3",
      [](Generator& g) {
        return Inputs{rn(g, {1, 1, 6, 2}), rn(g, {1, 1, 4, 2}), rn(g, {1, 1, 4, 2})};
      },
      [](const Inputs& in) {
        ScopedTiles st({4, 3, 4, 3});
        return flash_attention(in[0], in[1], in[2], {true, {}}, 0.8);
      }},
     {"key padding (batch 1 fully padded) + causal, tiles 3x2",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 5, 3}), rn(g, {2, 1, 5, 3}), rn(g, {2, 1, 5, 3}),
                      padding_mask({0, 1, 0, 0, 1, 1, 1, 1, 1, 1}, 2, 5)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 2, 3, 2});
        return flash_attention(in[0], in[1], in[2], {true, in[3]}, 0.5);
      }},
     {"[2,4,5,3] (8 head groups: each runs whole on a thread), tiles 2x2",
      [](Generator& g) {
        return Inputs{rn(g, {2, 4, 5, 3}), rn(g, {2, 4, 5, 3}), rn(g, {2, 4, 5, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 2, 2, 2});
        return flash_attention(in[0], in[1], in[2], {true, {}}, 0.6);
      }},
     {"non-contiguous q, k, v (transposed and strided views)",
      [](Generator& g) {
        return Inputs{rn(g, {1, 4, 2, 3}).permute({0, 2, 1, 3}), rn_t(g, {1, 2, 4, 3}),
                      rn(g, {1, 2, 4, 6}).narrow(3, 1, 3)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 3, 3, 3});
        return flash_attention(in[0], in[1], in[2], {}, 0.9);
      }}});

}  // namespace

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                       Tensor* lse_out) {
  return fused_attention(kFlashAttention, q, k, v, mask, scale, lse_out);
}

}  // namespace attnlab

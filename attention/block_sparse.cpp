// The block-sparse attention engine: the tiled online softmax (FlashAttention-2) over the (query
// block, key block) pairs of a Layout. Three parts, each readable alone: the forward (one work item per
// query tile, streaming over its block's entries), the backward (one work item per key block chunk,
// streaming over the query blocks that read it), and the scheduling that makes every output element
// have exactly one writer, so that results do not depend on the thread count. The normaliser (softmax
// today) is a template parameter with the interface of tiled::Softmax. Derivation: docs/block-sparse.md.
#include "attention/block_sparse.h"

#include <algorithm>
#include <memory>

#include "attention/tiles.h"
#include "autograd/cases.h"
#include "autograd/node.h"

namespace attnlab {
using namespace cases;

using flash::ScopedTiles;

namespace {
using namespace tiled;
using block_sparse::BlockMask;
using block_sparse::Entry;
using block_sparse::Layout;

// Everything a call needs besides the tensors: the layout, the masks (Plan: padding counts, positions,
// tile classification) and the tile sizes in force at the forward.
struct Call {
  Layout layout;
  Plan plan;
  Call(Layout l, const Tensor& q, const Tensor& k, const AttentionMask& mask, double scale)
      : layout(std::move(l)), plan(q, k, mask, scale, flash::tiles()) {}
  int64_t key_end(const Entry& e, int64_t i1) const {  // one past the last key of e that rows < i1 may see
    const int64_t k0 = layout.k_bounds[size_t(e.block)], k1 = layout.k_bounds[size_t(e.block) + 1];
    return e.mask == BlockMask::causal ? std::clamp(i1 + plan.shift, k0, k1) : k1;
  }
};

// ---- scheduling ---------------------------------------------------------------------------------

// Forward items: the query tiles of every query block (for each batch·head). Each writes its own
// output rows: any order, any thread.
struct QTile {
  int64_t qblock, i0, i1;
};

// Backward items: a chunk [j0, j1) of one key block (for each batch·head). Chunks are whole key blocks
// unless there are too few of them to share among threads; then a key block is cut into at most
// kMaxCuts chunks of whole backward key tiles (each chunk's dQ contribution takes a slot, so the cap
// bounds the slots at kMaxCuts times the rows reading the block). The choice depends on the shapes
// only, never on the thread count. An item writes dK and dV of its keys
// and, for each entry reading its key block, that entry's dQ contribution: straight into dQ when the
// query block has no other contributor (block-local), else into a slot of its own. Slots are summed
// afterwards in entry order, then chunk order: every element has one writer and a fixed summation order.
struct KChunk {
  int64_t kblock, j0, j1, index;  // index: the chunk's rank within its key block
};

constexpr int64_t kMinChunks = 64, kMaxCuts = 8;

struct Schedule {
  std::vector<QTile> qtiles;
  std::vector<KChunk> chunks;
  std::vector<int64_t> chunks_of;     // [nk]: chunks per key block
  std::vector<int64_t> contributors;  // [nq]: chunks that add into each query block's dQ
  std::vector<int64_t> slot_start;    // [entries]: first slot row of each entry's chunk 0, or -1 (direct)
  int64_t slot_rows = 0;              // rows of dQ slots per batch·head
  double fwd_work = 0, bwd_work = 0;  // flops per batch·head

  Schedule(const Call& c, int64_t BH) {
    const Layout& L = c.layout;
    const flash::Tiles& t = c.plan.tiles;
    const int64_t nq = L.q_blocks(), nk = L.k_blocks(), dh = c.plan.dh;
    auto rows = [&](int64_t i) { return L.q_bounds[size_t(i) + 1] - L.q_bounds[size_t(i)]; };
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t i0 = L.q_bounds[size_t(i)]; i0 < L.q_bounds[size_t(i) + 1]; i0 += t.fwd_q) {
        const int64_t i1 = std::min(i0 + t.fwd_q, L.q_bounds[size_t(i) + 1]);
        qtiles.push_back({i, i0, i1});
        for (int64_t e = L.row_start[size_t(i)]; e < L.row_start[size_t(i) + 1]; ++e)
          fwd_work += double(i1 - i0) *
                      double(c.key_end(L.entries[size_t(e)], i1) - L.k_bounds[size_t(L.entries[size_t(e)].block)]) *
                      double(2 * dh);
      }
    const bool split = BH * nk < kMinChunks;
    chunks_of.assign(size_t(nk), 0);
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t k0 = L.k_bounds[size_t(j)], k1 = L.k_bounds[size_t(j) + 1];
      const int64_t key_tiles = (k1 - k0 + t.bwd_k - 1) / t.bwd_k;
      const int64_t step =
          split ? t.bwd_k * std::max<int64_t>(1, (key_tiles + kMaxCuts - 1) / kMaxCuts) : std::max<int64_t>(k1 - k0, 1);
      for (int64_t j0 = k0; j0 < k1 || (j0 == k0 && k0 == k1); j0 += step) {
        chunks.push_back({j, j0, std::min(j0 + step, k1), chunks_of[size_t(j)]++});
        if (k0 == k1) break;
      }
      for (int64_t p = L.col_start[size_t(j)]; p < L.col_start[size_t(j) + 1]; ++p)
        bwd_work += double(rows(L.entry_row[size_t(L.col_entries[size_t(p)])])) * double(k1 - k0) * double(4 * dh);
    }
    contributors.assign(size_t(nq), 0);
    for (size_t e = 0; e < L.entries.size(); ++e)
      contributors[size_t(L.entry_row[e])] += chunks_of[size_t(L.entries[e].block)];
    slot_start.assign(L.entries.size(), -1);
    for (size_t e = 0; e < L.entries.size(); ++e) {
      const int64_t i = L.entry_row[e];
      if (contributors[size_t(i)] <= 1) continue;
      slot_start[e] = slot_rows;
      slot_rows += chunks_of[size_t(L.entries[e].block)] * rows(i);
    }
  }
};

// ---- forward ------------------------------------------------------------------------------------

// O and LSE of one query tile: the online normaliser over the key tiles of its block's entries, in
// list order. S is [bq, bk] scratch, m and l [bq], kpack [dh, bk] (packed K_jᵀ) or null.
template <class T, class Norm>
void forward_tile(const Call& c, const QTile& t, int64_t bh, const Operand& q, const Operand& k, const Operand& v,
                  const T* kt_head, T* S, T* m, T* l, T* kpack, T* o, T* lse) {
  const Plan& p = c.plan;
  const Layout& L = c.layout;
  const int64_t bk = p.tiles.fwd_k, dh = p.dh, b = bh / p.H, h = bh % p.H, mi = t.i1 - t.i0;
  std::fill(m, m + mi, -std::numeric_limits<T>::infinity());
  std::fill(l, l + mi, T(0));
  const Mat<T> qi = q.rows<T>(b, h, t.i0);
  bool first = true;  // the first visible key tile writes O (beta = 0) instead of rescaling it
  for (int64_t e = L.row_start[size_t(t.qblock)]; e < L.row_start[size_t(t.qblock) + 1]; ++e) {
    const Entry& en = L.entries[size_t(e)];
    const int64_t kend = c.key_end(en, t.i1);
    for (int64_t j0 = L.k_bounds[size_t(en.block)]; j0 < kend; j0 += bk) {
      const int64_t j1 = std::min(j0 + bk, kend), nj = j1 - j0;
      const TileMask mk = p.classify(b, t.i0, t.i1, j0, j1, en.mask == BlockMask::causal);
      if (mk.skip) continue;
      Mat<T> kjt = kt_head ? Mat<T>{kt_head + j0, p.Tk, 1} : k.rows_t<T>(b, h, j0);
      if (kpack) {
        k.pack_t<T>(b, h, j0, nj, kpack, bk);
        kjt = {kpack, bk, 1};
      }
      tile_gemm(mi, nj, dh, T(p.scale), qi, kjt, T(0), S, bk);  // S = scale Q_i K_jᵀ
      p.apply_mask(S, bk, b, t.i0, mi, j0, nj, mk);
      Norm::absorb(S, bk, mi, nj, m, l, o, dh, first);
      tile_gemm(mi, dh, nj, T(1), Mat<T>{S, bk, 1}, v.rows<T>(b, h, j0), first ? T(0) : T(1), o, dh);  // O += P V_j
      first = false;
    }
  }
  Norm::finish(o, dh, mi, m, l, lse, !first);
}

template <class T, class Norm>
void forward(const Call& c, const Schedule& sc, const Operand& q, const Operand& k, const Operand& v, T* out, T* lse) {
  const Plan& p = c.plan;
  const Layout& L = c.layout;
  const int64_t bq = p.tiles.fwd_q, bk = p.tiles.fwd_k, dh = p.dh, BH = p.B * p.H;
  const int64_t nt_tiles = int64_t(sc.qtiles.size()), items = BH * nt_tiles;
  const bool par = run_parallel(sc.fwd_work * double(BH));
  const int nthreads = par ? omp_get_max_threads() : 1;
  // The register kernel reads Kᵀ row by row. When a key block is read by several query tiles, pack
  // all of K once per head ([BH, dh, Tk], the size of K); when each is read once (block-local), pack
  // each key tile as it is used instead, saving a pass over K.
  bool shared_keys = false;
  for (int64_t j = 0; j < L.k_blocks() && !shared_keys; ++j) {
    int64_t readers = 0;
    for (int64_t pp = L.col_start[size_t(j)]; pp < L.col_start[size_t(j) + 1]; ++pp) {
      const int64_t i = L.entry_row[size_t(L.col_entries[size_t(pp)])];
      readers += (L.q_bounds[size_t(i) + 1] - L.q_bounds[size_t(i)] + bq - 1) / bq;
    }
    shared_keys = readers > 1;
  }
  const Tensor kt = shared_keys ? k.pack_heads_t<T>(p.B, p.H, p.Tk, par) : Tensor();
  const bool pack_tiles = kRegisterKernel<T> && !kt.defined();
  const int64_t per_thread = bq * bk + 2 * bq + (pack_tiles ? dh * bk : 0);
  Tensor scratch = empty({nthreads, per_thread}, dtype_of<T>());
  T* scratch0 = scratch.data<T>();
#pragma omp parallel for schedule(dynamic, 1) if (par) num_threads(nthreads)
  for (int64_t it = 0; it < items; ++it) {
    T* S = scratch0 + int64_t(omp_get_thread_num()) * per_thread;
    const int64_t bh = it / nt_tiles;
    const QTile& t = sc.qtiles[size_t(it % nt_tiles)];
    forward_tile<T, Norm>(c, t, bh, q, k, v, kt.defined() ? kt.data<T>() + bh * dh * p.Tk : nullptr, S, S + bq * bk,
                          S + bq * bk + bq, pack_tiles ? S + bq * bk + 2 * bq : nullptr, out + (bh * p.Tq + t.i0) * dh,
                          lse + bh * p.Tq + t.i0);
  }
}

// ---- backward -----------------------------------------------------------------------------------

// The tensors and per-thread scratch of one backward call.
template <class T>
struct Backward {
  const Call& c;
  const Schedule& sc;
  const Operand &q, &k, &v, &go;
  const T *lse, *D;         // saved statistic and D per query row, [BH, Tq]
  T *dq, *dk, *dv, *slots;  // slots: [BH, slot_rows, dh]
  const std::vector<bool>& need;

  // Where entry e's dQ contribution from a chunk goes: rows of dQ, or the chunk's slot.
  T* dq_target(int64_t bh, int64_t e, const KChunk& ch) const {
    const Layout& L = c.layout;
    const int64_t i = L.entry_row[size_t(e)], dh = c.plan.dh, rows = L.q_bounds[size_t(i) + 1] - L.q_bounds[size_t(i)];
    if (sc.slot_start[size_t(e)] < 0) return dq + (bh * c.plan.Tq + L.q_bounds[size_t(i)]) * dh;
    return slots + (bh * sc.slot_rows + sc.slot_start[size_t(e)] + ch.index * rows) * dh;
  }
};

// One key tile [j0, j1) against every query tile of the query blocks reading it: P, dV_j += Pᵀ dO_i,
// dP = dO_i V_jᵀ, dS, dK_j += scale dSᵀ Q_i, dQ_i += scale dS K_j. P and dP are [bq, bk] scratch, kvt
// [2, dh, bk] for packed K_jᵀ and V_jᵀ; written[r] says whether query tile r of the item's targets
// (numbered over the readers in order) already holds a partial sum.
template <class T, class Norm>
void backward_key_tile(const Backward<T>& w, int64_t bh, const KChunk& ch, int64_t j0, int64_t j1, T* P, T* dP, T* kvt,
                       char* written) {
  const Plan& p = w.c.plan;
  const Layout& L = w.c.layout;
  const int64_t bq = p.tiles.bwd_q, bk = p.tiles.bwd_k, dh = p.dh, b = bh / p.H, h = bh % p.H, nj = j1 - j0;
  const T scale = T(p.scale);
  Mat<T> kjt = w.k.template rows_t<T>(b, h, j0), vjt = w.v.template rows_t<T>(b, h, j0);
  if constexpr (kRegisterKernel<T>) {
    w.k.template pack_t<T>(b, h, j0, nj, kvt, bk);
    w.v.template pack_t<T>(b, h, j0, nj, kvt + dh * bk, bk);
    kjt = {kvt, bk, 1};
    vjt = {kvt + dh * bk, bk, 1};
  }
  const Mat<T> kj = w.k.template rows<T>(b, h, j0);
  T* dk_rows = w.dk + (bh * p.Tk + j0) * dh;
  T* dv_rows = w.dv + (bh * p.Tk + j0) * dh;
  bool kv_written = false;
  for (int64_t pp = L.col_start[size_t(ch.kblock)]; pp < L.col_start[size_t(ch.kblock) + 1]; ++pp) {
    const int64_t e = L.col_entries[size_t(pp)], qb = L.entry_row[size_t(e)];
    const int64_t q0 = L.q_bounds[size_t(qb)], q1 = L.q_bounds[size_t(qb) + 1];
    const bool causal = L.entries[size_t(e)].mask == BlockMask::causal;
    T* target = w.dq_target(bh, e, ch);
    for (int64_t i0 = q0; i0 < q1; i0 += bq, ++written) {
      const int64_t i1 = std::min(i0 + bq, q1), mi = i1 - i0;
      const TileMask mk = p.classify(b, i0, i1, j0, j1, causal);
      if (mk.skip) continue;
      const Mat<T> qi = w.q.template rows<T>(b, h, i0), gi = w.go.template rows<T>(b, h, i0);
      tile_gemm(mi, nj, dh, scale, qi, kjt, T(0), P, bk);  // S = scale Q_i K_jᵀ
      p.apply_mask(P, bk, b, i0, mi, j0, nj, mk);
      Norm::weights(P, bk, mi, nj, w.lse + bh * p.Tq + i0);
      const T beta_kv = kv_written ? T(1) : T(0);
      kv_written = true;
      if (w.need[2]) tile_gemm(nj, dh, mi, T(1), Mat<T>{P, 1, bk}, gi, beta_kv, dv_rows, dh);  // dV_j += Pᵀ dO_i
      if (!w.need[0] && !w.need[1]) continue;
      tile_gemm(mi, nj, dh, T(1), gi, vjt, T(0), dP, bk);  // dP = dO_i V_jᵀ
      Norm::dscores(P, dP, bk, mi, nj, w.D + bh * p.Tq + i0);
      if (w.need[1])
        tile_gemm(nj, dh, mi, scale, Mat<T>{dP, 1, bk}, qi, beta_kv, dk_rows, dh);  // dK_j += scale dSᵀ Q_i
      if (w.need[0]) {                                                              // dQ_i += scale dS K_j
        tile_gemm(mi, dh, nj, scale, Mat<T>{dP, bk, 1}, kj, *written ? T(1) : T(0), target + (i0 - q0) * dh, dh);
        *written = 1;
      }
    }
  }
  if (!kv_written) {  // no query tile sees this key tile
    std::fill(dk_rows, dk_rows + nj * dh, T(0));
    std::fill(dv_rows, dv_rows + nj * dh, T(0));
  }
}

// One backward item: the key tiles of a chunk in order, then zeros for the dQ targets' query tiles
// that no key tile reached.
template <class T, class Norm>
void backward_chunk(const Backward<T>& w, int64_t bh, const KChunk& ch, T* scratch, std::vector<char>& written) {
  const Layout& L = w.c.layout;
  const int64_t bq = w.c.plan.tiles.bwd_q, bk = w.c.plan.tiles.bwd_k, dh = w.c.plan.dh;
  auto tiles_of = [&](int64_t qb) { return (L.q_bounds[size_t(qb) + 1] - L.q_bounds[size_t(qb)] + bq - 1) / bq; };
  int64_t n_written = 0;
  for (int64_t pp = L.col_start[size_t(ch.kblock)]; pp < L.col_start[size_t(ch.kblock) + 1]; ++pp)
    n_written += tiles_of(L.entry_row[size_t(L.col_entries[size_t(pp)])]);
  written.assign(size_t(n_written), 0);
  for (int64_t j0 = ch.j0; j0 < ch.j1; j0 += bk)
    backward_key_tile<T, Norm>(w, bh, ch, j0, std::min(j0 + bk, ch.j1), scratch, scratch + bq * bk,
                               scratch + 2 * bq * bk, written.data());
  if (!w.need[0]) return;
  const char* flag = written.data();
  for (int64_t pp = L.col_start[size_t(ch.kblock)]; pp < L.col_start[size_t(ch.kblock) + 1]; ++pp) {
    const int64_t e = L.col_entries[size_t(pp)], qb = L.entry_row[size_t(e)];
    const int64_t q0 = L.q_bounds[size_t(qb)], q1 = L.q_bounds[size_t(qb) + 1];
    T* target = w.dq_target(bh, e, ch);
    for (int64_t i0 = q0; i0 < q1; i0 += bq, ++flag)
      if (!*flag) std::fill(target + (i0 - q0) * dh, target + (std::min(i0 + bq, q1) - q0) * dh, T(0));
  }
}

// dQ of the query blocks with several contributors: the sum of their slots, in entry then chunk order;
// zeros for query blocks nobody reads into.
template <class T>
void reduce_dq(const Backward<T>& w, bool par) {
  const Layout& L = w.c.layout;
  const int64_t nq = L.q_blocks(), dh = w.c.plan.dh, BH = w.c.plan.B * w.c.plan.H, Tq = w.c.plan.Tq;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t it = 0; it < BH * nq; ++it) {
    const int64_t bh = it / nq, i = it % nq, q0 = L.q_bounds[size_t(i)], n = (L.q_bounds[size_t(i) + 1] - q0) * dh;
    T* dst = w.dq + (bh * Tq + q0) * dh;
    if (w.sc.contributors[size_t(i)] == 1) continue;  // written directly
    std::fill(dst, dst + n, T(0));
    for (int64_t e = L.row_start[size_t(i)]; e < L.row_start[size_t(i) + 1]; ++e)
      for (int64_t c = 0; c < w.sc.chunks_of[size_t(L.entries[size_t(e)].block)]; ++c) {
        const T* src = w.slots + (bh * w.sc.slot_rows + w.sc.slot_start[size_t(e)]) * dh + c * n;
#pragma omp simd
        for (int64_t x = 0; x < n; ++x) dst[x] += src[x];
      }
  }
}

template <class T, class Norm>
FusedGrads backward(const Call& c, const Schedule& sc, const Operand& q, const Operand& k, const Operand& v,
                    const Tensor& out, const Tensor& lse, const Tensor& g, const std::vector<bool>& need) {
  const Plan& p = c.plan;
  const int64_t bq = p.tiles.bwd_q, bk = p.tiles.bwd_k, dh = p.dh, BH = p.B * p.H;
  const DType dt = dtype_of<T>();
  FusedGrads gr{empty({p.B, p.H, p.Tq, dh}, dt), empty({p.B, p.H, p.Tk, dh}, dt), empty({p.B, p.H, p.Tk, dh}, dt)};
  const Operand go(g);
  const bool par = run_parallel(sc.bwd_work * double(BH));
  const int nt = par ? omp_get_max_threads() : 1;
  // D per query row first, so that items reading the same query block do not each recompute it.
  Tensor D = empty({BH, p.Tq}, dt);
  {
    T* pd = D.data<T>();
    const T* po = out.data<T>();
#pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t bh = 0; bh < BH; ++bh)
      for (int64_t i = 0; i < p.Tq; ++i)
        pd[bh * p.Tq + i] = Norm::row_term(go.at<T>(bh / p.H, bh % p.H, i), go.sc, po + (bh * p.Tq + i) * dh, dh);
  }
  Tensor slots = empty({std::max<int64_t>(BH * sc.slot_rows * dh, 1)}, dt);
  const Backward<T> w{c,
                      sc,
                      q,
                      k,
                      v,
                      go,
                      lse.data<T>(),
                      D.data<T>(),
                      gr.dq.data<T>(),
                      gr.dk.data<T>(),
                      gr.dv.data<T>(),
                      slots.data<T>(),
                      need};
  const int64_t per_thread = 2 * bq * bk + (kRegisterKernel<T> ? 2 * dh * bk : 0);
  Tensor scratch = empty({nt, per_thread}, dt);
  const int64_t n_chunks = int64_t(sc.chunks.size()), items = BH * n_chunks;
#pragma omp parallel if (par) num_threads(nt)
  {
    std::vector<char> written;
    T* s = scratch.data<T>() + int64_t(omp_get_thread_num()) * per_thread;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it)
      backward_chunk<T, Norm>(w, it / n_chunks, sc.chunks[size_t(it % n_chunks)], s, written);
  }
  if (need[0]) reduce_dq(w, par);
  return gr;
}

}  // namespace

// ---- the op -------------------------------------------------------------------------------------

Tensor block_sparse_attention(const OpDef& op, const Tensor& q, const Tensor& k, const Tensor& v, const Layout& layout,
                              const AttentionMask& mask, double scale, Tensor* lse_out) {
  const char* name = op.name.c_str();
  check_fused_inputs(name, q, k, v, mask, scale);
  if (mask.causal)
    fail<ValueError>(name, "causal masking is part of the layout (BlockMask::causal); got mask.causal with q ",
                     describe(q));
  if (layout.tq() != q.size(2) || layout.tk() != k.size(2))
    fail<ValueError>(name, layout.describe(), " does not fit q ", describe(q), " and k ", describe(k));
  auto call = std::make_shared<const Call>(layout, q, k, mask, scale);
  auto sched = std::make_shared<const Schedule>(*call, call->plan.B * call->plan.H);
  const DType dt = q.dtype();
  const bool empty_problem = q.numel() == 0 || k.numel() == 0;
  Tensor out = empty_problem ? zeros(q.shape(), dt) : empty(q.shape(), dt);
  const Shape lse_shape{call->plan.B, call->plan.H, call->plan.Tq};
  Tensor lse = empty_problem ? full(lse_shape, -INFINITY, dt) : empty(lse_shape, dt);
  if (!empty_problem)
    dispatch_floating(dt, name, [&]<class T>() {
      forward<T, Softmax>(*call, *sched, Operand(q), Operand(k), Operand(v), out.data<T>(), lse.data<T>());
    });
  if (lse_out) *lse_out = lse;
  record_fused(op, out, q, k, v, lse, empty_problem,
               [call, sched, name](const Tensor& qv, const Tensor& kv, const Tensor& vv, const Tensor& o,
                                   const Tensor& l, const Tensor& g, const std::vector<bool>& need) {
                 return dispatch_floating(g.dtype(), name, [&]<class T>() {
                   return backward<T, Softmax>(*call, *sched, Operand(qv), Operand(kv), Operand(vv), o, l, g, need);
                 });
               });
  return out;
}

namespace {

// ---- registration -------------------------------------------------------------------------------

// Uneven query blocks [0,3) [3,4) [4,9) and key blocks [0,2) [2,7) [7,8) [8,9), permuted lists, one
// query block reading everything, a causal diagonal entry, and an empty list (rows that see nothing).
Layout irregular_layout() {
  using block_sparse::Source;
  const BlockMask F = BlockMask::full, C = BlockMask::causal;
  return Layout::make({0, 3, 4, 9, 11}, {0, 2, 7, 8, 9},
                      {{{3, Source::keys, F}, {0, Source::keys, F}},
                       {},
                       {{1, Source::keys, C}, {3, Source::keys, F}, {0, Source::keys, F}, {2, Source::keys, F}},
                       {{2, Source::keys, F}}});
}

const OpDef kBlockSparseAttention(
    "block_sparse_attention",
    "per layout tile: P = exp(S - LSE), D = rowsum(g∘O); dV = Pᵀ g, dS = P∘(g Vᵀ - D), dQ = scale dS K, dK = scale dSᵀ "
    "Q",
    {{"irregular permuted layout, Tq 11 Tk 9, tiles 2x2",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 11, 3}), rn(g, {1, 2, 9, 3}), rn(g, {1, 2, 9, 3})};
      },
      [](const Inputs& in) {
        ScopedTiles st({2, 2, 2, 2});
        return block_sparse_attention(in[0], in[1], in[2], irregular_layout(), {}, 0.6);
      }},
     {"irregular layout + key padding (batch 1 mostly padded), tiles 3x3",
      [](Generator& g) {
        return Inputs{rn(g, {2, 1, 11, 2}), rn(g, {2, 1, 9, 2}), rn(g, {2, 1, 9, 2}),
                      from_vector({0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1}, {2, 9}, DType::b8)};
      },
      [](const Inputs& in) {
        ScopedTiles st({3, 3, 3, 3});
        return block_sparse_attention(in[0], in[1], in[2], irregular_layout(), {false, in[3]}, 0.8);
      }},
     {"causal block-local, block 3, Tq 7 Tk 8, default tiles (chunks split)",
      [](Generator& g) {
        return Inputs{rn(g, {1, 1, 7, 3}), rn(g, {1, 1, 8, 3}), rn(g, {1, 1, 8, 3})};
      },
      [](const Inputs& in) {
        return block_sparse_attention(in[0], in[1], in[2], block_sparse::local_layout(7, 8, 3, true), {}, 0.7);
      }}});

}  // namespace

Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const block_sparse::Layout& layout,
                              const AttentionMask& mask, double scale, Tensor* lse_out) {
  return block_sparse_attention(kBlockSparseAttention, q, k, v, layout, mask, scale, lse_out);
}

}  // namespace attnlab

#include "attention/routing_attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "attention/block_sparse.h"
#include "attention/flash.h"
#include "attention/local.h"
#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"
#include "layers/functional.h"

namespace attnlab {
using namespace cases;

namespace {

bool parallel_over(int64_t work) { return work >= cpu::parallel_grain(); }

void check_routing(const char* op, const Tensor& x, const routing::Routing& r) {
  if (x.dim() != 4) fail<ShapeError>(op, "input must be [B, H, T, dh], got ", describe(x));
  const Shape want{x.size(0), x.size(1), r.k * r.w};
  if (!r.index.defined() || r.index.dtype() != DType::i64 || r.index.shape() != want || r.T != x.size(2))
    fail<ShapeError>(op, "routing index must be i64 [", want[0], ", ", want[1], ", ", want[2], "] over T ", x.size(2),
                     ", got ", r.index.defined() ? describe(r.index) : std::string("none"), " over T ", r.T);
}

// The scatter-mean divisors 1 / (count + 1e-2), [B, H, T] as doubles.
std::vector<double> inverse_counts(const routing::Routing& r) {
  std::vector<int64_t> c = r.count.to_vector<int64_t>();
  std::vector<double> inv(c.size());
  for (size_t i = 0; i < c.size(); ++i) inv[i] = 1.0 / (double(c[i]) + routing::kCountSmoothing);
  return inv;
}

// ---- the sort (gather rows by cluster) and the unsort (scatter-mean back) ---------------------

const OpDef& routing_sort_op();
const OpDef& routing_unsort_op();

// out[b, h, s] = x[b, h, index[b, h, s]] (rows of dh); an empty slot (index -1) gets zeros.
Tensor sort_rows(const Tensor& x, const Tensor& index) {
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), dh = x.size(3), S = index.size(2);
  Tensor xc = x.contiguous(), out = empty({B, H, S, dh}, x.dtype());
  const int64_t* pi = index.data<int64_t>();
  dispatch_floating(x.dtype(), "routing_sort", [&]<class T_>() {
    const T_* px = xc.data<T_>();
    T_* po = out.data<T_>();
#pragma omp parallel for if (parallel_over(B * H * S * dh)) schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t t = pi[bh * S + s];
        if (t >= 0) std::copy_n(px + (bh * T + t) * dh, dh, po + (bh * S + s) * dh);
        else std::fill_n(po + (bh * S + s) * dh, dh, T_(0));
      }
  });
  return out;
}

// out[b, h, t] = weight[b, h, t] · Σ_{s: index[b, h, s] = t} y[b, h, s] (weight 1 when null); one
// writer per (b, h), sums in slot order (deterministic).
Tensor unsort_rows(const Tensor& y, const Tensor& index, int64_t T, const std::vector<double>* weight) {
  const int64_t B = y.size(0), H = y.size(1), S = y.size(2), dh = y.size(3);
  Tensor yc = y.contiguous(), out = zeros({B, H, T, dh}, y.dtype());
  const int64_t* pi = index.data<int64_t>();
  dispatch_floating(y.dtype(), "routing_unsort", [&]<class T_>() {
    const T_* py = yc.data<T_>();
    T_* po = out.data<T_>();
#pragma omp parallel for if (parallel_over(B * H * S * dh)) schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      for (int64_t s = 0; s < S; ++s) {
        if (pi[bh * S + s] < 0) continue;  // an empty slot: its output goes nowhere
        const T_* src = py + (bh * S + s) * dh;
        T_* dst = po + (bh * T + pi[bh * S + s]) * dh;
        for (int64_t d = 0; d < dh; ++d) dst[d] += src[d];
      }
      for (int64_t t = 0; weight && t < T; ++t) {
        const T_ wt = T_((*weight)[size_t(bh * T + t)]);
        T_* row = po + (bh * T + t) * dh;
        for (int64_t d = 0; d < dh; ++d) row[d] *= wt;
      }
    }
  });
  return out;
}

// The sorted copy, differentiable: its gradient scatter-adds back (a token in several clusters
// collects from each).
Tensor routing_sort(const Tensor& x, const routing::Routing& r) {
  check_routing("routing_sort", x, r);
  Tensor out = sort_rows(x, r.index);
  if (needs_grad({x}))
    record(out, routing_sort_op(), {x}, [r](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{unsort_rows(g, r.index, r.T, nullptr)};
    });
  return out;
}

// The scatter-mean back to positions: out_t = Σ_{s → t} y_s / (count_t + 1e-2); gradient
// g_s = g_t(s) / (count_t(s) + 1e-2).
Tensor routing_unsort(const Tensor& y, const routing::Routing& r) {
  if (y.dim() != 4 || y.size(2) != r.k * r.w)
    fail<ShapeError>("routing_unsort", "sorted outputs must be [B, H, ", r.k * r.w, ", dh], got ", describe(y));
  const std::vector<double> inv = inverse_counts(r);
  Tensor out = unsort_rows(y, r.index, r.T, &inv);
  if (needs_grad({y}))
    record(out, routing_unsort_op(), {y}, [r, inv](const Tensor& g, const std::vector<bool>&) {
      Tensor scaled = mul(g.contiguous(), from_vector(inv, {r.index.size(0), r.index.size(1), r.T, 1}).to(g.dtype()));
      return std::vector<Tensor>{sort_rows(scaled, r.index)};
    });
  return out;
}

// Frozen routings for the gradcheck cases: H 2, T 7, k 3 clusters of w 3, with overlaps (position 4
// in every cluster of head 0) and a token in no cluster (6 in head 0, 0 in head 1).
routing::Routing frozen_routing(int64_t B = 1) {
  static constexpr int64_t kHeads[2][9] = {{0, 2, 4, 1, 3, 4, 3, 4, 5}, {1, 2, 6, 3, 5, 6, 1, 4, 5}};
  std::vector<int64_t> idx(static_cast<size_t>(B * 18));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = kHeads[(i / 9) % 2][i % 9];
  return routing::from_index(from_vector(idx, {B, 2, 9}), 3, 7);
}

const OpDef kRoutingSort("routing_sort", "dx[b,h,index[b,h,s]] += g[b,h,s] (scatter-add of the sorted rows)",
                         {{"H 2, T 7, k 3 x w 3, overlaps and an unrouted token, non-contiguous input",
                           [](Generator& g) {
                             return Inputs{rn_t(g, {1, 2, 7, 3})};
                           },
                           [](const Inputs& in) { return routing_sort(in[0], frozen_routing()); }}});

const OpDef kRoutingUnsort("routing_unsort",
                           "dy[b,h,s] = g[b,h,index[b,h,s]] / (count + 1e-2) (the gather of the scattered mean)",
                           {{"H 2, T 7, k 3 x w 3, overlaps and an unrouted token",
                             [](Generator& g) {
                               return Inputs{rn(g, {1, 2, 9, 3})};
                             },
                             [](const Inputs& in) { return routing_unsort(in[0], frozen_routing()); }}});

const OpDef& routing_sort_op() { return kRoutingSort; }
const OpDef& routing_unsort_op() { return kRoutingUnsort; }

const OpDef kRoutingAttention(
    "routing_attention",
    "block_sparse_attention's on the cluster segments of the sorted copy (segment c reads segment c): dV = Pᵀ g, "
    "dS = P∘(g Vᵀ - D), dQ = scale dS K, dK = scale dSᵀ Q; sort and scatter-mean around it",
    {{"causal, B 1 H 2 T 7, k 3 x w 3 with overlaps, tiles 2x2",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 7, 3}), rn(g, {1, 2, 7, 3})};
      },
      [](const Inputs& in) {
        flash::ScopedTiles st({2, 2, 2, 2});
        return routing_attention(in[0], in[1], frozen_routing(), true, {}, 0.7);
      }},
     {"bidirectional + key padding, B 2, non-contiguous v",
      [](Generator& g) {
        return Inputs{rn(g, {2, 2, 7, 2}), rn_t(g, {2, 2, 7, 2}),
                      from_vector({0, 0, 0, 0, 0, 1, 1, /**/ 0, 1, 0, 0, 0, 0, 0}, {2, 7}, DType::b8)};
      },
      [](const Inputs& in) { return routing_attention(in[0], in[1], frozen_routing(2), false, in[2], 0.9); }},
     {"nearest assignment: partial clusters with empty slots, causal and bidirectional",
      [](Generator& g) {
        return Inputs{rn(g, {1, 1, 6, 3}), rn(g, {1, 1, 6, 3})};
      },
      [](const Inputs& in) {
        const routing::Routing r = routing::from_index(
            from_vector(std::vector<int64_t>{0, 3, 4, 5, 1, -1, -1, -1, 2, -1, -1, -1}, {1, 1, 12}), 3, 6);
        return add(routing_attention(in[0], in[1], r, true, {}, 0.8),
                   routing_attention(in[0], in[1], r, false, {}, 0.5));
      }}});

}  // namespace

// ---- routing -----------------------------------------------------------------------------------

namespace routing {

int64_t window_for(int64_t T, int64_t k, int64_t window) {
  if (window > 0) return std::max<int64_t>(1, std::min(window, T));
  return std::max<int64_t>(1, (T + k - 1) / k);
}

namespace {
// Counts per token of the clusters that took it, from the index.
Tensor counts_of(const Tensor& index, int64_t T) {
  const int64_t BH = index.size(0) * index.size(1), S = index.size(2);
  Tensor count = zeros({index.size(0), index.size(1), T}, DType::i64);
  const int64_t* pi = index.data<int64_t>();
  int64_t* pc = count.data<int64_t>();
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t s = 0; s < S; ++s)
      if (pi[bh * S + s] >= 0) ++pc[bh * T + pi[bh * S + s]];
  return count;
}
}  // namespace

Routing from_index(const Tensor& index, int64_t k, int64_t T) {
  const char* op = "routing";
  if (index.dim() != 3 || index.dtype() != DType::i64 || k <= 0 || index.size(2) % k != 0)
    fail<ShapeError>(op, "index must be i64 [B, H, k·w] with k = ", k, ", got ", describe(index));
  Routing r;
  r.k = k, r.w = index.size(2) / k, r.T = T;
  r.index = index.contiguous();
  const int64_t* pi = r.index.data<int64_t>();
  for (int64_t seg = 0; seg < r.index.numel() / std::max<int64_t>(r.w, 1); ++seg)
    for (int64_t s = 0; s < r.w; ++s) {
      // Positions strictly increase; an empty slot (-1) may only be followed by empty slots.
      const int64_t t = pi[seg * r.w + s], prev = s > 0 ? pi[seg * r.w + s - 1] : 0;
      const bool ok = t == -1 || (t >= 0 && t < T && (s == 0 || (prev != -1 && t > prev)));
      r.partial = r.partial || t == -1;
      if (!ok)
        fail<ValueError>(op, "cluster ", seg % k, " of index ", describe(index),
                         " must hold strictly increasing positions in [0, ", T, "), then only empty slots (-1), got ",
                         t, " at slot ", s);
    }
  r.count = counts_of(r.index, T);
  return r;
}

Routing route(const Tensor& xhat, const Tensor& centroids, int64_t w) {
  const char* op = "routing";
  if (xhat.dim() != 4 || centroids.dim() != 3 || centroids.size(0) != xhat.size(1) || centroids.size(2) != xhat.size(3))
    fail<ShapeError>(op, "x̂ must be [B, H, T, dh] and centroids [H, k, dh], got ", describe(xhat), " and ",
                     describe(centroids));
  const int64_t B = xhat.size(0), H = xhat.size(1), T = xhat.size(2), k = centroids.size(1);
  if (w < 1 || w > T) fail<ValueError>(op, "window ", w, " must be in [1, T = ", T, "]");
  NoGradGuard ng;
  // scores [B, H, k, T] = μ x̂ᵀ in the input's dtype (one GEMM per head): each cluster's scores are
  // then a contiguous row for its top-w selection.
  const DType dt = xhat.dtype();
  Tensor scores = matmul(centroids.to(dt).unsqueeze(0), xhat.detach().transpose(-1, -2)).contiguous();
  Routing r;
  r.k = k, r.w = w, r.T = T;
  r.index = empty({B, H, k * w}, DType::i64);
  r.nearest = empty({B, H, T}, DType::i64);
  int64_t* pi = r.index.data<int64_t>();
  int64_t* pn = r.nearest.data<int64_t>();
  dispatch_floating(dt, op, [&]<class T_>() {
    const T_* ps = scores.data<T_>();
    const bool par = parallel_over(B * H * T * k);
    // Nearest centroid per token: the first maximum over c.
#pragma omp parallel for if (par) schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const T_* sc = ps + bh * k * T;
      std::vector<T_> best(sc, sc + T);
      int64_t* near = pn + bh * T;
      std::fill(near, near + T, 0);
      for (int64_t c = 1; c < k; ++c) {
        const T_* row = sc + c * T;
        T_* b = best.data();
#pragma omp simd
        for (int64_t t = 0; t < T; ++t) {  // branch-free: vectorises
          const bool gt = row[t] > b[t];
          b[t] = gt ? row[t] : b[t];
          near[t] = gt ? c : near[t];
        }
      }
    }
    // Top-w tokens of each cluster (official cluster_items: top_k over positions), ties to the earlier
    // position: one pass in position order with a heap of the w best so far. Its root is the member to
    // evict (the lowest score, the latest among equals); a later token enters only with a strictly
    // higher score, so the test is one well-predicted comparison for most tokens (w ≪ T). The members
    // are then put back into position order: the segment's causal mask is positional.
#pragma omp parallel if (par)
    {
      using Item = std::pair<T_, int64_t>;
      auto keep_first = [](const Item& a, const Item& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      };
      std::vector<Item> heap;
      heap.reserve(static_cast<size_t>(w));
#pragma omp for schedule(dynamic, 4)
      for (int64_t bc = 0; bc < B * H * k; ++bc) {
        const T_* sc = ps + bc * T;
        heap.clear();
        for (int64_t t = 0; t < w; ++t) heap.push_back({sc[t], t});
        std::make_heap(heap.begin(), heap.end(), keep_first);
        for (int64_t t = w; t < T; ++t)
          if (sc[t] > heap.front().first) {
            std::pop_heap(heap.begin(), heap.end(), keep_first);
            heap.back() = {sc[t], t};
            std::push_heap(heap.begin(), heap.end(), keep_first);
          }
        int64_t* out = pi + bc * w;
        for (int64_t s = 0; s < w; ++s) out[s] = heap[size_t(s)].second;
        std::sort(out, out + w);
      }
    }
  });
  r.count = counts_of(r.index, T);
  return r;
}

Routing route_nearest(const Tensor& xhat, const Tensor& centroids, int64_t w) {
  // The nearest centroids and scores come from route(); only the clusters differ.
  Routing r = route(xhat, centroids, std::min(w, xhat.size(2)));
  const int64_t BH = xhat.size(0) * xhat.size(1), T = r.T, k = r.k;
  r.index = full({xhat.size(0), xhat.size(1), k * w}, -1.0, DType::i64);
  r.partial = true;
  int64_t* pi = r.index.data<int64_t>();
  const int64_t* pn = r.nearest.data<int64_t>();
  std::vector<int64_t> fill(static_cast<size_t>(k));
  for (int64_t bh = 0; bh < BH; ++bh) {
    std::fill(fill.begin(), fill.end(), 0);
    // In position order: a token joins its nearest cluster while the cluster has room, so whether it
    // is routed depends on earlier tokens only.
    for (int64_t t = 0; t < T; ++t) {
      const int64_t c = pn[bh * T + t];
      if (fill[size_t(c)] < w) pi[(bh * k + c) * w + fill[size_t(c)]++] = t;
    }
  }
  r.w = w;
  r.count = counts_of(r.index, T);
  return r;
}

BatchSums nearest_sums(const Tensor& xhat, const Tensor& nearest, int64_t k, const Tensor& key_padding) {
  const int64_t B = xhat.size(0), H = xhat.size(1), T = xhat.size(2), dh = xhat.size(3);
  Tensor x = xhat.detach().to(DType::f64).contiguous();
  BatchSums s{zeros({H, k}, DType::f64), zeros({H, k, dh}, DType::f64)};
  const double* px = x.data<double>();
  const int64_t* pn = nearest.data<int64_t>();
  double *pc = s.count.data<double>(), *pv = s.sum.data<double>();
  std::vector<uint8_t> pad = key_padding.defined() ? key_padding.to_vector<uint8_t>() : std::vector<uint8_t>();
  for (int64_t h = 0; h < H; ++h)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        if (!pad.empty() && pad[size_t(b * T + t)]) continue;  // padding rows are zeroed (official)
        const int64_t bh = b * H + h, c = pn[bh * T + t];
        pc[h * k + c] += 1;
        for (int64_t d = 0; d < dh; ++d) pv[(h * k + c) * dh + d] += px[(bh * T + t) * dh + d];
      }
  return s;
}

void ema_update(Tensor& centroids, Tensor& ema_count, Tensor& ema_sum, const BatchSums& batch, double decay,
                double eps) {
  const int64_t H = centroids.size(0), k = centroids.size(1), dh = centroids.size(2);
  if (ema_count.shape() != Shape{H, k} || ema_sum.shape() != centroids.shape() ||
      batch.count.shape() != ema_count.shape() || batch.sum.shape() != centroids.shape())
    fail<ShapeError>("routing EMA", "centroids ", describe(centroids), ", counts ", describe(ema_count), ", sums ",
                     describe(ema_sum), " and the batch's ", describe(batch.count), ", ", describe(batch.sum),
                     " do not match");
  std::vector<double> N = ema_count.to(DType::f64).to_vector<double>(), S = ema_sum.to(DType::f64).to_vector<double>();
  const std::vector<double> n = batch.count.to(DType::f64).to_vector<double>(),
                            x = batch.sum.to(DType::f64).to_vector<double>();
  std::vector<double> mu(S.size());
  for (int64_t h = 0; h < H; ++h) {
    double total = 0;
    for (int64_t c = 0; c < k; ++c) {
      const size_t i = size_t(h * k + c);
      N[i] = decay * N[i] + (1 - decay) * n[i];
      total += N[i];
      for (int64_t d = 0; d < dh; ++d)
        S[i * size_t(dh) + size_t(d)] =
            decay * S[i * size_t(dh) + size_t(d)] + (1 - decay) * x[i * size_t(dh) + size_t(d)];
    }
    for (int64_t c = 0; c < k; ++c) {
      const size_t i = size_t(h * k + c);
      // Laplace smoothing: a cluster nobody chose keeps a small positive size (no division by zero).
      const double smoothed = (N[i] + eps) / (total + double(k) * eps) * total;
      for (int64_t d = 0; d < dh; ++d) mu[i * size_t(dh) + size_t(d)] = S[i * size_t(dh) + size_t(d)] / smoothed;
    }
  }
  ema_count.copy_(from_vector(N, ema_count.shape()).to(ema_count.dtype()));
  ema_sum.copy_(from_vector(S, ema_sum.shape()).to(ema_sum.dtype()));
  centroids.copy_(from_vector(mu, centroids.shape()).to(centroids.dtype()));
}

Tensor commitment_loss(const Tensor& xhat, const Tensor& centroids, const Tensor& nearest, double beta) {
  const int64_t B = xhat.size(0), H = xhat.size(1), T = xhat.size(2), dh = xhat.size(3), k = centroids.size(1);
  Tensor target = empty({B, H, T, dh}, DType::f64);  // sg(μ_nearest(t)): a constant
  {
    Tensor mu = centroids.to(DType::f64).contiguous();
    const double* pm = mu.data<double>();
    const int64_t* pn = nearest.data<int64_t>();
    double* pt = target.data<double>();
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t t = 0; t < T; ++t)
        std::copy_n(pm + ((bh % H) * k + pn[bh * T + t]) * dh, dh, pt + (bh * T + t) * dh);
  }
  Tensor diff = sub(xhat, target.to(xhat.dtype()));
  return mul(mean(mul(diff, diff)), scalar_tensor(beta, xhat.dtype()));
}

}  // namespace routing

// ---- the ops -----------------------------------------------------------------------------------

Tensor routing_layer_norm(const Tensor& q) {
  const int64_t dh = q.size(-1);
  return layer_norm(q, ones({dh}, q.dtype()), zeros({dh}, q.dtype()), 1e-6);
}

namespace {
// Segment c of the sorted copy reads segment c: the diagonal of k blocks of w.
block_sparse::Layout segment_layout(int64_t k, int64_t w, bool causal) {
  std::vector<std::vector<block_sparse::Entry>> lists(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c)
    lists[size_t(c)].push_back(
        {c, block_sparse::Source::keys, causal ? block_sparse::BlockMask::causal : block_sparse::BlockMask::full});
  std::vector<int64_t> bounds(static_cast<size_t>(k + 1));
  for (int64_t c = 0; c <= k; ++c) bounds[size_t(c)] = c * w;
  return block_sparse::Layout::make(bounds, bounds, lists, "routing_attention");
}

void check_pair(const char* op, const Tensor& xhat, const Tensor& v, const Tensor& key_padding) {
  if (xhat.dim() != 4 || v.shape() != xhat.shape() || v.dtype() != xhat.dtype())
    fail<ShapeError>(op, "x̂ and v must be [B, H, T, dh] of one shape and dtype, got ", describe(xhat), " and ",
                     describe(v));
  if (key_padding.defined() &&
      (key_padding.dtype() != DType::b8 || key_padding.shape() != Shape{xhat.size(0), xhat.size(2)}))
    fail<ShapeError>(op, "key_padding must be b8 [", xhat.size(0), ", ", xhat.size(2), "], got ",
                     describe(key_padding));
}
}  // namespace

Tensor routing_attention(const Tensor& xhat, const Tensor& v, const routing::Routing& r, bool causal,
                         const Tensor& key_padding, double scale) {
  const char* op = "routing_attention";
  check_pair(op, xhat, v, key_padding);
  check_routing(op, xhat, r);
  const int64_t B = xhat.size(0), H = xhat.size(1), S = r.k * r.w, dh = xhat.size(3);
  // Key padding follows the keys into the sorted copy; each (batch, head) has its own order, so the
  // engine sees B·H sequences of one head.
  Tensor pad;
  if (key_padding.defined()) {
    pad = empty({B * H, S}, DType::b8);
    const std::vector<uint8_t> kp = key_padding.to_vector<uint8_t>();
    const int64_t* pi = r.index.data<int64_t>();
    uint8_t* pp = pad.data<uint8_t>();
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t s = 0; s < S; ++s)
        pp[bh * S + s] = pi[bh * S + s] < 0 || kp[size_t((bh / H) * r.T + pi[bh * S + s])];
  } else if (r.partial) {
    // Empty slots are keys nobody may see (with the causal mask they trail every real query anyway).
    pad = lt(r.index.reshape({B * H, S}), scalar_tensor(0.0, DType::i64));
  }
  Tensor xs = routing_sort(xhat, r).reshape({B * H, 1, S, dh});
  Tensor vs = routing_sort(v, r).reshape({B * H, 1, S, dh});
  Tensor os =
      block_sparse_attention(kRoutingAttention, xs, xs, vs, segment_layout(r.k, r.w, causal), {false, pad}, scale);
  return routing_unsort(os.reshape({B, H, S, dh}), r);
}

Tensor routing_attention_composite(const Tensor& xhat, const Tensor& v, const routing::Routing& r, bool causal,
                                   const Tensor& key_padding, double scale, Tensor* weights_out) {
  const char* op = "routing_attention";
  check_pair(op, xhat, v, key_padding);
  check_routing(op, xhat, r);
  const int64_t B = xhat.size(0), H = xhat.size(1), T = xhat.size(2);
  const int64_t* pi = r.index.data<int64_t>();
  const std::vector<uint8_t> kp = key_padding.defined() ? key_padding.to_vector<uint8_t>() : std::vector<uint8_t>();
  Tensor total, weights;
  std::vector<uint8_t> member(static_cast<size_t>(T));
  for (int64_t c = 0; c < r.k; ++c) {
    Tensor blocked = empty({B, H, T, T}, DType::b8);
    uint8_t* pb = blocked.data<uint8_t>();
    for (int64_t bh = 0; bh < B * H; ++bh) {
      std::fill(member.begin(), member.end(), 0);
      for (int64_t s = 0; s < r.w; ++s)
        if (const int64_t t = pi[(bh * r.k + c) * r.w + s]; t >= 0) member[size_t(t)] = 1;
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j)
          pb[(bh * T + i) * T + j] = !(member[size_t(i)] && member[size_t(j)]) || (causal && j > i) ||
                                     (!kp.empty() && kp[size_t((bh / H) * T + j)]);
    }
    Tensor w;
    Tensor o = masked_softmax_attention_composite(xhat, xhat, v, blocked, scale, weights_out ? &w : nullptr);
    total = total.defined() ? add(total, o) : o;
    if (weights_out) weights = weights.defined() ? add(weights, w.detach()) : w.detach();
  }
  Tensor inv = from_vector(inverse_counts(r), {B, H, T, 1}).to(xhat.dtype());
  if (weights_out) *weights_out = mul(weights, inv).detach();
  return mul(total, inv);
}

// ---- the method --------------------------------------------------------------------------------

RoutingAttention::RoutingAttention(const Options& opt, const AttentionContext& ctx)
    : opt_(opt), n_heads_(ctx.n_heads), head_dim_(ctx.head_dim) {
  const char* op = "routing attention";
  if (opt.clusters < 1) fail<ValueError>(op, "clusters must be >= 1, got ", opt.clusters);
  if (opt.local_heads < 0 || opt.local_heads > n_heads_)
    fail<ValueError>(op, "local_heads ", opt.local_heads, " must be in [0, n_heads = ", n_heads_, "]");
  if (!(opt.decay >= 0 && opt.decay < 1)) fail<ValueError>(op, "decay must be in [0, 1), got ", opt.decay);
  if (!(opt.commitment >= 0)) fail<ValueError>(op, "commitment must be >= 0, got ", opt.commitment);
  if (opt.local_heads > 0)
    local_ = register_module("local", std::make_shared<LocalAttention>(opt.local_block, opt.scale));
  const int64_t Hr = routing_heads(), k = opt.clusters;
  // Centroids start as LN(randn), on the sphere x̂ lives on (official init), so that evaluation and
  // sampling route sensibly before any training step. The EMA state starts as if each centroid were
  // the mean of one earlier token (N = 1, S = μ): μ = S / N' holds at step 0, and an unused cluster
  // decays in place instead of jumping to S / ε.
  Generator g(0x5eedULL + uint64_t(ctx.layer), 19);
  Tensor mu = Hr > 0 ? routing_layer_norm(randn({Hr, k, head_dim_}, DType::f64, &g)).to(ctx.dtype)
                     : empty({0, k, head_dim_}, ctx.dtype);
  centroids_ = &register_buffer("centroids", mu);
  ema_count_ = &register_buffer("ema_count", ones({Hr, k}, ctx.dtype));
  ema_sum_ = &register_buffer("ema_sum", mu.clone());
  max_share_.assign(size_t(Hr), 0.0), unrouted_.assign(size_t(Hr), 0.0), drift_.assign(size_t(Hr), 0.0);
}

Tensor RoutingAttention::route_and_attend(const Tensor& q, const Tensor& v, const AttentionMask& mask) {
  const int64_t B = q.size(0), Hr = q.size(1), T = q.size(2), k = opt_.clusters;
  Tensor xhat = routing_layer_norm(q);
  const int64_t w = routing::window_for(T, k, opt_.window);
  const routing::Routing r =
      opt_.nearest ? routing::route_nearest(xhat, *centroids_, w) : routing::route(xhat, *centroids_, w);
  Tensor weights;
  Tensor out = opt_.impl == AttentionImpl::fused
                   ? routing_attention(xhat, v, r, mask.causal, mask.key_padding, opt_.scale)
                   : routing_attention_composite(xhat, v, r, mask.causal, mask.key_padding, opt_.scale,
                                                 record_internals ? &weights : nullptr);
  aux_ = opt_.commitment > 0 ? routing::commitment_loss(xhat, *centroids_, r.nearest, opt_.commitment) : Tensor();
  // Only training forwards feed the EMA (never evaluation, sampling, or audits in eval mode).
  const bool accumulate = training() && grad_enabled();
  NoGradGuard ng;
  if (accumulate) {
    routing::BatchSums s = routing::nearest_sums(xhat, r.nearest, k, mask.key_padding);
    pending_ = pending_forwards_ ? routing::BatchSums{add(pending_.count, s.count), add(pending_.sum, s.sum)} : s;
    ++pending_forwards_;
  }
  // Per-head numbers for the logs: the largest cluster's share (by nearest centroid) and unrouted tokens.
  const std::vector<int64_t> nearest = r.nearest.to_vector<int64_t>(), count = r.count.to_vector<int64_t>();
  Tensor occupancy = zeros({Hr, k}, DType::i64);
  int64_t* po = occupancy.data<int64_t>();
  for (int64_t h = 0; h < Hr; ++h) {
    int64_t unrouted = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const size_t i = size_t((b * Hr + h) * T + t);
        ++po[h * k + nearest[i]];
        unrouted += count[i] == 0;
      }
    max_share_[size_t(h)] =
        double(*std::max_element(po + h * k, po + (h + 1) * k)) / double(std::max<int64_t>(B * T, 1));
    unrouted_[size_t(h)] = double(unrouted) / double(std::max<int64_t>(B * T, 1));
  }
  if (record_internals) {
    if (!weights.defined())
      routing_attention_composite(xhat.detach(), v.detach(), r, mask.causal, mask.key_padding, opt_.scale, &weights);
    internals["attn"] = weights;
    internals["cluster"] = r.nearest;  // [B, H, T]: each token's nearest centroid (local heads: its block)
    internals["count"] = r.count;      // [B, H, T]: clusters that took the token (0: unrouted)
    internals["index"] = r.index;      // [B, Hr, k·w]: the clusters' positions, segment by segment
    // [B, H, T, T]: how many clusters hold both tokens (a picture of the clusters, causal or not).
    Tensor together = zeros({B, Hr, T, T}, DType::f32);
    const std::vector<int64_t> idx = r.index.to_vector<int64_t>();
    float* pt = together.data<float>();
    for (int64_t bh = 0; bh < B * Hr; ++bh)
      for (int64_t c = 0; c < k; ++c)
        for (int64_t a = 0; a < r.w; ++a)
          for (int64_t b = 0; b < r.w; ++b) {
            const int64_t i = idx[size_t((bh * k + c) * r.w + a)], j = idx[size_t((bh * k + c) * r.w + b)];
            if (i >= 0 && j >= 0) pt[(bh * T + i) * T + j] += 1;
          }
    internals["together"] = together;
    internals["occupancy"] = occupancy;
    internals["centroids"] = centroids_->detach().clone();
    internals["drift"] = from_vector(drift_, {Hr});
  }
  return out;
}

Tensor RoutingAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  const char* op = "routing attention";
  check_qkv(op, q, k, v, mask);
  if (q.size(2) != k.size(2))
    fail<ShapeError>(op, "routes self-attention (queries and keys shared, as the official decoder): q ", describe(q),
                     " and k ", describe(k), " must have the same length");
  if (q.size(1) != n_heads_ || q.size(3) != head_dim_)
    fail<ShapeError>(op, "built for ", n_heads_, " heads of ", head_dim_, ", got q ", describe(q));
  const int64_t L = opt_.local_heads, H = n_heads_;
  if (record_internals) internals.clear();
  if (L == 0) return route_and_attend(q, v, mask);
  if (local_) local_->record_internals = record_internals;
  Tensor local_out = local_->forward(q.narrow(1, 0, L), k.narrow(1, 0, L), v.narrow(1, 0, L), mask);
  if (L == H) {
    aux_ = Tensor();
    if (record_internals) internals = local_->internals;
    return local_out;
  }
  Tensor routed = route_and_attend(q.narrow(1, L, H - L), v.narrow(1, L, H - L), mask);
  if (record_internals) {
    // The layer's picture: local heads first, then the routing heads, as in the output.
    internals["attn"] = concat({local_->internals.at("attn"), internals.at("attn")}, 1);
    local_->internals.clear();
    // Per token and head for draw: a local head's "cluster" is its block, and it takes every token once.
    const int64_t B = q.size(0), T = q.size(2);
    Tensor block = empty({B, L, T}, DType::i64);
    for (int64_t i = 0; i < block.numel(); ++i) block.data<int64_t>()[i] = (i % T) / opt_.local_block;
    internals["cluster"] = concat({block, internals.at("cluster")}, 1);
    internals["count"] = concat({ones({B, L, T}, DType::i64), internals.at("count")}, 1);
    Tensor same_block = empty({B, L, T, T}, DType::f32);
    for (int64_t i = 0; i < same_block.numel(); ++i)
      same_block.data<float>()[i] = float((i / T) % T / opt_.local_block == (i % T) / opt_.local_block);
    internals["together"] = concat({same_block, internals.at("together")}, 1);
  }
  return concat({local_out, routed}, 1);
}

void RoutingAttention::after_step() {
  if (pending_forwards_ == 0) return;
  Tensor before = centroids_->to(DType::f64).clone();
  routing::ema_update(*centroids_, *ema_count_, *ema_sum_, pending_, opt_.decay);
  pending_forwards_ = 0;
  pending_ = {};
  // The mean distance each centroid moved in this step, per routing head.
  const std::vector<double> a = before.to_vector<double>(), b = centroids_->to(DType::f64).to_vector<double>();
  const int64_t k = opt_.clusters, dh = head_dim_;
  for (int64_t h = 0; h < routing_heads(); ++h) {
    double acc = 0;
    for (int64_t c = 0; c < k; ++c) {
      double d2 = 0;
      for (int64_t d = 0; d < dh; ++d) {
        const size_t i = size_t((h * k + c) * dh + d);
        d2 += (a[i] - b[i]) * (a[i] - b[i]);
      }
      acc += std::sqrt(d2);
    }
    drift_[size_t(h)] = acc / double(k);
  }
}

std::map<std::string, std::vector<double>> RoutingAttention::stats() const {
  if (routing_heads() == 0) return {};
  return {{"cluster_max_share", max_share_}, {"unrouted", unrouted_}, {"centroid_drift", drift_}};
}

// ---- config ------------------------------------------------------------------------------------

// The most clusters a config may ask for.
inline constexpr int64_t kMaxClusters = int64_t(1) << 16;

AttentionBuilder parse_routing_attention(ConfigSection& cfg) {
  RoutingAttention::Options o;
  const int64_t clusters = cfg.integer("clusters", 0, 0, kMaxClusters);
  o.window = cfg.integer("window", 0, 0, kMaxLocalBlock);
  // local_heads: one count for every layer, or a list with one per layer (the paper's models keep
  // the first layers local: sparsity_skip_first).
  std::vector<int64_t> local_heads{0};
  const std::string where = cfg.where("local_heads");
  if (const nlohmann::json* l = cfg.value("local_heads")) {
    auto count = [&](const nlohmann::json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > kMaxLocalBlock)
        cfg.fail("local_heads", "must be a count >= 0 or a list of them (one per layer), got ", l->dump());
      return x.get<int64_t>();
    };
    if (l->is_array()) {
      if (l->empty()) cfg.fail("local_heads", "a per-layer list must not be empty");
      local_heads.clear();
      for (const auto& x : *l) local_heads.push_back(count(x));
    } else {
      local_heads = {count(*l)};
    }
  }
  const bool per_layer = local_heads.size() > 1 || (cfg.value("local_heads") && cfg.value("local_heads")->is_array());
  o.local_block = cfg.integer("local_block", 64, 1, kMaxLocalBlock);
  o.nearest = cfg.choice("assign", "top_w", {"top_w", "nearest"}) == "nearest";
  o.decay = cfg.number("decay", 0.999, NumberRange::half_open(0, 1));
  o.commitment = cfg.number("commitment", 1e-4, NumberRange::at_least(0));
  const std::optional<double> scale = parse_attention_scale(cfg);
  o.impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    RoutingAttention::Options opt = o;
    opt.scale = attention_scale(scale, ctx);
    if (per_layer && ctx.layer >= int64_t(local_heads.size()))
      fail<ValueError>("config", where, ": ", local_heads.size(), " per-layer counts, but layer ", ctx.layer,
                       " needs one");
    opt.local_heads = local_heads[per_layer ? size_t(ctx.layer) : 0];
    if (opt.local_heads > ctx.n_heads)
      fail<ValueError>("config", where, ": ", opt.local_heads, " local heads of ", ctx.n_heads, " in layer ",
                       ctx.layer);
    if (clusters > 0) {
      opt.clusters = clusters;
    } else if (ctx.max_len > 0) {
      opt.clusters = std::max<int64_t>(1, std::llround(std::sqrt(double(ctx.max_len))));  // k ≈ √n
    } else {
      fail<ValueError>("config",
                       "routing attention: set \"clusters\" (the default √max_len needs the model's max_len, "
                       "unknown here)");
    }
    return std::make_shared<RoutingAttention>(opt, ctx);
  };
}

}  // namespace attnlab

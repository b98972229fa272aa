// The compressed-row kernel of graph_entmax_attention. Work items are (batch·head): a head's rows are
// visited in order by one thread, so dK and dV (scattered over the edges) have one writer each and the
// results do not depend on threads. Saved for the backward: p per edge (O(E)).
#include "attention/graph_entmax.h"

#include <algorithm>
#include <cmath>

#include "attention/entmax.h"
#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"

namespace attnlab {
using namespace cases;

namespace {

constexpr const char* kOp = "graph_entmax_attention";

struct Problem {
  int64_t B, H, Tq, Tk, dh;
  double alpha, scale;
  std::shared_ptr<const AttentionGraph> graph;
  int64_t max_degree = 0;
};

template <class T>
entmax::Threshold<T> threshold(const T* z, int64_t n, double alpha, T* scratch) {
  if (alpha == 2.0) return entmax::sparsemax_threshold(z, n, scratch);
  if (alpha == 1.5) return entmax::entmax15_threshold(z, n, scratch);
  return entmax::bisect_threshold(z, n, T(alpha), 50, scratch);
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <class T>
void axpy(T a, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

bool parallel_heads(const Problem& p) {
  return p.B * p.H > 1 && double(p.graph->edges()) * double(p.dh) * 4.0 > double(cpu::parallel_grain());
}

// q, k, v contiguous [BH, T, dh]; out [BH, Tq, dh]; probs [E].
template <class T>
void forward_kernel(const Problem& p, const T* q, const T* k, const T* v, T* out, T* probs) {
  const AttentionGraph& g = *p.graph;
  const int64_t dh = p.dh, md = std::max<int64_t>(p.max_degree, 1);
#pragma omp parallel if (parallel_heads(p))
  {
    std::vector<T> z(static_cast<size_t>(md)), scratch(static_cast<size_t>(md));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < p.B * p.H; ++bh)
      for (int64_t i = 0; i < p.Tq; ++i) {
        const int64_t row = bh * p.Tq + i, e0 = g.begin(row), n = g.end(row) - e0;
        const T* qi = q + row * dh;
        T* oi = out + row * dh;
        std::fill(oi, oi + dh, T(0));
        if (n == 0) continue;
        for (int64_t e = 0; e < n; ++e)
          z[size_t(e)] = T(p.scale) * dot(qi, k + (bh * p.Tk + g.cols[size_t(e0 + e)]) * dh, dh);
        const entmax::Threshold<T> th = threshold(z.data(), n, p.alpha, scratch.data());
        entmax::write_probabilities(z.data(), n, T(p.alpha), th, probs + e0);
        for (int64_t e = 0; e < n; ++e)
          if (probs[e0 + e] != T(0)) axpy(probs[e0 + e], v + (bh * p.Tk + g.cols[size_t(e0 + e)]) * dh, oi, dh);
      }
  }
}

template <class T>
void backward_kernel(const Problem& p, const T* q, const T* k, const T* v, const T* probs, const T* go, T* dq, T* dk,
                     T* dv) {
  const AttentionGraph& g = *p.graph;
  const int64_t dh = p.dh, md = std::max<int64_t>(p.max_degree, 1);
#pragma omp parallel if (parallel_heads(p))
  {
    std::vector<T> dp(static_cast<size_t>(md)), dz(static_cast<size_t>(md));
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < p.B * p.H; ++bh)
      for (int64_t i = 0; i < p.Tq; ++i) {
        const int64_t row = bh * p.Tq + i, e0 = g.begin(row), n = g.end(row) - e0;
        const T* gi = go + row * dh;
        for (int64_t e = 0; e < n; ++e) {
          const int64_t j = bh * p.Tk + g.cols[size_t(e0 + e)];
          dp[size_t(e)] = dot(gi, v + j * dh, dh);
          if (probs[e0 + e] != T(0)) axpy(probs[e0 + e], gi, dv + j * dh, dh);
        }
        entmax::backward_row(probs + e0, dp.data(), n, T(p.alpha), dz.data());
        T* dqi = dq + row * dh;
        const T* qi = q + row * dh;
        for (int64_t e = 0; e < n; ++e) {
          if (dz[size_t(e)] == T(0)) continue;
          const int64_t j = bh * p.Tk + g.cols[size_t(e0 + e)];
          const T s = T(p.scale) * dz[size_t(e)];
          axpy(s, k + j * dh, dqi, dh);
          axpy(s, qi, dk + j * dh, dh);
        }
      }
  }
}

std::shared_ptr<AttentionGraph> random_graph(Generator& g, int64_t B, int64_t H, int64_t Tq, int64_t Tk, double keep) {
  const std::vector<double> u = rand({B, H, Tq, Tk}, DType::f64, &g).to_vector<double>();
  std::vector<double> m(u.size());
  for (size_t e = 0; e < u.size(); ++e) m[e] = u[e] < keep;
  return std::make_shared<AttentionGraph>(AttentionGraph::from_mask(from_vector(m, {B, H, Tq, Tk}, DType::b8), B, H));
}

// The gradcheck cases' graphs are fixed (seeded) and shared by the input builder and the function.
std::shared_ptr<const AttentionGraph> case_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, double keep,
                                                 uint64_t seed) {
  Generator g(seed);
  return random_graph(g, B, H, Tq, Tk, keep);
}

// clang-format off
const OpDef kGraphEntmax(
    kOp,
    "p = α-entmax over a row's edges; dV_j += p_e dO_i, dp_e = dO_i·v_j, dz = s∘(dp − Σs dp/Σs) (s = p^(2−α)), "
    "dQ_i = scale Σ_e dz_e k_j, dK_j += scale dz_e q_i",
    {{"1.5-entmax, [1,2,5,3], 60% of the pairs (a row may be empty)",
      [](Generator& g) { return Inputs{rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3}), rn(g, {1, 2, 5, 3})}; },
      [](const Inputs& in) { return graph_entmax_attention(in[0], in[1], in[2], case_graph(1, 2, 5, 5, 0.6, 1), 1.5, 1.3); }},
     {"sparsemax, Tq 4 < Tk 6, batch 2",
      [](Generator& g) { return Inputs{rn(g, {2, 1, 4, 3}), rn(g, {2, 1, 6, 3}), rn(g, {2, 1, 6, 3})}; },
      [](const Inputs& in) { return graph_entmax_attention(in[0], in[1], in[2], case_graph(2, 1, 4, 6, 0.7, 2), 2.0, 1.1); }},
     {"α = 1.3 (bisection), non-contiguous q, k, v",
      [](Generator& g) {
        return Inputs{rn(g, {1, 4, 2, 3}).permute({0, 2, 1, 3}), rn_t(g, {1, 2, 4, 3}), rn(g, {1, 2, 4, 6}).narrow(3, 1, 3)};
      },
      [](const Inputs& in) { return graph_entmax_attention(in[0], in[1], in[2], case_graph(1, 2, 4, 4, 0.8, 3), 1.3, 1.2); }}});
// clang-format on

}  // namespace

Tensor graph_entmax_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                              std::shared_ptr<const AttentionGraph> graph, double alpha, double scale) {
  check_qkv(kOp, q, k, v, {});
  if (!graph) fail<ValueError>(kOp, "no graph given");
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), dh = q.size(3);
  if (graph->B != B || graph->H != H || graph->Tq != Tq || graph->Tk != Tk)
    fail<ShapeError>(kOp, "graph [", graph->B, ", ", graph->H, ", ", graph->Tq, ", ", graph->Tk, "] does not match q ",
                     describe(q), " and k ", describe(k));
  if (!(alpha > 1) || !std::isfinite(alpha)) fail<ValueError>(kOp, "alpha must be a finite number > 1, got ", alpha);
  if (!(scale > 0) || !std::isfinite(scale)) fail<ValueError>(kOp, "scale must be a finite number > 0, got ", scale);
  graph->validate(kOp);
  auto p = std::make_shared<Problem>(Problem{B, H, Tq, Tk, dh, alpha, scale, graph});
  for (int64_t r = 0; r < graph->rows(); ++r) p->max_degree = std::max(p->max_degree, graph->end(r) - graph->begin(r));
  const DType dt = q.dtype();
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  Tensor out = empty(q.shape(), dt), probs = empty({graph->edges()}, dt);
  dispatch_floating(dt, kOp, [&]<class T>() {
    forward_kernel<T>(*p, qc.data<T>(), kc.data<T>(), vc.data<T>(), out.data<T>(), probs.data<T>());
  });
  if (needs_grad({q, k, v}))
    record(out, kGraphEntmax, {q, k, v},
           [p, probs, sq = SavedTensor(qc, kOp), sk = SavedTensor(kc, kOp), sv = SavedTensor(vc, kOp)](
               const Tensor& g, const std::vector<bool>& need) {
             const Tensor &qv = sq.get(), &kv = sk.get(), &vv = sv.get();
             Tensor dq = zeros(qv.shape(), qv.dtype()), dk = zeros(kv.shape(), qv.dtype()),
                    dv = zeros(vv.shape(), qv.dtype());
             const Tensor gc = (g.dtype() == qv.dtype() ? g : g.to(qv.dtype())).contiguous();
             dispatch_floating(qv.dtype(), kOp, [&]<class T>() {
               backward_kernel<T>(*p, qv.data<T>(), kv.data<T>(), vv.data<T>(), probs.data<T>(), gc.data<T>(),
                                  dq.data<T>(), dk.data<T>(), dv.data<T>());
             });
             return std::vector<Tensor>{need[0] ? dq : Tensor(), need[1] ? dk : Tensor(), need[2] ? dv : Tensor()};
           });
  return out;
}

}  // namespace attnlab

#include "attention/sparsefinder.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attention/entmax.h"
#include "autograd/cases.h"
#include "autograd/node.h"

namespace attnlab::sparsefinder {
using namespace cases;

namespace {

constexpr const char* kHinge = "sparsefinder_hinge";

// A graph of the pairs for which keep(bh, i, j) holds among the visible ones.
template <class Keep>
AttentionGraph build(int64_t B, int64_t H, int64_t Tq, int64_t Tk, const AttentionMask& mask, Keep&& keep) {
  const PairVisibility vis(mask, B, Tq, Tk);
  AttentionGraph g{B, H, Tq, Tk, {0}, {}};
  g.row_ptr.reserve(size_t(B * H * Tq + 1));
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      for (int64_t j = 0; j < Tk; ++j)
        if (vis(bh / H, i, j) && keep(bh, i, j)) g.cols.push_back(int32_t(j));
      g.row_ptr.push_back(g.edges());
    }
  return g;
}

void check_projected(const char* op, const Tensor& qp, const Tensor& kp) {
  if (qp.dim() != 4 || kp.dim() != 4 || qp.size(0) != kp.size(0) || qp.size(1) != kp.size(1) ||
      qp.size(3) != kp.size(3))
    fail<ShapeError>(op, "projected queries and keys must be [B, H, Tq, r] and [B, H, Tk, r], got ", describe(qp),
                     " and ", describe(kp));
}

std::vector<double> values(const Tensor& x) { return x.to(DType::f64).contiguous().to_vector<double>(); }

uint64_t draw_index(Generator& gen, uint64_t n) {  // uniform in [0, n)
  return (uint64_t(gen.bits(gen.advance(1))[0]) * n) >> 32;
}

// ---- the hinge loss -------------------------------------------------------------------------------

// Per query: the hinge's argument a_i = ω + Σ_P d − Σ_N d (d the squared distances); the loss and its
// gradient (active where a_i > 0).
template <class T>
double hinge_forward(const PairSample& s, const T* qp, const T* kp, int64_t r, double margin,
                     std::vector<double>& arg) {
  const AttentionGraph& pos = s.pos;
  const int64_t H = pos.H, Tq = pos.Tq, Tk = pos.Tk;
  arg.assign(size_t(pos.rows()), 0.0);
  double total = 0;
  auto dist = [&](int64_t row, int64_t bh, int64_t j) {
    double d2 = 0;
    for (int64_t c = 0; c < r; ++c) {
      const double d = double(qp[row * r + c]) - double(kp[(bh * Tk + j) * r + c]);
      d2 += d * d;
    }
    return d2;
  };
  for (int64_t row = 0; row < pos.rows(); ++row) {
    if (pos.end(row) == pos.begin(row)) continue;  // no gold edge (a padded query): no term
    const int64_t bh = row / Tq, b = bh / H;
    double a = margin;
    for (int64_t e = pos.begin(row); e < pos.end(row); ++e) a += dist(row, bh, pos.cols[size_t(e)]);
    for (int64_t e = s.neg.begin(row); e < s.neg.end(row); ++e) a -= dist(row, bh, s.neg.cols[size_t(e)]);
    arg[size_t(row)] = a;
    const double len = double(std::max<int64_t>(s.valid_queries[size_t(b)], 1));
    if (a > 0) total += a / len;
  }
  return total / double(pos.B * H);
}

template <class T>
void hinge_backward(const PairSample& s, const T* qp, const T* kp, int64_t r, const std::vector<double>& arg, double g,
                    T* dq, T* dk) {
  const AttentionGraph& pos = s.pos;
  const int64_t H = pos.H, Tq = pos.Tq, Tk = pos.Tk;
  for (int64_t row = 0; row < pos.rows(); ++row) {
    if (!(arg[size_t(row)] > 0)) continue;
    const int64_t bh = row / Tq, b = bh / H;
    const double w = g / double(std::max<int64_t>(s.valid_queries[size_t(b)], 1)) / double(pos.B * H);
    auto term = [&](int64_t j, double sign) {  // ∂(sign ‖q' − k'‖²): 2 sign (q' − k') and its negative
      for (int64_t c = 0; c < r; ++c) {
        const double d = 2.0 * sign * w * (double(qp[row * r + c]) - double(kp[(bh * Tk + j) * r + c]));
        dq[row * r + c] += T(d);
        dk[(bh * Tk + j) * r + c] -= T(d);
      }
    };
    for (int64_t e = pos.begin(row); e < pos.end(row); ++e) term(pos.cols[size_t(e)], 1.0);
    for (int64_t e = s.neg.begin(row); e < s.neg.end(row); ++e) term(s.neg.cols[size_t(e)], -1.0);
  }
}

std::shared_ptr<const PairSample> case_pairs(int64_t B, int64_t H, int64_t Tq, int64_t Tk, uint64_t seed) {
  Generator g(seed);
  const std::vector<double> u = rand({B, H, Tq, Tk}, DType::f64, &g).to_vector<double>();
  std::vector<double> m(u.size());
  for (size_t e = 0; e < u.size(); ++e) m[e] = u[e] < 0.35;
  const AttentionGraph gold = AttentionGraph::from_mask(from_vector(m, {B, H, Tq, Tk}, DType::b8), B, H);
  return std::make_shared<PairSample>(sample_pairs(gold, {}, g));
}

// clang-format off
const OpDef kHingeLoss(
    kHinge,
    "a_i = ω + Σ_P ‖q'_i − k'_j‖² − Σ_N ‖q'_i − k'_l‖²; where a_i > 0: dq'_i = 2Σ_P (q'_i − k'_j) − 2Σ_N (q'_i − k'_l), "
    "dk'_j = −2(q'_i − k'_j) (P), +2(q'_i − k'_l) (N); scaled by 1/(length · B · H)",
    {{"[2,2,5,3] queries, 5 keys, margin 1",
      [](Generator& g) { return Inputs{rn(g, {2, 2, 5, 3}), rn(g, {2, 2, 5, 3})}; },
      [](const Inputs& in) { return hinge_loss(in[0], in[1], case_pairs(2, 2, 5, 5, 4), 1.0); }},
     {"Tq 3 < Tk 6, a wide margin (every hinge active), non-contiguous keys",
      [](Generator& g) { return Inputs{rn(g, {1, 2, 3, 2}), rn_t(g, {1, 2, 6, 2})}; },
      [](const Inputs& in) { return hinge_loss(in[0], in[1], case_pairs(1, 2, 3, 6, 5), 20.0); }}});
// clang-format on

}  // namespace

// ---- gold graphs and pairs ------------------------------------------------------------------------

AttentionGraph entmax_support(const Tensor& q, const Tensor& k, const AttentionMask& mask, double scale, double alpha) {
  const char* op = "sparsefinder::entmax_support";
  check_qkv(op, q, k, k, mask);
  if (!(alpha > 1) || !std::isfinite(alpha)) fail<ValueError>(op, "alpha must be a finite number > 1, got ", alpha);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2), dh = q.size(3);
  const std::vector<double> qv = values(q), kv = values(k);
  const PairVisibility vis(mask, B, Tq, Tk);
  AttentionGraph g{B, H, Tq, Tk, {0}, {}};
  std::vector<double> z, p, scratch;
  std::vector<int32_t> keys;
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      z.clear();
      keys.clear();
      for (int64_t j = 0; j < Tk; ++j) {
        if (!vis(bh / H, i, j)) continue;
        double s = 0;
        for (int64_t d = 0; d < dh; ++d) s += qv[size_t((bh * Tq + i) * dh + d)] * kv[size_t((bh * Tk + j) * dh + d)];
        z.push_back(scale * s);
        keys.push_back(int32_t(j));
      }
      const int64_t n = int64_t(z.size());
      p.resize(z.size());
      scratch.resize(z.size());
      if (n > 0) {
        const entmax::Threshold<double> th = alpha == 2.0 ? entmax::sparsemax_threshold(z.data(), n, scratch.data())
                                             : alpha == 1.5
                                                 ? entmax::entmax15_threshold(z.data(), n, scratch.data())
                                                 : entmax::bisect_threshold(z.data(), n, alpha, 50, scratch.data());
        entmax::write_probabilities(z.data(), n, alpha, th, p.data());
        for (int64_t e = 0; e < n; ++e)
          if (p[size_t(e)] > 0) g.cols.push_back(keys[size_t(e)]);
      }
      g.row_ptr.push_back(g.edges());
    }
  return g;
}

PairSample sample_pairs(const AttentionGraph& gold, const AttentionMask& mask, Generator& gen) {
  gold.validate("sparsefinder::sample_pairs");
  const PairVisibility vis(mask, gold.B, gold.Tq, gold.Tk);
  PairSample s{{gold.B, gold.H, gold.Tq, gold.Tk, {0}, {}}, {gold.B, gold.H, gold.Tq, gold.Tk, {0}, {}}, {}};
  for (int64_t b = 0; b < gold.B; ++b) {
    int64_t n = 0;
    for (int64_t i = 0; i < gold.Tq; ++i) n += vis.query(b, i);
    s.valid_queries.push_back(n);
  }
  std::vector<int32_t> cand;
  for (int64_t row = 0; row < gold.rows(); ++row) {
    const int64_t bh = row / gold.Tq, i = row % gold.Tq, b = bh / gold.H;
    cand.clear();
    int64_t e = gold.begin(row), npos = 0;
    for (int64_t j = 0; j < gold.Tk; ++j) {
      const bool is_gold = e < gold.end(row) && gold.cols[size_t(e)] == j;
      if (is_gold) ++e;
      if (!vis(b, i, j)) continue;
      if (is_gold) {
        s.pos.cols.push_back(int32_t(j));
        ++npos;
      } else {
        cand.push_back(int32_t(j));
      }
    }
    // |P_i| negatives without replacement: a partial Fisher–Yates shuffle, then in key order.
    const int64_t nneg = std::min<int64_t>(npos, int64_t(cand.size()));
    for (int64_t t = 0; t < nneg; ++t)
      std::swap(cand[size_t(t)], cand[size_t(t + int64_t(draw_index(gen, uint64_t(int64_t(cand.size()) - t))))]);
    std::sort(cand.begin(), cand.begin() + nneg);
    s.neg.cols.insert(s.neg.cols.end(), cand.begin(), cand.begin() + nneg);
    s.pos.row_ptr.push_back(s.pos.edges());
    s.neg.row_ptr.push_back(s.neg.edges());
  }
  return s;
}

Tensor hinge_loss(const Tensor& qp, const Tensor& kp, std::shared_ptr<const PairSample> pairs, double margin) {
  check_projected(kHinge, qp, kp);
  if (!pairs) fail<ValueError>(kHinge, "no pairs given");
  const AttentionGraph& pos = pairs->pos;
  if (pos.B != qp.size(0) || pos.H != qp.size(1) || pos.Tq != qp.size(2) || pos.Tk != kp.size(2) ||
      pairs->neg.rows() != pos.rows() || int64_t(pairs->valid_queries.size()) != pos.B)
    fail<ShapeError>(kHinge, "pairs for [", pos.B, ", ", pos.H, ", ", pos.Tq, ", ", pos.Tk, "] do not match ",
                     describe(qp), " and ", describe(kp));
  if (qp.dtype() != kp.dtype()) fail<DTypeError>(kHinge, "dtype mismatch: ", describe(qp), ", ", describe(kp));
  if (!std::isfinite(margin) || margin < 0) fail<ValueError>(kHinge, "margin must be finite and >= 0, got ", margin);
  const int64_t r = qp.size(3);
  const Tensor qc = qp.contiguous(), kc = kp.contiguous();
  auto arg = std::make_shared<std::vector<double>>();
  const double loss = dispatch_floating(qp.dtype(), kHinge, [&]<class T>() {
    return hinge_forward<T>(*pairs, qc.data<T>(), kc.data<T>(), r, margin, *arg);
  });
  Tensor out = full({}, loss, qp.dtype());
  if (needs_grad({qp, kp}))
    record(out, kHingeLoss, {qp, kp},
           [pairs, arg, r, sq = SavedTensor(qc, kHinge), sk = SavedTensor(kc, kHinge)](const Tensor& g,
                                                                                       const std::vector<bool>& need) {
             const Tensor &qv = sq.get(), &kv = sk.get();
             Tensor dq = zeros(qv.shape(), qv.dtype()), dk = zeros(kv.shape(), qv.dtype());
             const double gs = g.to(DType::f64).item<double>();
             dispatch_floating(qv.dtype(), kHinge, [&]<class T>() {
               hinge_backward<T>(*pairs, qv.data<T>(), kv.data<T>(), r, *arg, gs, dq.data<T>(), dk.data<T>());
             });
             return std::vector<Tensor>{need[0] ? dq : Tensor(), need[1] ? dk : Tensor()};
           });
  return out;
}

// ---- projections ------------------------------------------------------------------------------------

Projections::Projections(int64_t heads, int64_t head_dim, int64_t rank, DType dtype, Generator& gen)
    : rank_(rank),
      // PyTorch's Linear initialisation per head: U(±1/√dh) for the weights and the bias.
      weight_(register_parameter(
          "weight", init::uniform({heads, head_dim, rank}, 1.0 / std::sqrt(double(head_dim)), dtype, gen))),
      bias_(
          register_parameter("bias", init::uniform({heads, 1, rank}, 1.0 / std::sqrt(double(head_dim)), dtype, gen))) {
  if (heads < 1 || head_dim < 1 || rank < 1)
    fail<ValueError>("sparsefinder::Projections", "heads, head_dim and rank must be >= 1, got ", heads, ", ", head_dim,
                     ", ", rank);
}

Tensor Projections::project(const Tensor& x) const {
  if (x.dim() != 4 || x.size(1) != weight_.size(0) || x.size(3) != weight_.size(1))
    fail<ShapeError>("sparsefinder::Projections", "expected [B, ", weight_.size(0), ", T, ", weight_.size(1), "], got ",
                     describe(x));
  return add(matmul(x, weight_), bias_);  // [B, H, T, dh] @ [H, dh, r] + [H, 1, r]
}

// ---- predictors ---------------------------------------------------------------------------------------

AttentionGraph distance_graph(const Tensor& qp, const Tensor& kp, double threshold, const AttentionMask& mask) {
  check_projected("sparsefinder::distance_graph", qp, kp);
  const int64_t B = qp.size(0), H = qp.size(1), Tq = qp.size(2), Tk = kp.size(2), r = qp.size(3);
  const std::vector<double> q = values(qp), k = values(kp);
  return build(B, H, Tq, Tk, mask, [&](int64_t bh, int64_t i, int64_t j) {
    double d2 = 0;
    for (int64_t c = 0; c < r; ++c) {
      const double d = q[size_t((bh * Tq + i) * r + c)] - k[size_t((bh * Tk + j) * r + c)];
      d2 += d * d;
    }
    return d2 < threshold;
  });
}

Tensor equal_size_buckets(const Tensor& x, int64_t bucket_size, const Tensor& padding) {
  const char* op = "sparsefinder::equal_size_buckets";
  if (x.dim() != 4) fail<ShapeError>(op, "expected [B, H, T, r], got ", describe(x));
  if (bucket_size < 1) fail<ValueError>(op, "bucket_size must be >= 1, got ", bucket_size);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), r = x.size(3);
  if (padding.defined() && (padding.dim() != 2 || padding.size(0) != B || padding.size(1) != T))
    fail<ShapeError>(op, "padding must be [B, T] = [", B, ", ", T, "], got ", describe(padding));
  const std::vector<double> v = values(x), pad = padding.defined() ? values(padding) : std::vector<double>();
  std::vector<double> out(v.size());
  std::vector<int64_t> order(static_cast<size_t>(T));
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t c = 0; c < r; ++c) {
      auto key = [&](int64_t t) {  // padded tokens sort last
        const bool padded = !pad.empty() && pad[size_t((bh / H) * T + t)] != 0;
        return padded ? std::numeric_limits<double>::infinity() : v[size_t((bh * T + t) * r + c)];
      };
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
      for (int64_t rank = 0; rank < T; ++rank)
        out[size_t((bh * T + order[size_t(rank)]) * r + c)] = double(rank / bucket_size);
    }
  return from_vector(out, {B, H, T, r}, DType::i64);
}

AttentionGraph bucket_graph(const Tensor& qp, const Tensor& kp, int64_t bucket_size, const AttentionMask& mask) {
  check_projected("sparsefinder::bucket_graph", qp, kp);
  const int64_t B = qp.size(0), H = qp.size(1), Tq = qp.size(2), Tk = kp.size(2), r = qp.size(3);
  const Tensor qpad = Tq == Tk ? mask.key_padding : Tensor();
  const std::vector<double> qb = values(equal_size_buckets(qp, bucket_size, qpad)),
                            kb = values(equal_size_buckets(kp, bucket_size, mask.key_padding));
  return build(B, H, Tq, Tk, mask, [&](int64_t bh, int64_t i, int64_t j) {
    for (int64_t c = 0; c < r; ++c)
      if (qb[size_t((bh * Tq + i) * r + c)] == kb[size_t((bh * Tk + j) * r + c)]) return true;
    return false;
  });
}

Centroids fit_kmeans(const Tensor& qp, const Tensor& kp, int64_t clusters, int64_t iterations, Generator& gen) {
  const char* op = "sparsefinder::fit_kmeans";
  check_projected(op, qp, kp);
  if (clusters < 1 || iterations < 0)
    fail<ValueError>(op, "clusters must be >= 1 and iterations >= 0, got ", clusters, ", ", iterations);
  const int64_t B = qp.size(0), H = qp.size(1), Tq = qp.size(2), Tk = kp.size(2), r = qp.size(3);
  const std::vector<double> q = values(qp), k = values(kp);
  std::vector<double> cent(size_t(H * clusters * r));
  for (int64_t h = 0; h < H; ++h) {
    // The head's points: every projected query and key of every sequence.
    std::vector<const double*> pts;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Tq; ++i) pts.push_back(&q[size_t(((b * H + h) * Tq + i) * r)]);
      for (int64_t j = 0; j < Tk; ++j) pts.push_back(&k[size_t(((b * H + h) * Tk + j) * r)]);
    }
    const int64_t n = int64_t(pts.size());
    if (n < clusters) fail<ValueError>(op, clusters, " clusters need at least as many points, head ", h, " has ", n);
    double* c = &cent[size_t(h * clusters * r)];
    auto d2 = [r](const double* a, const double* b) {
      double s = 0;
      for (int64_t t = 0; t < r; ++t) s += (a[t] - b[t]) * (a[t] - b[t]);
      return s;
    };
    // k-means++: the first centre uniformly, each next one with probability ∝ squared distance.
    std::vector<double> best(size_t(n), std::numeric_limits<double>::infinity());
    const double* first = pts[size_t(draw_index(gen, uint64_t(n)))];
    std::copy(first, first + r, c);
    for (int64_t m = 1; m <= clusters; ++m) {
      double total = 0;
      for (int64_t t = 0; t < n; ++t)
        total += best[size_t(t)] = std::min(best[size_t(t)], d2(pts[size_t(t)], c + (m - 1) * r));
      if (m == clusters) break;
      double u = double(gen.bits(gen.advance(1))[0]) / 4294967296.0 * total;
      int64_t pick = n - 1;
      for (int64_t t = 0; t < n; ++t)
        if ((u -= best[size_t(t)]) < 0) {
          pick = t;
          break;
        }
      std::copy(pts[size_t(pick)], pts[size_t(pick)] + r, c + m * r);
    }
    // Lloyd's iterations; an emptied cluster keeps its centre.
    std::vector<double> sum(size_t(clusters * r));
    std::vector<int64_t> count(static_cast<size_t>(clusters));
    for (int64_t it = 0; it < iterations; ++it) {
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(count.begin(), count.end(), 0);
      for (int64_t t = 0; t < n; ++t) {
        int64_t arg = 0;
        double bd = d2(pts[size_t(t)], c);
        for (int64_t m = 1; m < clusters; ++m) {
          const double d = d2(pts[size_t(t)], c + m * r);
          if (d < bd) bd = d, arg = m;
        }
        ++count[size_t(arg)];
        for (int64_t s = 0; s < r; ++s) sum[size_t(arg * r + s)] += pts[size_t(t)][s];
      }
      for (int64_t m = 0; m < clusters; ++m)
        if (count[size_t(m)] > 0)
          for (int64_t s = 0; s < r; ++s) c[m * r + s] = sum[size_t(m * r + s)] / double(count[size_t(m)]);
    }
  }
  return {from_vector(cent, {H, clusters, r}, DType::f64)};
}

AttentionGraph cluster_graph(const Tensor& qp, const Tensor& kp, const Centroids& centroids, int64_t top_clusters,
                             const AttentionMask& mask) {
  const char* op = "sparsefinder::cluster_graph";
  check_projected(op, qp, kp);
  const int64_t B = qp.size(0), H = qp.size(1), Tq = qp.size(2), Tk = kp.size(2), r = qp.size(3);
  if (!centroids.c.defined() || centroids.c.dim() != 3 || centroids.c.size(0) != H || centroids.c.size(2) != r)
    fail<ShapeError>(op, "centroids must be [H, clusters, r] = [", H, ", C, ", r, "], got ", describe(centroids.c));
  const int64_t C = centroids.c.size(1);
  if (top_clusters < 1 || top_clusters > C)
    fail<ValueError>(op, "top_clusters must be in [1, ", C, "], got ", top_clusters);
  const std::vector<double> c = values(centroids.c);
  // Per token, a bitmask of its top clusters (the nearest centroids).
  auto tops = [&](const Tensor& x, int64_t T) {
    const std::vector<double> v = values(x);
    std::vector<std::vector<uint8_t>> out(size_t(B * H * T), std::vector<uint8_t>(size_t(C)));
    std::vector<std::pair<double, int64_t>> d(static_cast<size_t>(C));
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t m = 0; m < C; ++m) {
          double s = 0;
          for (int64_t a = 0; a < r; ++a) {
            const double diff = v[size_t((bh * T + t) * r + a)] - c[size_t(((bh % H) * C + m) * r + a)];
            s += diff * diff;
          }
          d[size_t(m)] = {s, m};
        }
        std::partial_sort(d.begin(), d.begin() + top_clusters, d.end());
        for (int64_t m = 0; m < top_clusters; ++m) out[size_t(bh * T + t)][size_t(d[size_t(m)].second)] = 1;
      }
    return out;
  };
  const auto qt = tops(qp, Tq), kt = tops(kp, Tk);
  return build(B, H, Tq, Tk, mask, [&](int64_t bh, int64_t i, int64_t j) {
    const auto &a = qt[size_t(bh * Tq + i)], &b = kt[size_t(bh * Tk + j)];
    for (int64_t m = 0; m < C; ++m)
      if (a[size_t(m)] && b[size_t(m)]) return true;
    return false;
  });
}

AttentionGraph window_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t window, int64_t n_global,
                            const AttentionMask& mask) {
  if (window < 0 || n_global < 0)
    fail<ValueError>("sparsefinder::window_graph", "window and n_global must be >= 0, got ", window, ", ", n_global);
  // Row by row over the window's range only (the benchmark builds windows at n = 16K).
  const PairVisibility vis(mask, B, Tq, Tk);
  AttentionGraph g{B, H, Tq, Tk, {0}, {}};
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      const int64_t pos = i + Tk - Tq;  // the query's position among the keys
      // Keys [0, n_global) ∪ [lo, hi): two intervals, merged when they meet.
      const int64_t ng = std::min(n_global, Tk);
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window / 2) : 0,
                    hi = window > 0 ? std::clamp<int64_t>(pos + window / 2 + 1, 0, Tk) : 0;
      auto add = [&](int64_t from, int64_t to) {
        for (int64_t j = from; j < to; ++j)
          if (vis(bh / H, i, j)) g.cols.push_back(int32_t(j));
      };
      if (pos < n_global) {  // a global query sees every key
        add(0, Tk);
      } else if (lo >= hi) {
        add(0, ng);
      } else if (ng < lo) {
        add(0, ng);
        add(lo, hi);
      } else {
        add(0, std::max(ng, hi));
      }
      g.row_ptr.push_back(g.edges());
    }
  return g;
}

AttentionGraph random_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, double density, const AttentionMask& mask,
                            Generator& gen) {
  if (!(density >= 0 && density <= 1))
    fail<ValueError>("sparsefinder::random_graph", "density must be in [0, 1], got ", density);
  const std::vector<double> u = rand({B, H, Tq, Tk}, DType::f64, &gen).to_vector<double>();
  return build(B, H, Tq, Tk, mask,
               [&](int64_t bh, int64_t i, int64_t j) { return u[size_t((bh * Tq + i) * Tk + j)] < density; });
}

AttentionGraph strided_graph(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t stride, const AttentionMask& mask) {
  if (stride < 1) fail<ValueError>("sparsefinder::strided_graph", "stride must be >= 1, got ", stride);
  return build(B, H, Tq, Tk, mask, [&](int64_t, int64_t i, int64_t j) {
    const int64_t pos = i + Tk - Tq;
    return j / stride == pos / stride || j % stride == stride - 1;  // own block, and each block's last key
  });
}

AttentionGraph graph_union(const AttentionGraph& a, const AttentionGraph& b) {
  if (a.B != b.B || a.H != b.H || a.Tq != b.Tq || a.Tk != b.Tk)
    fail<ShapeError>("sparsefinder::graph_union", "graphs of different shapes");
  a.validate("sparsefinder::graph_union");
  b.validate("sparsefinder::graph_union");
  AttentionGraph g{a.B, a.H, a.Tq, a.Tk, {0}, {}};
  for (int64_t row = 0; row < a.rows(); ++row) {
    std::set_union(a.cols.begin() + a.begin(row), a.cols.begin() + a.end(row), b.cols.begin() + b.begin(row),
                   b.cols.begin() + b.end(row), std::back_inserter(g.cols));
    g.row_ptr.push_back(g.edges());
  }
  return g;
}

}  // namespace attnlab::sparsefinder

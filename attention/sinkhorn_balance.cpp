// Log-domain Sinkhorn balancing of block sort logits, fused (one work item per matrix, forward and
// the unrolled backward), its composite reference, and the hard permutation for inference.
// Derivation: docs/sparse-sinkhorn.md.
#include "attention/sinkhorn_balance.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "attention/attention.h"
#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"

namespace attnlab {
using namespace cases;

namespace {
constexpr const char* kOpName = "sinkhorn_balance";
constexpr int64_t kMaxIterations = 1000;

// ---- one matrix: the two normalisations ---------------------------------------------------------

// Row step (F_r): a = z − LSE over the row's unblocked entries; a row with none stays −inf.
template <class T>
void row_step(const T* z, const uint8_t* blk, T* a, int64_t n) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const T* zr = z + i * n;
    const uint8_t* br = blk + i * n;
    T* ar = a + i * n;
    T m = ninf;
    for (int64_t j = 0; j < n; ++j)
      if (!br[j]) m = std::max(m, zr[j]);
    if (m == ninf) {
      std::fill(ar, ar + n, ninf);
      continue;
    }
    double s = 0;
    for (int64_t j = 0; j < n; ++j)
      if (!br[j]) s += std::exp(double(zr[j] - m));
    const double l = double(m) + std::log(s);
    for (int64_t j = 0; j < n; ++j) ar[j] = br[j] ? ninf : T(double(zr[j]) - l);
  }
}

// Column step (F_c): z = a − C, with C the column's LSE over its unblocked rows (causal: over rows
// i' <= i only, a running prefix LSE). c, when set, receives C per entry (the backward's prefix
// weights need it). Rows run outer and columns inner, so every pass is contiguous.
template <class T>
void col_step(const T* a, const uint8_t* blk, T* z, T* c, int64_t n, bool causal, std::vector<double>& m,
              std::vector<double>& s) {
  const double ninf = -std::numeric_limits<double>::infinity();
  m.assign(size_t(n), ninf);
  s.assign(size_t(n), 0.0);
  auto lse = [&](int64_t j) { return m[size_t(j)] == ninf ? ninf : m[size_t(j)] + std::log(s[size_t(j)]); };
  if (causal) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t x = i * n + j;
        if (!blk[x]) {  // online LSE: rescale the running sum when the maximum grows
          const double v = a[x];
          if (v > m[size_t(j)]) {
            s[size_t(j)] = s[size_t(j)] * std::exp(m[size_t(j)] - v) + 1;
            m[size_t(j)] = v;
          } else {
            s[size_t(j)] += std::exp(v - m[size_t(j)]);
          }
        }
        const double C = lse(j);
        if (c) c[x] = T(C);
        z[x] = blk[x] ? T(ninf) : T(double(a[x]) - C);
      }
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (!blk[i * n + j]) m[size_t(j)] = std::max(m[size_t(j)], double(a[i * n + j]));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (!blk[i * n + j]) s[size_t(j)] += std::exp(double(a[i * n + j]) - m[size_t(j)]);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t x = i * n + j;
      z[x] = blk[x] ? T(ninf) : T(double(a[x]) - lse(j));
    }
}

// The iterates of one matrix: it[2t] = A^{t+1}, it[2t+1] = Z^{t+1} (each n·n), and for the causal form
// cs[t] = C^{t+1}. z0 already holds −inf at blocked entries.
template <class T>
void iterate(const T* z0, const uint8_t* blk, int64_t n, const SinkhornBalance& o, T* it, T* cs) {
  std::vector<double> m, s;
  const int64_t nn = n * n;
  const T* prev = z0;
  for (int64_t t = 0; t < o.iterations; ++t) {
    T* a = it + 2 * t * nn;
    T* z = a + nn;
    row_step(prev, blk, a, n);
    col_step(a, blk, z, o.causal ? cs + t * nn : nullptr, n, o.causal, m, s);
    prev = z;
  }
}

// The iterates of one matrix from its logits z (n·n) with blocked entries set to −inf first.
template <class T>
struct Iterates {
  std::vector<T> it, cs;
  Iterates(const T* z, const uint8_t* blk, int64_t n, const SinkhornBalance& o)
      : it(size_t(2 * o.iterations * n * n)), cs(o.causal ? size_t(o.iterations * n * n) : 0) {
    std::vector<T> z0(z, z + n * n);
    for (int64_t x = 0; x < n * n; ++x)
      if (blk[x]) z0[size_t(x)] = -std::numeric_limits<T>::infinity();
    iterate(z0.data(), blk, n, o, it.data(), cs.data());
  }
};

// The unrolled backward of one matrix, from g = ∂L/∂S to ∂L/∂z0 (in zbar, n·n), t = T..1:
//   column step  Ā_kj = Z̄_kj − exp(Z_kj) w_kj,  w_kj = Σ_{i ≥ k} Z̄_ij exp(C_kj − C_ij) over the rows
//                whose normaliser holds k (all rows: w_kj = Σ_i Z̄_ij; causal: the suffix recurrence
//                w_k = Z̄_k + exp(C_k − C_{k+1}) w_{k+1}, every exponent <= 0 as the prefix LSE grows)
//   row step     Z̄_ik = Ā_ik − exp(A_ik) Σ_j Ā_ij
template <class T>
void backward_matrix(const T* it, const T* cs, const T* g, int64_t n, const SinkhornBalance& o, T* zbar,
                     std::vector<double>& w) {
  const int64_t nn = n * n;
  const double ninf = -std::numeric_limits<double>::infinity();
  const T* zT = it + (2 * o.iterations - 1) * nn;
  for (int64_t x = 0; x < nn; ++x) zbar[x] = g[x] * std::exp(zT[x]);  // S = exp(Z^T): Z̄ = g ∘ S
  std::vector<T> abar(static_cast<size_t>(nn));
  for (int64_t t = o.iterations - 1; t >= 0; --t) {
    const T* a = it + 2 * t * nn;
    const T* z = a + nn;
    w.assign(size_t(n), 0.0);
    if (!o.causal) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) w[size_t(j)] += zbar[i * n + j];
      for (int64_t x = 0; x < nn; ++x) abar[size_t(x)] = T(zbar[x] - std::exp(double(z[x])) * w[size_t(x % n)]);
    } else {
      const T* C = cs + t * nn;
      for (int64_t k = n - 1; k >= 0; --k)
        for (int64_t j = 0; j < n; ++j) {
          const int64_t x = k * n + j;
          const double f = (k == n - 1 || double(C[x]) == ninf) ? 0.0 : std::exp(double(C[x]) - double(C[x + n]));
          w[size_t(j)] = zbar[x] + f * w[size_t(j)];
          abar[size_t(x)] = T(zbar[x] - std::exp(double(z[x])) * w[size_t(j)]);
        }
    }
    for (int64_t i = 0; i < n; ++i) {
      double rs = 0;
      for (int64_t j = 0; j < n; ++j) rs += abar[size_t(i * n + j)];
      for (int64_t j = 0; j < n; ++j)
        zbar[i * n + j] = T(abar[size_t(i * n + j)] - std::exp(double(a[i * n + j])) * rs);
    }
  }
}

// ---- the op -------------------------------------------------------------------------------------

void check(const Tensor& z, const Tensor& blocked, const SinkhornBalance& o) {
  if (z.dim() != 4 || z.size(2) != z.size(3))
    fail<ShapeError>(kOpName, "z must be [B, H, N, N] sort logits, got ", describe(z));
  if (!is_floating(z.dtype())) fail<DTypeError>(kOpName, "z must be f32 or f64, got ", describe(z));
  if (o.iterations < 1 || o.iterations > kMaxIterations)
    fail<ValueError>(kOpName, "iterations must be in [1, ", kMaxIterations, "], got ", o.iterations);
  if (blocked.defined() && blocked.dtype() != DType::b8)
    fail<DTypeError>(kOpName, "blocked must be b8, got ", describe(blocked));
  if (blocked.defined()) broadcast_shapes(kOpName, blocked.shape(), z.shape());
}

// The blocked entries expanded to z's shape, contiguous (0 everywhere when none).
std::vector<uint8_t> expand_blocked(const Tensor& blocked, const Shape& s, int64_t n, bool causal) {
  std::vector<uint8_t> out(size_t(shape_numel(s)), 0);
  if (blocked.defined()) out = blocked.expand(s).contiguous().to_vector<uint8_t>();
  if (causal)
    for (size_t m = 0; m < out.size() / size_t(n * n); ++m)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = i; j < n; ++j) out[m * size_t(n * n) + size_t(i * n + j)] = 1;
  return out;
}

// Runs body(m) for every matrix, in parallel when the work is large enough; each call owns matrix m.
template <class Body>
void for_each_matrix(int64_t mats, double work, Body body) {
  const bool par = mats > 1 && work >= double(cpu::parallel_grain()) && !omp_in_parallel();
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t m = 0; m < mats; ++m) body(m);
}

const OpDef kSinkhornBalance(
    kOpName,
    "S = exp(Z^T); t = T..1: Ā = Z̄ − exp(Z^t) ∘ w (w: column sums of Z̄, causal: suffix sums weighted by "
    "exp(C_k − C_i)), Z̄ = Ā − exp(A^t) ∘ rowsum(Ā); dz = Z̄^0 (0 where blocked)",
    {{"T 3 on [1, 2, 4, 4]",
      [](Generator& g) {
        return Inputs{rn(g, {1, 2, 4, 4})};
      },
      [](const Inputs& in) {
        return sinkhorn_balance(in[0], {}, {3, false});
      }},
     {"T 2, causal, last block padded (row and column blocked), [2, 1, 5, 5]",
      [](Generator& g) {
        std::vector<double> blk(25, 0);
        for (int i = 0; i < 5; ++i) blk[size_t(i * 5 + 4)] = blk[size_t(20 + i)] = 1;
        return Inputs{rn(g, {2, 1, 5, 5}), from_vector(blk, {1, 1, 5, 5}, DType::b8)};
      },
      [](const Inputs& in) {
        return sinkhorn_balance(in[0], in[1], {2, true});
      }},
     {"T 7, causal, non-contiguous [1, 1, 4, 4]",
      [](Generator& g) {
        return Inputs{rn_t(g, {1, 1, 4, 4})};
      },
      [](const Inputs& in) {
        return sinkhorn_balance(in[0], {}, {7, true});
      }}});

}  // namespace

Tensor sinkhorn_blocked(const Tensor& blocked, int64_t n, bool causal) {
  if (!causal) return blocked;
  Tensor tri = empty({n, n}, DType::b8);
  uint8_t* p = tri.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) p[i * n + j] = j >= i;  // only strictly past blocks j < i
  return blocked.defined() ? blocked_by_either(blocked, tri) : tri;
}

Tensor sinkhorn_balance(const Tensor& z, const Tensor& blocked, const SinkhornBalance& o) {
  check(z, blocked, o);
  const int64_t n = z.size(2), nn = n * n, mats = z.size(0) * z.size(1);
  auto blk = std::make_shared<const std::vector<uint8_t>>(expand_blocked(blocked, z.shape(), n, o.causal));
  Tensor out = empty(z.shape(), z.dtype());
  const double work = double(mats) * double(nn) * double(o.iterations) * 8;
  dispatch_floating(z.dtype(), kOpName, [&]<class T>() {
    const Tensor zc = z.contiguous();
    const T* pz = zc.data<T>();
    T* po = out.data<T>();
    for_each_matrix(mats, work, [&](int64_t m) {
      const Iterates<T> its(pz + m * nn, blk->data() + m * nn, n, o);
      const T* zT = its.it.data() + (2 * o.iterations - 1) * nn;
      for (int64_t x = 0; x < nn; ++x) po[m * nn + x] = std::exp(zT[x]);
    });
  });
  if (needs_grad({z}))
    record(out, kSinkhornBalance, {z},
           [sz = SavedTensor(z.detach(), kOpName), blk, o, n, nn, mats](const Tensor& g, const std::vector<bool>&) {
             const Tensor zc = sz.get().contiguous(), gc = g.contiguous();
             Tensor dz = empty(zc.shape(), zc.dtype());
             dispatch_floating(zc.dtype(), kOpName, [&]<class T>() {
               const T *pz = zc.data<T>(), *pg = gc.data<T>();
               T* pd = dz.data<T>();
               for_each_matrix(mats, double(mats) * double(nn) * double(o.iterations) * 16, [&](int64_t m) {
                 // Recompute the iterates (2T + T·causal matrices of n², per thread) rather than keep
                 // them from the forward: the sort matrices of every layer would otherwise stay alive.
                 const uint8_t* b = blk->data() + m * nn;
                 const Iterates<T> its(pz + m * nn, b, n, o);
                 std::vector<double> w;
                 backward_matrix(its.it.data(), its.cs.data(), pg + m * nn, n, o, pd + m * nn, w);
                 for (int64_t x = 0; x < nn; ++x)
                   if (b[x]) pd[m * nn + x] = T(0);
               });
             });
             return std::vector<Tensor>{dz};
           });
  return out;
}

Tensor sinkhorn_balance_composite(const Tensor& z, const Tensor& blocked, const SinkhornBalance& o) {
  check(z, blocked, o);
  const int64_t n = z.size(2);
  const double ninf = -std::numeric_limits<double>::infinity();
  const Tensor blk = sinkhorn_blocked(blocked, n, o.causal);
  Tensor L = blk.defined() ? masked_fill(z, blk, ninf) : z;
  // Causal column normaliser: C = log(tri · exp(L − m)) + m with tri the lower-triangular ones and m
  // the column maximum (a constant: the LSE does not depend on it). Entries whose prefix is empty get
  // log(0 + 1) = 0 there instead of −inf − −inf, and are blocked anyway.
  Tensor tri;
  if (o.causal) tri = logical_not(sinkhorn_blocked({}, n, true)).to(z.dtype()) + eye(n, z.dtype());
  for (int64_t t = 0; t < o.iterations; ++t) {
    L = log_softmax(L, -1);
    if (!o.causal) {
      L = log_softmax(L, -2);
      continue;
    }
    Tensor m = max(L.detach(), -2, true);
    m = masked_fill(m, eq(m, full_like(m, ninf)), 0.0);
    const Tensor P = matmul(tri, exp(L - m));
    const Tensor empty_prefix = eq(P.detach(), zeros_like(P)).to(z.dtype());
    L = masked_fill(L - (log(P + empty_prefix) + m), blk, ninf);
  }
  return exp(L);
}

Tensor hard_permutation(const Tensor& s) {
  if (s.dim() != 4 || s.size(2) != s.size(3))
    fail<ShapeError>("hard_permutation", "s must be [B, H, N, N], got ", describe(s));
  const int64_t n = s.size(2), nn = n * n, mats = s.size(0) * s.size(1);
  const std::vector<double> v = s.detach().contiguous().to(DType::f64).to_vector<double>();
  std::vector<double> out(v.size(), 0.0);
  std::vector<int64_t> order(static_cast<size_t>(nn));
  for (int64_t m = 0; m < mats; ++m) {
    const double* sm = v.data() + m * nn;
    std::iota(order.begin(), order.end(), 0);
    // Largest first; ties by index, so the result does not depend on the sort's implementation.
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return sm[a] > sm[b] || (sm[a] == sm[b] && a < b); });
    std::vector<char> row_used(size_t(n), 0), col_used(size_t(n), 0);
    for (int64_t x : order) {
      if (!(sm[x] > 0)) break;
      const int64_t i = x / n, j = x % n;
      if (row_used[size_t(i)] || col_used[size_t(j)]) continue;
      row_used[size_t(i)] = col_used[size_t(j)] = 1;
      out[size_t(m * nn + x)] = 1;
    }
  }
  return from_vector(out, s.shape(), s.dtype());
}

}  // namespace attnlab

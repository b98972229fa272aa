#include "layers/functional.h"

#include <cmath>
#include <cstring>
#include <vector>

#include <omp.h>

#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/blas.h"
#include "core/cpu/loops.h"
#include "core/cpu/vmath.h"

namespace attnlab {
using namespace cases;

// ---- linear ------------------------------------------------------------------------------------

static const OpDef kLinear(
    "linear", "y = x Wᵀ + b: dx = g W; dW = gᵀ x; db = Σ_rows g",
    {{"[3,5] x W[4,5] + b[4]", [](Generator& g) { return Inputs{rn(g, {3, 5}), rn(g, {4, 5}), rn(g, {4})}; },
      [](const Inputs& in) { return linear(in[0], in[1], in[2]); }},
     {"[2,3,5] without bias", [](Generator& g) { return Inputs{rn(g, {2, 3, 5}), rn(g, {4, 5})}; },
      [](const Inputs& in) { return linear(in[0], in[1]); }},
     {"non-contiguous x [2,5,3]ᵀ and transposed W", [](Generator& g) {
        return Inputs{rn(g, {2, 5, 3}).transpose(1, 2), rn(g, {5, 4}).t(), rn(g, {4})}; },
      [](const Inputs& in) { return linear(in[0], in[1], in[2]); }}});

// One GEMM for all leading dims. The bias is written into y first and the GEMM accumulates onto it
// (beta = 1), so the bias costs no extra pass over y (and BLAS skips its beta = 0 clearing pass).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (weight.dim() != 2) fail<ShapeError>("linear", "weight must be [out, in], got ", describe(weight));
  if (x.dim() == 0 || x.size(-1) != weight.size(1))
    fail<ShapeError>("linear", "input ", describe(x), " does not end in the weight's in-features ", describe(weight));
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0)))
    fail<ShapeError>("linear", "bias ", describe(bias), " does not match weight ", describe(weight));
  if (x.dtype() != weight.dtype() || (bias.defined() && bias.dtype() != x.dtype()) || !is_floating(x.dtype()))
    fail<DTypeError>("linear", "needs one floating dtype, got ", describe(x), ", ", describe(weight),
                     bias.defined() ? ", " + describe(bias) : std::string());
  const int64_t in = weight.size(1), out = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out;
  Tensor x2 = x.detach().reshape({-1, in});  // views for the kernel: no nodes of their own on the tape
  const int64_t rows = x2.size(0);
  Tensor y = empty({rows, out}, x.dtype());
  if (rows > 0) {
    cpu::MatrixArg A, B;
    Tensor xa = cpu::blas_matrix(x2, A), wt = cpu::blas_matrix(weight.detach().t(), B);
    dispatch_floating(x.dtype(), "linear", [&]<class T>() {
      T* py = y.data<T>();
      if (bias.defined()) {
        Tensor bc = bias.contiguous();
        const T* pb = bc.data<T>();
#pragma omp parallel for if (rows * out >= cpu::parallel_grain()) schedule(static)
        for (int64_t r = 0; r < rows; ++r) std::memcpy(py + r * out, pb, size_t(out) * sizeof(T));
      } else if (in == 0) {
        std::memset(py, 0, size_t(rows * out) * sizeof(T));
      }
      if (in > 0) cpu::gemm(rows, out, in, T(1), xa.data<T>(), A, wt.data<T>(), B, T(bias.defined() ? 1 : 0), py, out);
    });
  }
  y = y.reshape(out_shape);
  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (needs_grad(inputs))
    record(y, kLinear, inputs,
           [sx = SavedTensor(x2, "linear"), sw = SavedTensor(weight, "linear"), x_shape = x.shape(), rows, in,
            out](const Tensor& g, const std::vector<bool>& need) {
             cpu::MatrixArg G, X, W;
             Tensor g2 = cpu::blas_matrix(g.reshape({rows, out}), G);
             std::vector<Tensor> grads(need.size());  // [dx, dW] or [dx, dW, db]
             if (rows == 0 || in == 0 || out == 0) {
               if (need[0]) grads[0] = zeros(x_shape, g.dtype());
               if (need[1]) grads[1] = zeros({out, in}, g.dtype());
               if (need.size() > 2 && need[2]) grads[2] = rows == 0 ? zeros({out}, g.dtype()) : sum(g2, 0);
               return grads;
             }
             dispatch_floating(g.dtype(), "linear backward", [&]<class T>() {
               if (need[0]) {  // dx = g W
                 Tensor w = cpu::blas_matrix(sw.get(), W);
                 Tensor dx = empty({rows, in}, g.dtype());
                 cpu::gemm(rows, in, out, T(1), g2.data<T>(), G, w.data<T>(), W, T(0), dx.data<T>(), in);
                 grads[0] = dx.reshape(x_shape);
               }
               if (need[1]) {  // dW = gᵀ x
                 Tensor xs = cpu::blas_matrix(sx.get(), X);
                 cpu::MatrixArg Gt{!G.trans, G.ld};
                 Tensor dw = empty({out, in}, g.dtype());
                 cpu::gemm(out, in, rows, T(1), g2.data<T>(), Gt, xs.data<T>(), X, T(0), dw.data<T>(), in);
                 grads[1] = dw;
               }
             });
             if (need.size() > 2 && need[2]) grads[2] = sum(g2, 0);
             return grads;
           });
  return y;
}

// ---- layer_norm --------------------------------------------------------------------------------

static const OpDef kLayerNorm(
    "layer_norm",
    "dx = rstd (gx̂ - mean(gx̂) - x̂ mean(gx̂ x̂)), gx̂ = g w; dw = Σ g x̂; db = Σ g",
    {{"[3,5] with affine", [](Generator& g) { return Inputs{rn(g, {3, 5}), rn(g, {5}), rn(g, {5})}; },
      [](const Inputs& in) { return layer_norm(in[0], in[1], in[2]); }},
     {"[2,3,4] non-contiguous input", [](Generator& g) { return Inputs{rn(g, {2, 4, 3}).transpose(1, 2), rn(g, {4}), rn(g, {4})}; },
      [](const Inputs& in) { return layer_norm(in[0], in[1], in[2], 1e-3); }}});

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t D = x.dim() ? x.size(-1) : 0;
  if (x.dim() == 0 || weight.shape() != Shape{D} || bias.shape() != Shape{D})
    fail<ShapeError>("layer_norm", "input ", describe(x), " needs weight and bias of shape [", D, "], got ",
                     describe(weight), " and ", describe(bias));
  if (x.dtype() != weight.dtype() || x.dtype() != bias.dtype())
    fail<DTypeError>("layer_norm", "dtype mismatch: ", describe(x), ", ", describe(weight), ", ", describe(bias));
  if (!(eps > 0)) fail<ValueError>("layer_norm", "eps must be positive, got ", eps);
  // Named, so the contiguous copies of a strided weight or bias outlive the loop that reads them.
  Tensor xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  const int64_t rows = x.numel() / std::max<int64_t>(D, 1);
  Tensor y = empty(x.shape(), x.dtype()), xhat = empty(x.shape(), x.dtype()), rstd = empty({rows}, x.dtype());
  dispatch_floating(x.dtype(), "layer_norm", [&]<class T>() {
    const T *px = xc.data<T>(), *pw = wc.data<T>(), *pb = bc.data<T>();
    T *py = y.data<T>(), *ph = xhat.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for if (rows * D >= cpu::parallel_grain()) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      // Row statistics accumulate in double; the simd reductions let them vectorise.
      const T* xr = px + r * D;
      T* hr = ph + r * D;
      T* yr = py + r * D;
      double mean = 0, var = 0;
#pragma omp simd reduction(+ : mean)
      for (int64_t i = 0; i < D; ++i) mean += double(xr[i]);
      mean /= double(D);
#pragma omp simd reduction(+ : var)
      for (int64_t i = 0; i < D; ++i) var += (double(xr[i]) - mean) * (double(xr[i]) - mean);
      const T rs = T(1.0 / std::sqrt(var / double(D) + eps)), mu = T(mean);
      pr[r] = rs;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) {
        T h = (xr[i] - mu) * rs;
        hr[i] = h;
        yr[i] = h * pw[i] + pb[i];
      }
    }
  });
  if (needs_grad({x, weight, bias}))
    record(y, kLayerNorm, {x, weight, bias},
           [xhat, rstd, w = SavedTensor(weight, "layer_norm"), D, rows](const Tensor& g, const std::vector<bool>& need) {
             Tensor gc = g.contiguous(), wv = w.get().contiguous();
             Tensor gx = empty(xhat.shape(), g.dtype());
             Tensor gw = zeros({D}, g.dtype()), gb = zeros({D}, g.dtype());
             dispatch_floating(g.dtype(), "layer_norm backward", [&]<class T>() {
               const T *pg = gc.data<T>(), *ph = xhat.data<T>(), *pr = rstd.data<T>(), *pw = wv.data<T>();
               T *px = gx.data<T>(), *pgw = gw.data<T>(), *pgb = gb.data<T>();
               // Weight/bias grads are column sums: each thread sums its rows, then the partials add up.
               // The split is fixed by nt, not by the team OpenMP gives: the sums are complete and the
               // same for any team size.
               const int nt = rows * D >= cpu::parallel_grain() && !omp_in_parallel() ? omp_get_max_threads() : 1;
               std::vector<T> part(size_t(nt) * 2 * size_t(D), T(0));
               cpu::parallel_parts(nt, [&](int t) {
                 T* sw = part.data() + size_t(t) * 2 * size_t(D);
                 T* sb = sw + D;
                 for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; ++r) {
                   const T *gr = pg + r * D, *hr = ph + r * D;
#pragma omp simd
                   for (int64_t i = 0; i < D; ++i) {
                     sw[i] += gr[i] * hr[i];
                     sb[i] += gr[i];
                   }
                 }
               });
               for (int t = 0; t < nt; ++t)
                 for (int64_t i = 0; i < D; ++i) {
                   pgw[i] += part[size_t(t) * 2 * size_t(D) + size_t(i)];
                   pgb[i] += part[size_t(t) * 2 * size_t(D) + size_t(D + i)];
                 }
#pragma omp parallel for if (rows * D >= cpu::parallel_grain()) schedule(static)
               for (int64_t r = 0; r < rows; ++r) {
                 const T *gr = pg + r * D, *hr = ph + r * D;
                 T* xr = px + r * D;
                 double m1 = 0, m2 = 0;  // mean(gx̂), mean(gx̂ x̂)
#pragma omp simd reduction(+ : m1, m2)
                 for (int64_t i = 0; i < D; ++i) {
                   double gh = double(gr[i]) * double(pw[i]);
                   m1 += gh;
                   m2 += gh * double(hr[i]);
                 }
                 m1 /= double(D);
                 m2 /= double(D);
                 const double rs = double(pr[r]);
#pragma omp simd
                 for (int64_t i = 0; i < D; ++i) {
                   double gh = double(gr[i]) * double(pw[i]);
                   xr[i] = T(rs * (gh - m1 - double(hr[i]) * m2));
                 }
               }
             });
             return std::vector<Tensor>{need[0] ? gx : Tensor(), need[1] ? gw : Tensor(), need[2] ? gb : Tensor()};
           });
  return y;
}

// ---- dropout -----------------------------------------------------------------------------------

static const OpDef kDropout("dropout", "dx = g mask / (1 - p)",
                            {{"p = 0.3 on [4,5]", [](Generator& g) { return Inputs{rn(g, {4, 5})}; },
                              [](const Inputs& in) {
                                Generator gen(9);  // the same mask on every evaluation
                                return dropout(in[0], 0.3, true, gen);
                              }}});

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  if (!(p >= 0 && p < 1)) fail<ValueError>("dropout", "p must be in [0, 1), got ", p);
  if (!training || p == 0) return x;
  const double scale = 1.0 / (1.0 - p);
  Tensor keep = ge(rand(x.shape(), x.dtype(), &gen), scalar_tensor(p, x.dtype()));
  Tensor y;
  {
    NoGradGuard ng;
    y = where(keep, x * scale, zeros({}, x.dtype()));
  }
  if (needs_grad({x}))
    record(y, kDropout, {x}, [keep, scale](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{where(keep, g * scale, zeros({}, g.dtype()))};
    });
  return y;
}

// ---- embedding ---------------------------------------------------------------------------------

static const OpDef kEmbedding("embedding", "dW[id] += g row, for every position holding id",
                              {{"[5,3] table, ids [2,3] with repeats",
                                [](Generator& g) {
                                  return Inputs{rn(g, {5, 3}), from_vector(std::vector<int64_t>{0, 4, 4, 2, 0, 1}, {2, 3})};
                                },
                                [](const Inputs& in) { return embedding(in[0], in[1]); }}});

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  if (weight.dim() != 2) fail<ShapeError>("embedding", "weight must be [num, dim], got ", describe(weight));
  if (ids.dtype() != DType::i64) fail<DTypeError>("embedding", "ids must be i64, got ", describe(ids));
  const int64_t V = weight.size(0), D = weight.size(1);
  Tensor idc = ids.contiguous(), wc = weight.contiguous();
  const int64_t* pid = idc.data<int64_t>();
  const int64_t n = ids.numel();
  for (int64_t i = 0; i < n; ++i)
    if (pid[i] < 0 || pid[i] >= V)
      fail<IndexError>("embedding", "id ", pid[i], " out of range for a table of ", V, " rows ", describe(weight));
  Shape s = ids.shape();
  s.push_back(D);
  Tensor out = empty(s, weight.dtype());
  dispatch_floating(weight.dtype(), "embedding", [&]<class T>() {
    const T* pw = wc.data<T>();
    T* po = out.data<T>();
    for (int64_t i = 0; i < n; ++i) std::memcpy(po + i * D, pw + pid[i] * D, size_t(D) * sizeof(T));
  });
  if (needs_grad({weight}))
    record(out, kEmbedding, {weight, ids}, [idc, V, D, n](const Tensor& g, const std::vector<bool>&) {
      Tensor gw = zeros({V, D}, g.dtype());
      Tensor gc = g.contiguous();
      dispatch_floating(g.dtype(), "embedding backward", [&]<class T>() {
        const int64_t* ids_p = idc.data<int64_t>();
        const T* pg = gc.data<T>();
        T* pw = gw.data<T>();
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < D; ++j) pw[ids_p[i] * D + j] += pg[i * D + j];
      });
      return std::vector<Tensor>{gw, Tensor()};
    });
  return out;
}

// ---- cross entropy -----------------------------------------------------------------------------

static const OpDef kCrossEntropy(
    "cross_entropy", "dlogits = g (softmax - (1-ε) onehot(t) - ε/V) / count, 0 on ignored rows",
    {{"[4,5] with an ignored row",
      [](Generator& g) { return Inputs{rn(g, {4, 5}), from_vector(std::vector<int64_t>{1, -100, 4, 0}, {4})}; },
      [](const Inputs& in) { return cross_entropy(in[0], in[1]); }},
     {"label smoothing 0.1, non-contiguous logits",
      [](Generator& g) { return Inputs{rn_t(g, {3, 4}), from_vector(std::vector<int64_t>{3, 0, 2}, {3})}; },
      [](const Inputs& in) { return cross_entropy(in[0], in[1], {-100, 0.1}); }}});

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const CrossEntropyOptions& opts) {
  if (logits.dim() != 2) fail<ShapeError>("cross_entropy", "logits must be [N, V], got ", describe(logits));
  if (targets.dtype() != DType::i64 || targets.shape() != Shape{logits.size(0)})
    fail<ShapeError>("cross_entropy", "targets must be i64 [", logits.size(0), "], got ", describe(targets));
  if (!(opts.label_smoothing >= 0 && opts.label_smoothing < 1))
    fail<ValueError>("cross_entropy", "label_smoothing must be in [0, 1), got ", opts.label_smoothing);
  const int64_t N = logits.size(0), V = logits.size(1);
  Tensor lc = logits.contiguous(), tc = targets.contiguous();
  const int64_t* pt = tc.data<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (pt[i] == opts.ignore_index) continue;
    if (pt[i] < 0 || pt[i] >= V)
      fail<IndexError>("cross_entropy", "target ", pt[i], " at row ", i, " out of range for ", V, " classes");
    ++count;
  }
  if (count == 0) fail<ValueError>("cross_entropy", "every target equals ignore_index ", opts.ignore_index);
  const double eps = opts.label_smoothing;
  Tensor probs = empty({N, V}, logits.dtype());
  double total = 0;
  dispatch_floating(logits.dtype(), "cross_entropy", [&]<class T>() {
    const T* px = lc.data<T>();
    T* pp = probs.data<T>();
#pragma omp parallel for reduction(+ : total) if (N * V >= cpu::parallel_grain()) schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const T* row = px + i * V;
      T m = row[0];
      for (int64_t j = 1; j < V; ++j) m = std::max(m, row[j]);
      double s = 0, sum_x = 0;
      for (int64_t j = 0; j < V; ++j) {
        double e = double(cpu::exp_fast(T(row[j] - m)));
        pp[i * V + j] = T(e);
        s += e;
        sum_x += double(row[j]);
      }
      const double inv = 1.0 / s;
      for (int64_t j = 0; j < V; ++j) pp[i * V + j] = T(double(pp[i * V + j]) * inv);
      if (pt[i] == opts.ignore_index) continue;
      const double lse = double(m) + std::log(s);
      total += lse - (1 - eps) * double(row[pt[i]]) - eps / double(V) * sum_x;
    }
  });
  Tensor loss = scalar_tensor(total / double(count), logits.dtype());
  if (needs_grad({logits}))
    record(loss, kCrossEntropy, {logits, targets},
           [probs, tc, count, eps, V, N, ignore = opts.ignore_index](const Tensor& g, const std::vector<bool>&) {
             Tensor gx = empty({N, V}, probs.dtype());
             dispatch_floating(probs.dtype(), "cross_entropy backward", [&]<class T>() {
               const T* pp = probs.data<T>();
               const int64_t* t = tc.data<int64_t>();
               T* px = gx.data<T>();
               const T scale = T(g.item_double() / double(count)), smooth = T(eps / double(V));
               for (int64_t i = 0; i < N; ++i) {
                 if (t[i] == ignore) {
                   std::fill(px + i * V, px + (i + 1) * V, T(0));
                   continue;
                 }
                 for (int64_t j = 0; j < V; ++j) px[i * V + j] = (pp[i * V + j] - smooth) * scale;
                 px[i * V + t[i]] -= T(1 - eps) * scale;
               }
             });
             return std::vector<Tensor>{gx, Tensor()};
           });
  return loss;
}

double accuracy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  if (logits.dim() != 2 || targets.shape() != Shape{logits.size(0)})
    fail<ShapeError>("accuracy", "needs logits [N, V] and targets [N], got ", describe(logits), " and ",
                     describe(targets));
  std::vector<int64_t> pred = argmax(logits, 1).to_vector<int64_t>(), t = targets.to_vector<int64_t>();
  int64_t n = 0, hit = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore_index) continue;
    ++n;
    hit += pred[i] == t[i];
  }
  return n ? double(hit) / double(n) : 0.0;
}

}  // namespace attnlab

// Reductions and row normalisers (softmax, log_softmax, logsumexp). Every kernel sees its input
// as [outer, R, inner] with R the reduced dim. Derivations: docs/backward.md#reductions.
#include <cmath>
#include <limits>

#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"
#include "core/cpu/vmath.h"

namespace attnlab {
using namespace cases;

namespace {

using Layout = cpu::DimLayout;
Shape reduced_shape(const Shape& s, int64_t dim, bool keepdim) {
  Shape r = s;
  if (r.empty()) return r;
  if (keepdim) r[dim] = 1;
  else r.erase(r.begin() + dim);
  return r;
}
void check_float(const char* op, const Tensor& x) {
  if (!is_floating(x.dtype())) fail<DTypeError>(op, "expected a floating tensor, got ", describe(x));
}

// Runs body(o, i) for every (outer, inner) pair, in parallel when the work is large.
template <class Body>
void for_each_lane(const Layout& l, Body body) {
  const int64_t lanes = l.outer * l.inner;
  const bool par = lanes > 1 && lanes * l.R >= cpu::parallel_grain() && !omp_in_parallel();
#pragma omp parallel for if (par) schedule(static)
  for (int64_t lane = 0; lane < lanes; ++lane) body(lane / l.inner, lane % l.inner);
}

// out[o, i] = sum_r x[o, r, i], accumulated in double.
template <class T>
void sum_kernel(const T* x, T* out, const Layout& l) {
  if (l.inner == 1) {
    const bool par = l.outer > 1 && l.outer * l.R >= cpu::parallel_grain() && !omp_in_parallel();
#pragma omp parallel for if (par) schedule(static)
    for (int64_t o = 0; o < l.outer; ++o) {
      const T* row = x + o * l.R;
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t r = 0; r < l.R; ++r) acc += double(row[r]);
      out[o] = T(acc);
    }
    return;
  }
  // Strided: walk r outside, a chunk of inner lanes inside (contiguous, vectorised). Work is split
  // over (outer, lane chunk) pairs so a reduction over dim 0 (outer = 1) still uses every thread.
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (l.inner + kChunk - 1) / kChunk;
  const bool par = l.outer * l.R * l.inner >= cpu::parallel_grain() && !omp_in_parallel();
#pragma omp parallel for if (par) schedule(static)
  for (int64_t job = 0; job < l.outer * chunks; ++job) {
    const int64_t o = job / chunks, i0 = (job % chunks) * kChunk, n = std::min(kChunk, l.inner - i0);
    double acc[kChunk] = {};
    for (int64_t r = 0; r < l.R; ++r) {
      const T* row = x + (o * l.R + r) * l.inner + i0;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) acc[i] += double(row[i]);
    }
    for (int64_t i = 0; i < n; ++i) out[o * l.inner + i0 + i] = T(acc[i]);
  }
}

Tensor sum_dim_raw(const Tensor& x, int64_t dim, bool keepdim) {
  Tensor xc = x.contiguous();
  Layout l = cpu::dim_layout(x.shape(), dim);
  Tensor out = empty(reduced_shape(x.shape(), dim, keepdim), x.dtype());
  dispatch_floating(x.dtype(), "sum", [&]<class T>() { sum_kernel<T>(xc.data<T>(), out.data<T>(), l); });
  return out;
}

// g of a keepdim=false reduction, reshaped back to keepdim form and broadcast to `shape`.
Tensor expand_reduced(const Tensor& g, const Shape& shape, int64_t dim, bool keepdim) {
  Tensor gk = keepdim || shape.empty() ? g : g.unsqueeze(dim);
  return gk.expand(shape);
}

}  // namespace

// ---- sum / mean ------------------------------------------------------------------------------

static const OpDef kSum("sum", "dx = expand(g)",
                        {{"all of [3,4]", [](Generator& g) { return Inputs{rn(g, {3, 4})}; },
                          [](const Inputs& in) { return sum(in[0]); }},
                         {"dim 0 of non-contiguous [4,3]", [](Generator& g) { return Inputs{rn_t(g, {4, 3})}; },
                          [](const Inputs& in) { return sum(in[0], 0); }},
                         {"dim -1 keepdim of [2,3,4]", [](Generator& g) { return Inputs{rn(g, {2, 3, 4})}; },
                          [](const Inputs& in) { return sum(in[0], -1, true); }},
                         {"dims {0,2} of [2,3,4]", [](Generator& g) { return Inputs{rn(g, {2, 3, 4})}; },
                          [](const Inputs& in) { return sum(in[0], Shape{0, 2}); }}});

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  check_float("sum", x);
  int64_t d = wrap_dim("sum", dim, x.dim());
  if (x.dim() == 0) return x.clone();
  Tensor out = sum_dim_raw(x, d, keepdim);
  if (needs_grad({x}))
    record(out, kSum, {x}, [s = x.shape(), d, keepdim](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{expand_reduced(g, s, d, keepdim)};
    });
  return out;
}

Tensor sum(const Tensor& x) {
  check_float("sum", x);
  Tensor flat = x.reshape({x.numel()});
  return sum(flat, 0);
}

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim) {
  std::vector<bool> reduce(size_t(x.dim()), false);
  for (int64_t d : dims) {
    int64_t w = wrap_dim("sum", d, x.dim());
    if (reduce[size_t(w)]) fail<IndexError>("sum", "dim ", d, " appears twice in the reduction dims");
    reduce[size_t(w)] = true;
  }
  Tensor out = x;
  for (int64_t d = x.dim() - 1; d >= 0; --d)
    if (reduce[size_t(d)]) out = sum(out, d, keepdim);
  return out;
}

Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  int64_t d = wrap_dim("mean", dim, x.dim());
  int64_t n = x.dim() == 0 ? 1 : x.shape()[d];
  if (n == 0) fail<ValueError>("mean", "mean over an empty dim of ", describe(x));
  return sum(x, dim, keepdim) / double(n);
}
Tensor mean(const Tensor& x) {
  if (x.numel() == 0) fail<ValueError>("mean", "mean of an empty tensor ", describe(x));
  return sum(x) / double(x.numel());
}

Tensor Tensor::sum() const { return attnlab::sum(*this); }
Tensor Tensor::sum(int64_t d, bool keepdim) const { return attnlab::sum(*this, d, keepdim); }
Tensor Tensor::mean() const { return attnlab::mean(*this); }
Tensor Tensor::mean(int64_t d, bool keepdim) const { return attnlab::mean(*this, d, keepdim); }

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  if (broadcast_shapes("sum_to", x.shape(), shape) != x.shape())
    fail<ShapeError>("sum_to", describe(x), " does not broadcast from ", shape_str(shape));
  const int64_t lead = x.dim() - int64_t(shape.size());
  Shape dims;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d < lead || (shape[size_t(d - lead)] == 1 && x.shape()[d] != 1)) dims.push_back(d);
  return sum(x, dims, true).reshape(shape);
}

// ---- max / min / argmax / argmin ---------------------------------------------------------------

namespace {
// Values and indices of the max (or min) along dim; NaN wins (propagates), first index on ties.
std::pair<Tensor, Tensor> extreme_raw(const char* op, const Tensor& x, int64_t dim, bool keepdim, bool want_max) {
  if (x.dim() > 0 && x.shape()[dim] == 0) fail<ValueError>(op, "reduction over an empty dim of ", describe(x));
  Tensor xc = x.contiguous();
  Layout l = cpu::dim_layout(x.shape(), dim);
  Shape rs = reduced_shape(x.shape(), dim, keepdim);
  Tensor vals = empty(rs, x.dtype()), idx = empty(rs, DType::i64);
  dispatch_floating(x.dtype(), op, [&]<class T>() {
    const T* px = xc.data<T>();
    T* pv = vals.data<T>();
    int64_t* pi = idx.data<int64_t>();
    for_each_lane(l, [&](int64_t o, int64_t i) {
      const T* base = px + o * l.R * l.inner + i;
      T best = base[0];
      int64_t at = 0;
      for (int64_t r = 1; r < l.R && !std::isnan(best); ++r) {
        T v = base[r * l.inner];
        if (std::isnan(v) || (want_max ? v > best : v < best)) { best = v; at = r; }
      }
      pv[o * l.inner + i] = best;
      pi[o * l.inner + i] = at;
    });
  });
  return {vals, idx};
}

// dx: g placed at the chosen index of every lane, zero elsewhere.
Tensor scatter_to_index(const Tensor& g, const Tensor& idx, const Shape& shape, int64_t dim) {
  Tensor gx = zeros(shape, g.dtype());
  Tensor gc = g.contiguous(), ic = idx.contiguous();
  Layout l = cpu::dim_layout(shape, dim);
  dispatch_floating(g.dtype(), "max backward", [&]<class T>() {
    T* px = gx.data<T>();
    const T* pg = gc.data<T>();
    const int64_t* pi = ic.data<int64_t>();
    for_each_lane(l, [&](int64_t o, int64_t i) {
      int64_t lane = o * l.inner + i;
      px[(o * l.R + pi[lane]) * l.inner + i] = pg[lane];
    });
  });
  return gx;
}

Tensor extreme(const OpDef& def, const Tensor& x, int64_t dim, bool keepdim, bool want_max) {
  const char* op = def.name.c_str();
  check_float(op, x);
  int64_t d = wrap_dim(op, dim, x.dim());  // before the 0-d shortcut, so a bad dim is refused there too
  if (x.dim() == 0) return x.clone();
  auto [vals, idx] = extreme_raw(op, x, d, keepdim, want_max);
  if (needs_grad({x}))  // idx = idx: clang before 16 (the fuzz build's) cannot capture a structured binding
    record(vals, def, {x}, [idx = idx, s = x.shape(), d, keepdim](const Tensor& g, const std::vector<bool>&) {
      Tensor gk = keepdim ? g : g.unsqueeze(d);
      Tensor ik = keepdim ? idx : idx.unsqueeze(d);
      return std::vector<Tensor>{scatter_to_index(gk, ik, s, d)};
    });
  return vals;
}
}  // namespace

static const OpDef kMax("max", "dx = g at the argmax, 0 elsewhere",
                        {{"dim 1 of [3,4]", [](Generator& g) { return Inputs{distinct(g, {3, 4})}; },
                          [](const Inputs& in) { return max(in[0], 1); }},
                         {"all, non-contiguous", [](Generator& g) { return Inputs{distinct(g, {4, 3}).t()}; },
                          [](const Inputs& in) { return max(in[0]); }},
                         {"dim 0 keepdim of [3,2,2]", [](Generator& g) { return Inputs{distinct(g, {3, 2, 2})}; },
                          [](const Inputs& in) { return max(in[0], 0, true); }}});
static const OpDef kMin("min", "dx = g at the argmin, 0 elsewhere",
                        {{"dim 1 of [3,4]", [](Generator& g) { return Inputs{distinct(g, {3, 4})}; },
                          [](const Inputs& in) { return min(in[0], 1); }},
                         {"all, non-contiguous", [](Generator& g) { return Inputs{distinct(g, {4, 3}).t()}; },
                          [](const Inputs& in) { return min(in[0]); }}});

Tensor max(const Tensor& x, int64_t dim, bool keepdim) { return extreme(kMax, x, dim, keepdim, true); }
Tensor min(const Tensor& x, int64_t dim, bool keepdim) { return extreme(kMin, x, dim, keepdim, false); }
Tensor max(const Tensor& x) { return max(x.reshape({x.numel()}), 0); }
Tensor min(const Tensor& x) { return min(x.reshape({x.numel()}), 0); }
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  check_float("argmax", x);
  return extreme_raw("argmax", x, wrap_dim("argmax", dim, x.dim()), keepdim, true).second;
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  check_float("argmin", x);
  return extreme_raw("argmin", x, wrap_dim("argmin", dim, x.dim()), keepdim, false).second;
}

// ---- logsumexp / softmax / log_softmax ---------------------------------------------------------

namespace {
enum class RowOp { logsumexp, softmax, log_softmax };

// One pass for the max, one for the sum of exponentials, one to write (softmax forms).
Tensor row_normalise(const char* op, const Tensor& x, int64_t dim, RowOp kind, bool keepdim) {
  check_float(op, x);
  Tensor xc = x.contiguous();
  Layout l = cpu::dim_layout(x.shape(), dim);
  if (l.R == 0 && kind == RowOp::logsumexp) return full(reduced_shape(x.shape(), dim, keepdim), -INFINITY, x.dtype());
  Tensor out = empty(kind == RowOp::logsumexp ? reduced_shape(x.shape(), dim, keepdim) : x.shape(), x.dtype());
  dispatch_floating(x.dtype(), op, [&]<class T>() {
    const T* px = xc.data<T>();
    T* po = out.data<T>();
    // The stride is a compile-time 1 for rows along the last dim, so those loops vectorise without gathers.
    auto lane = [&](int64_t o, int64_t i, auto stride) {
      const int64_t base = o * l.R * l.inner + i, st = stride;
      const T* xr = px + base;  // locals, not captured references: lets the loops below vectorise
      T* yr = po + base;
      T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
      for (int64_t r = 0; r < l.R; ++r) {
        const T v = xr[r * st];
        m = v > m ? v : m;  // the maxps form: vectorises where std::max does not
      }
      if (!std::isfinite(m)) m = 0;  // all -inf, or a +inf entry: avoid inf - inf (NaN still propagates via s)
      double s = 0;
      if (kind == RowOp::softmax) {  // one exp per element: store it, then scale
#pragma omp simd reduction(+ : s)
        for (int64_t r = 0; r < l.R; ++r) {
          T e = cpu::exp_fast(T(xr[r * st] - m));
          yr[r * st] = e;
          s += double(e);
        }
        const T inv = T(s == 0 ? 0.0 : 1.0 / s);  // a fully masked (all -inf) row gives zeros; NaN stays NaN
#pragma omp simd
        for (int64_t r = 0; r < l.R; ++r) yr[r * st] *= inv;
        return;
      }
#pragma omp simd reduction(+ : s)
      for (int64_t r = 0; r < l.R; ++r) s += double(cpu::exp_fast(T(xr[r * st] - m)));
      const T lse = T(double(m) + std::log(s));
      if (kind == RowOp::logsumexp) {
        po[o * l.inner + i] = lse;
      } else {
        // (x - m) - log s, not x - lse: lse rounded to T loses the low digits when |x| is large
        // (f32 at 1e4 has a spacing of 1e-3). An all -inf row gives -inf everywhere, not NaN.
        const double log_s = std::log(s);
        for (int64_t r = 0; r < l.R; ++r)
          yr[r * st] =
              s == 0 ? -std::numeric_limits<T>::infinity() : T(double(xr[r * st]) - double(m) - log_s);
      }
    };
    for_each_lane(l, [&](int64_t o, int64_t i) {
      if (l.inner == 1) lane(o, i, std::integral_constant<int64_t, 1>{});
      else lane(o, i, l.inner);
    });
  });
  return out;
}
}  // namespace

static const OpDef kLogsumexp("logsumexp", "dx = g exp(x - y)",
                              {{"dim 1 of [3,5]", [](Generator& g) { return Inputs{rn(g, {3, 5})}; },
                                [](const Inputs& in) { return logsumexp(in[0], 1); }},
                               {"dim 0 keepdim, non-contiguous", [](Generator& g) { return Inputs{rn_t(g, {4, 3})}; },
                                [](const Inputs& in) { return logsumexp(in[0], 0, true); }}});
Tensor logsumexp(const Tensor& x, int64_t dim, bool keepdim) {
  int64_t d = wrap_dim("logsumexp", dim, x.dim());
  if (x.dim() == 0) return x.clone();
  Tensor out = row_normalise("logsumexp", x, d, RowOp::logsumexp, keepdim);
  if (needs_grad({x}))
    record(out, kLogsumexp, {x},
           [sx = SavedTensor(x, "logsumexp"), sy = SavedTensor(out.detach(), "logsumexp"), d, keepdim](
               const Tensor& g, const std::vector<bool>&) {
             const Tensor& xv = sx.get();
             Tensor yk = keepdim ? sy.get() : sy.get().unsqueeze(d);
             Tensor gk = keepdim ? g : g.unsqueeze(d);
             return std::vector<Tensor>{mul(gk, exp(sub(xv, yk)))};
           });
  return out;
}

static const OpDef kSoftmax("softmax", "dx = y (g - sum(g y))",
                            {{"dim -1 of [3,5]", [](Generator& g) { return Inputs{rn(g, {3, 5})}; },
                              [](const Inputs& in) { return softmax(in[0], -1); }},
                             {"dim 0 of non-contiguous [4,3]", [](Generator& g) { return Inputs{rn_t(g, {4, 3})}; },
                              [](const Inputs& in) { return softmax(in[0], 0); }}});
Tensor softmax(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim("softmax", dim, x.dim());
  if (x.dim() == 0) return softmax(x.reshape({1}), 0).reshape({});  // 1, still on the graph (gradient 0)
  Tensor out = row_normalise("softmax", x, d, RowOp::softmax, true);
  if (needs_grad({x}))
    record(out, kSoftmax, {x}, [sy = SavedTensor(out.detach(), "softmax"), d](const Tensor& g, const std::vector<bool>&) {
      const Tensor& y = sy.get();
      Tensor gy = mul(g, y);
      return std::vector<Tensor>{sub(gy, mul(y, sum(gy, d, true)))};
    });
  return out;
}

static const OpDef kLogSoftmax("log_softmax", "dx = g - exp(y) sum(g)",
                               {{"dim -1 of [3,5]", [](Generator& g) { return Inputs{rn(g, {3, 5})}; },
                                 [](const Inputs& in) { return log_softmax(in[0], -1); }},
                                {"dim 1 of non-contiguous [2,4,3]",
                                 [](Generator& g) { return Inputs{rn(g, {2, 3, 4}).transpose(1, 2)}; },
                                 [](const Inputs& in) { return log_softmax(in[0], 1); }}});
Tensor log_softmax(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim("log_softmax", dim, x.dim());
  if (x.dim() == 0) return log_softmax(x.reshape({1}), 0).reshape({});  // 0, still on the graph
  Tensor out = row_normalise("log_softmax", x, d, RowOp::log_softmax, true);
  if (needs_grad({x}))
    record(out, kLogSoftmax, {x},
           [sy = SavedTensor(out.detach(), "log_softmax"), d](const Tensor& g, const std::vector<bool>&) {
             return std::vector<Tensor>{sub(g, mul(exp(sy.get()), sum(g, d, true)))};
           });
  return out;
}

// ---- var -------------------------------------------------------------------------------------

static const OpDef kVar("var", "dx = g 2 (x - mean) / (N - unbiased)",
                        {{"dim 1 of [3,5], unbiased", [](Generator& g) { return Inputs{rn(g, {3, 5})}; },
                          [](const Inputs& in) { return var(in[0], 1); }},
                         {"dim 0 keepdim biased, non-contiguous", [](Generator& g) { return Inputs{rn_t(g, {4, 3})}; },
                          [](const Inputs& in) { return var(in[0], 0, false, true); }}});
Tensor var(const Tensor& x, int64_t dim, bool unbiased, bool keepdim) {
  check_float("var", x);
  int64_t d = wrap_dim("var", dim, x.dim());
  int64_t n = x.dim() == 0 ? 1 : x.shape()[d];
  int64_t denom = n - (unbiased ? 1 : 0);
  if (denom <= 0)
    fail<ValueError>("var", "needs at least ", unbiased ? 2 : 1, " elements along dim ", dim, ", got ", describe(x));
  Tensor centred;
  {
    NoGradGuard ng;
    centred = sub(x, mean(x, d, true));
  }
  Tensor out;
  {
    NoGradGuard ng;
    out = sum(mul(centred, centred), d, keepdim) / double(denom);
  }
  if (needs_grad({x}))
    record(out, kVar, {x},
           [c = SavedTensor(centred, "var"), d, keepdim, denom](const Tensor& g, const std::vector<bool>&) {
             Tensor gk = keepdim ? g : g.unsqueeze(d);
             return std::vector<Tensor>{mul(gk, c.get() * (2.0 / double(denom)))};
           });
  return out;
}

}  // namespace attnlab

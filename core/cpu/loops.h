// Strided, broadcasting loops over K operands. Adjacent dims that are laid out contiguously in
// every operand are merged first, so contiguous tensors run as one flat, vectorisable loop.
#pragma once
#include <omp.h>

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace attnlab::cpu {

// Below this many elements a loop runs on one thread: forking costs more than it saves. A run-time
// value so that tests can push every small gradcheck case through the parallel branches.
inline constexpr int64_t kDefaultParallelGrain = 1 << 15;
inline int64_t g_parallel_grain = kDefaultParallelGrain;
inline int64_t parallel_grain() { return g_parallel_grain; }

// Sets the grain for a scope (tests: 0 makes every op with a parallel branch take it).
struct ScopedParallelGrain {
  int64_t saved = g_parallel_grain;
  explicit ScopedParallelGrain(int64_t grain) { g_parallel_grain = grain; }
  ~ScopedParallelGrain() { g_parallel_grain = saved; }
  ScopedParallelGrain(const ScopedParallelGrain&) = delete;
  ScopedParallelGrain& operator=(const ScopedParallelGrain&) = delete;
};

// Runs body(part) for every part in [0, parts), in parallel. Each part is a fixed share of the work
// whatever team OpenMP actually gives (OMP_DYNAMIC, a thread limit, a call from inside a parallel
// region can all give fewer threads than asked for): every thread takes the parts part ≡ tid (mod team).
template <class Body>
void parallel_parts(int parts, Body body) {
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    const int team = omp_get_num_threads();
    for (int part = omp_get_thread_num(); part < parts; part += team) body(part);
  }
}

// A shape seen from one of its dims: [outer, R, inner], R the size of the dim. Row ops (reductions,
// softmax, entmax) walk the outer·inner lanes, each R long with stride inner.
struct DimLayout {
  int64_t outer = 1, R = 1, inner = 1;
};
inline DimLayout dim_layout(const Shape& s, int64_t dim) {
  DimLayout l;
  for (int64_t i = 0; i < int64_t(s.size()); ++i) {
    if (i < dim) l.outer *= s[i];
    else if (i == dim) l.R = s[i];
    else l.inner *= s[i];
  }
  return l;
}

// Strides of `t` as seen from `out_shape` under broadcasting (0 along broadcast dims).
inline Shape broadcast_strides(const Tensor& t, const Shape& out_shape) {
  Shape st(out_shape.size(), 0);
  size_t off = out_shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i) st[off + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return st;
}

template <size_t K>
struct LoopPlan {
  Shape shape;
  std::array<Shape, K> strides;
};

template <size_t K>
LoopPlan<K> coalesce(const Shape& shape, const std::array<Shape, K>& strides) {
  LoopPlan<K> p;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // size-1 dims never move the index
    bool merge = !p.shape.empty();
    for (size_t k = 0; k < K && merge; ++k) merge = p.strides[k].back() == strides[k][d] * shape[d];
    if (merge) {
      p.shape.back() *= shape[d];
      for (size_t k = 0; k < K; ++k) p.strides[k].back() = strides[k][d];
    } else {
      p.shape.push_back(shape[d]);
      for (size_t k = 0; k < K; ++k) p.strides[k].push_back(strides[k][d]);
    }
  }
  if (p.shape.empty()) {
    p.shape.push_back(1);
    for (size_t k = 0; k < K; ++k) p.strides[k].push_back(0);
  }
  return p;
}

// Calls row(offsets, len, inner_strides) for every innermost row of `shape`, where offsets[k] is
// operand k's element offset at the row start. Rows are split across threads when large.
template <size_t K, class RowFn>
void for_each_row(const Shape& shape, const std::array<Shape, K>& strides, RowFn&& row) {
  int64_t total = shape_numel(shape);
  if (total == 0) return;
  LoopPlan<K> p = coalesce<K>(shape, strides);
  const int64_t nd = int64_t(p.shape.size());
  const int64_t len = p.shape.back();
  const int64_t rows = total / len;
  std::array<int64_t, K> inner;
  for (size_t k = 0; k < K; ++k) inner[k] = p.strides[k].back();

  auto run_rows = [&](int64_t r0, int64_t r1) {
    if (r0 >= r1) return;
    Shape idx(nd, 0);
    std::array<int64_t, K> off{};
    int64_t rem = r0;
    for (int64_t d = nd - 2; d >= 0; --d) {
      idx[d] = rem % p.shape[d];
      rem /= p.shape[d];
      for (size_t k = 0; k < K; ++k) off[k] += idx[d] * p.strides[k][d];
    }
    for (int64_t r = r0; r < r1; ++r) {
      row(off, len, inner);
      for (int64_t d = nd - 2; d >= 0; --d) {  // odometer increment of the outer index
        idx[d]++;
        for (size_t k = 0; k < K; ++k) off[k] += p.strides[k][d];
        if (idx[d] < p.shape[d]) break;
        for (size_t k = 0; k < K; ++k) off[k] -= idx[d] * p.strides[k][d];
        idx[d] = 0;
      }
    }
  };

  if (total < parallel_grain() || omp_in_parallel()) {
    run_rows(0, rows);
  } else if (rows == 1) {
    // One long row: split it into pieces instead.
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t a = len * t / nt, b = len * (t + 1) / nt;
      std::array<int64_t, K> off;
      for (size_t k = 0; k < K; ++k) off[k] = a * inner[k];
      if (b > a) row(off, b - a, inner);
    }
  } else {
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      run_rows(rows * t / nt, rows * (t + 1) / nt);
    }
  }
}

// The row lambdas below are flattened so that f (however large: gelu's erf, say) is inlined into
// the simd loop instead of being called per element.

// out[i] = f(a[i]) over a (any strides) into a fresh contiguous tensor of dtype Out.
template <class In, class Out, class F>
void map1(const Tensor& a, Tensor& out, F f) {
  const In* pa = a.data<In>();
  Out* po = out.data<Out>();
  for_each_row<2>(
      out.shape(), {contiguous_strides(out.shape()), a.strides()},
      [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) __attribute__((flatten)) {
        Out* o = po + off[0];
        const In* x = pa + off[1];
        if (st[0] == 1 && st[1] == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]]);
        }
      });
}

// out = f(a, b) with broadcasting; out already has the broadcast shape and is contiguous.
template <class A, class B, class Out, class F>
void map2(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const A* pa = a.data<A>();
  const B* pb = b.data<B>();
  Out* po = out.data<Out>();
  for_each_row<3>(
      out.shape(),
      {contiguous_strides(out.shape()), broadcast_strides(a, out.shape()), broadcast_strides(b, out.shape())},
      [&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) __attribute__((flatten)) {
        Out* o = po + off[0];
        const A* x = pa + off[1];
        const B* y = pb + off[2];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
        } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
          const B yv = y[0];
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], yv);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]]);
        }
      });
}

// out = f(a, b, c) with broadcasting (used by where).
template <class A, class B, class C, class Out, class F>
void map3(const Tensor& a, const Tensor& b, const Tensor& c, Tensor& out, F f) {
  const A* pa = a.data<A>();
  const B* pb = b.data<B>();
  const C* pc = c.data<C>();
  Out* po = out.data<Out>();
  const Shape& s = out.shape();
  for_each_row<4>(
      s, {contiguous_strides(s), broadcast_strides(a, s), broadcast_strides(b, s), broadcast_strides(c, s)},
      [&](const std::array<int64_t, 4>& off, int64_t n, const std::array<int64_t, 4>& st) __attribute__((flatten)) {
        Out* o = po + off[0];  // locals: captured pointers would be reloaded every element
        const A* x = pa + off[1];
        const B* y = pb + off[2];
        const C* z = pc + off[3];
        if (st[0] == 1 && st[1] == 1 && st[2] == 1 && st[3] == 1) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i], z[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) o[i * st[0]] = f(x[i * st[1]], y[i * st[2]], z[i * st[3]]);
        }
      });
}

}  // namespace attnlab::cpu

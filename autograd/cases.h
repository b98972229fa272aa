// Small builders for gradcheck cases (f64 inputs, fixed shapes, deterministic generators).
#pragma once
#include <algorithm>

#include "autograd/registry.h"
#include "core/rng.h"

namespace attnlab::cases {

inline Tensor rn(Generator& g, const Shape& s) { return randn(s, DType::f64, &g); }
// Values in [lo, hi): keeps log/sqrt/div inputs away from their singularities.
inline Tensor uni(Generator& g, const Shape& s, double lo, double hi) {
  return add(mul(rand(s, DType::f64, &g), scalar_tensor(hi - lo, DType::f64)), scalar_tensor(lo, DType::f64));
}
// A non-contiguous tensor of shape s: the transpose of a contiguous one.
inline Tensor rn_t(Generator& g, const Shape& s) {
  Shape r = s;
  std::swap(r[r.size() - 1], r[r.size() - 2]);
  return randn(r, DType::f64, &g).transpose(-1, -2);
}
// Random values with a gap of at least `gap` between any two (no ties for max/relu-like kinks).
inline Tensor distinct(Generator& g, const Shape& s, double gap = 0.05) {
  int64_t n = shape_numel(s);
  Tensor perm = rand({n}, DType::f64, &g);
  std::vector<double> v = perm.to_vector<double>();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[size_t(a)] < v[size_t(b)]; });
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(order[size_t(i)])] = (double(i) - double(n) / 2 + 0.5) * gap;
  return from_vector(out, s);
}

using Inputs = std::vector<Tensor>;

}  // namespace attnlab::cases

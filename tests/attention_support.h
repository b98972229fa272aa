// Helpers shared by the attention kernel suites (flash, Sinkformer): run a method forward and
// backward from fresh leaves, compare results, and force tile sizes for a scope.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

#include "attention/flash.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace attnlab::testing {

struct Result {
  Tensor out, dq, dk, dv;
};

using AttnFn = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>;

// Output and input gradients for upstream gradient g, from fresh leaves (copies of q, k, v).
inline Result run(const AttnFn& f, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g) {
  Tensor lq = q.detach().clone().set_requires_grad(true);
  Tensor lk = k.detach().clone().set_requires_grad(true);
  Tensor lv = v.detach().clone().set_requires_grad(true);
  Tensor out = f(lq, lk, lv);
  out.backward(g);
  return {out.detach(), lq.grad(), lk.grad(), lv.grad()};
}

inline void require_finite(const Tensor& t) {
  for (double x : t.to(DType::f64).to_vector<double>()) REQUIRE(std::isfinite(x));
}

inline void check_close(const Result& a, const Result& b, double rtol, double atol) {
  CHECK(a.out.shape() == b.out.shape());
  CHECK(allclose(a.out, b.out, rtol, atol));
  CHECK(allclose(a.dq, b.dq, rtol, atol));
  CHECK(allclose(a.dk, b.dk, rtol, atol));
  CHECK(allclose(a.dv, b.dv, rtol, atol));
  for (const Tensor& t : {a.out, a.dq, a.dk, a.dv}) require_finite(t);
}

// A random problem: q [B, H, Tq, dh], k and v [B, H, Tk, dh], and an upstream gradient like q.
struct Problem {
  Tensor q, k, v, go;
};
inline Problem random_problem(Generator& g, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t dh, DType dt) {
  Problem p;
  p.q = randn({B, H, Tq, dh}, dt, &g);
  p.k = randn({B, H, Tk, dh}, dt, &g);
  p.v = randn({B, H, Tk, dh}, dt, &g);
  p.go = randn({B, H, Tq, dh}, dt, &g);
  return p;
}

// b8 [B, T], each key padded with probability p.
inline Tensor random_padding(Generator& g, int64_t B, int64_t T, double p) {
  return lt(rand({B, T}, DType::f64, &g), scalar_tensor(p, DType::f64));
}

// Forces tile sizes (0: default) for one scope, to put tile edges inside small inputs.
struct TileGuard {
  explicit TileGuard(const flash::Tiles& t) { flash::set_tiles(t); }
  ~TileGuard() { flash::set_tiles({}); }
  TileGuard(const TileGuard&) = delete;
  TileGuard& operator=(const TileGuard&) = delete;
};

}  // namespace attnlab::testing

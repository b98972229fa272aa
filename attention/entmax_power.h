// The power policies of the entmax row loops: p = t^β with β = 1/(α−1) and t = (α−1)(z − max) − τ > 0,
// its t-derivatives, s = p^(2−α) (the weights of the backward) and p^α. sparsemax (β = 1) and 1.5-entmax
// (β = 2) need no pow at all; the general form uses the vectorisable pow for f32 (cpu::pow_fast). The
// loops that call them are flattened, so that the policy and the pow polynomials are inlined into the
// SIMD loop whatever the inliner's budget. Shared by the entmax ops and the fused entmax attention.
#pragma once

#include <cmath>

#include "core/cpu/vmath.h"

namespace attnlab::entmax {

template <class T>
struct Linear {  // α = 2
  static constexpr T alpha = 2;
  static T prob(T t) { return t; }
  static T d1(T, T) { return 1; }                      // dp/dt
  static T d2(T, T) { return 0; }                      // d²p/dt²
  static T s(T p) { return p > 0 ? T(1) : T(0) * p; }  // 0 · p: NaN stays NaN
  static T s_t(T) { return 1; }  // t^(β(2−α)): s of p = t^β · c is s(c) · s_t(t)
  static T pow_alpha(T p) { return p * p; }
};

template <class T>
struct Square {  // α = 1.5
  static constexpr T alpha = T(1.5);
  static T prob(T t) { return t * t; }
  static T d1(T t, T) { return 2 * t; }
  static T d2(T, T) { return 2; }
  static T s(T p) { return std::sqrt(p); }
  static T s_t(T t) { return t; }
  static T pow_alpha(T p) { return p * std::sqrt(p); }
};

template <class T>
struct General {
  T alpha, beta;  // β = 1/(α−1)
  explicit General(T a) : alpha(a), beta(T(1) / (a - 1)) {}
  T prob(T t) const { return cpu::pow_fast(t, beta); }
  T d1(T t, T p) const { return beta * p / t; }
  T d2(T t, T p) const { return (beta - 1) * beta * p / (t * t); }
  T s(T p) const { return p > 0 ? cpu::pow_fast(p, 2 - alpha) : T(0) * p; }
  T s_t(T t) const { return cpu::pow_fast(t, beta * (2 - alpha)); }
  T pow_alpha(T p) const { return p > 0 ? p * cpu::pow_fast(p, alpha - 1) : T(0); }
};

// Calls f with the power policy of α.
template <class T, class F>
decltype(auto) with_power(T alpha, F&& f) {
  if (alpha == T(2)) return f(Linear<T>{});
  if (alpha == T(1.5)) return f(Square<T>{});
  return f(General<T>(alpha));
}

}  // namespace attnlab::entmax

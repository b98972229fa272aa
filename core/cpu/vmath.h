// Branch-free float approximations of exp and erf that compilers vectorise (std::expf/erff are
// scalar library calls: one element at a time). Used where f32 throughput matters (softmax rows,
// attention tiles, GELU); f64 paths keep std:: for exact gradient checks.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace attnlab::cpu {

// exp(x) for float, within ~2 ulp of std::exp on [-86.6, 88.7]; 0 below (so -inf gives 0), +inf
// above. NaN in gives NaN out. Cody–Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a
// degree-6 minimax polynomial for e^r (Cephes expf coefficients) scaled by 2^n through the exponent bits.
[[gnu::always_inline]] inline float exp_approx(float x) {
  const float hi = 88.7228391f, lo = -86.6433976f;  // lo = -125 ln 2: 2^n stays a normal float
  // NaN fails x >= lo and goes to lo, so int32_t(n) below is defined (UBSan); the end restores it.
  const float xc = x > hi ? hi : (x >= lo ? x : lo);
  // Round to nearest by the 1.5·2^23 trick: plain arithmetic, so the loop vectorises.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  // 2^n as 2 * 2^(n-1): n reaches 128 near the top of the range, one past the exponent field.
  const float scale = std::bit_cast<float>((int32_t(n) + 126) << 23);
  float y = (e * 2.0f) * scale;
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
}

// erf(x) for float, absolute error < 3e-7 (Abramowitz & Stegun 7.1.26 with exp_approx).
[[gnu::always_inline]] inline float erf_approx(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_approx(-ax * ax);
  return std::copysign(y, x);
}

// log(x) for float, within ~2 ulp of std::log for normal x > 0; log(0) = -inf, log(+inf) = +inf, NaN for
// x < 0 or NaN. Exponent and mantissa split through the bits (x = m 2^e, m in [√½, √2)), then the
// Cephes logf polynomial in m - 1. Denormal x are flushed to 0 (-inf).
[[gnu::always_inline]] inline float log_approx(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = float(e);
  y = y - 2.12194440e-4f * fe - 0.5f * z;
  float r = m + y + 0.693359375f * fe;
  r = x < 1.17549435e-38f ? -INFINITY : r;  // zero and denormals
  r = x == INFINITY ? INFINITY : r;
  return x < 0.0f || x != x ? NAN : r;
}

}  // namespace attnlab::cpu

namespace attnlab::cpu {

// The vectorisable approximation for f32, the library function for f64 (gradient checks).
template <class T>
[[gnu::always_inline]] inline T exp_fast(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_approx(x);
  else return std::exp(x);
}
template <class T>
[[gnu::always_inline]] inline T erf_fast(T x) {
  if constexpr (std::is_same_v<T, float>) return erf_approx(x);
  else return std::erf(x);
}

template <class T>
[[gnu::always_inline]] inline T log_fast(T x) {
  if constexpr (std::is_same_v<T, float>) return log_approx(x);
  else return std::log(x);
}
// x^y for x > 0 (x = 0 gives 0 for y > 0, +inf for y < 0).
template <class T>
[[gnu::always_inline]] inline T pow_fast(T x, T y) {
  if constexpr (std::is_same_v<T, float>) return exp_approx(y * log_approx(x));
  else return std::pow(x, y);
}

}  // namespace attnlab::cpu

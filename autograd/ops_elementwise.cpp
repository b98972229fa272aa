// Elementwise ops: each forward, its backward formula and its gradcheck cases side by side.
// Derivations: docs/backward.md#elementwise.
#include <cmath>
#include <cstring>

#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"
#include "core/cpu/vmath.h"

namespace attnlab {
using namespace cases;

namespace {

void check_float(const char* op, const Tensor& x) {
  if (!is_floating(x.dtype())) fail<DTypeError>(op, "expected a floating tensor, got ", describe(x));
}
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype()) fail<DTypeError>(op, "dtype mismatch: ", describe(a), " and ", describe(b));
}

// out = f(x), elementwise, into a fresh tensor of x's dtype.
template <class F>
Tensor map_float(const char* op, const Tensor& x, F f) {
  check_float(op, x);
  Tensor out = empty(x.shape(), x.dtype());
  dispatch_floating(x.dtype(), op, [&]<class T>() { cpu::map1<T, T>(x, out, [&](T v) { return T(f(v)); }); });
  return out;
}

// out = f(a, b) with broadcasting, into a fresh tensor.
template <class F>
Tensor zip_float(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_float(op, a);
  check_same_dtype(op, a, b);
  Tensor out = empty(broadcast_shapes(op, a.shape(), b.shape()), a.dtype());
  dispatch_floating(a.dtype(), op, [&]<class T>() { cpu::map2<T, T, T>(a, b, out, [&](T x, T y) { return T(f(x, y)); }); });
  return out;
}

// Gradient cases shared by the binary ops: same shapes, broadcasting, and a transposed input.
std::vector<GradcheckCase> binary_cases(Tensor (*op)(const Tensor&, const Tensor&), double lo, double hi) {
  auto fn = [op](const Inputs& in) { return op(in[0], in[1]); };
  return {
      {"same shape [3,4]", [=](Generator& g) { return Inputs{uni(g, {3, 4}, lo, hi), uni(g, {3, 4}, lo, hi)}; }, fn},
      {"broadcast [3,1] with [1,4]", [=](Generator& g) { return Inputs{uni(g, {3, 1}, lo, hi), uni(g, {1, 4}, lo, hi)}; },
       fn},
      {"broadcast [2,3,4] with [4]", [=](Generator& g) { return Inputs{uni(g, {2, 3, 4}, lo, hi), uni(g, {4}, lo, hi)}; },
       fn},
      {"non-contiguous (transposed) [4,3] with [4,3]",
       [=](Generator& g) { return Inputs{uni(g, {3, 4}, lo, hi).t(), uni(g, {4, 3}, lo, hi)}; }, fn},
  };
}

std::vector<GradcheckCase> unary_cases(Tensor (*op)(const Tensor&), double lo, double hi) {
  auto fn = [op](const Inputs& in) { return op(in[0]); };
  return {
      {"[3,5]", [=](Generator& g) { return Inputs{uni(g, {3, 5}, lo, hi)}; }, fn},
      {"non-contiguous (transposed) [5,3]", [=](Generator& g) { return Inputs{uni(g, {3, 5}, lo, hi).t()}; }, fn},
      {"0-d", [=](Generator& g) { return Inputs{uni(g, {}, lo, hi)}; }, fn},
  };
}

// Unary op whose backward is a function of (x, y = f(x)).
template <class F, class DF>
Tensor unary_op(const OpDef& def, const Tensor& x, F f, DF df) {
  Tensor out = map_float(def.name.c_str(), x, f);
  if (needs_grad({x})) {
    record(out, def, {x}, [sx = SavedTensor(x, def.name.c_str()), sy = SavedTensor(out.detach(), def.name.c_str()), df](
                              const Tensor& g, const std::vector<bool>&) {
      const Tensor& xv = sx.get();
      const Tensor& yv = sy.get();
      // One pass: dx = g * df(x, y), without materialising df.
      check_same_dtype("backward", g, xv);
      Tensor dx = empty(xv.shape(), xv.dtype());  // g has y's shape, which is x's
      dispatch_floating(xv.dtype(), "backward", [&]<class T>() {
        cpu::map3<T, T, T, T>(g, xv, yv, dx, [&](T gv, T xe, T ye) { return T(gv * df(xe, ye)); });
      });
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      fail<ShapeError>(op, "shapes ", shape_str(a), " and ", shape_str(b), " cannot be broadcast (dim ", i, ": ", da,
                       " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// ---- binary arithmetic -----------------------------------------------------------------------

static const OpDef kAdd("add", "da = sum_to(g), db = sum_to(g)", binary_cases(&add, -2, 2));
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = zip_float("add", a, b, [](auto x, auto y) { return x + y; });
  if (needs_grad({a, b}))
    record(out, kAdd, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& need) {
      return std::vector<Tensor>{need[0] ? sum_to(g, sa) : Tensor(), need[1] ? sum_to(g, sb) : Tensor()};
    });
  return out;
}

static const OpDef kSub("sub", "da = sum_to(g), db = -sum_to(g)", binary_cases(&sub, -2, 2));
Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = zip_float("sub", a, b, [](auto x, auto y) { return x - y; });
  if (needs_grad({a, b}))
    record(out, kSub, {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g, const std::vector<bool>& need) {
      return std::vector<Tensor>{need[0] ? sum_to(g, sa) : Tensor(), need[1] ? neg(sum_to(g, sb)) : Tensor()};
    });
  return out;
}

static const OpDef kMul("mul", "da = sum_to(g * b), db = sum_to(g * a)", binary_cases(&mul, -2, 2));
Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = zip_float("mul", a, b, [](auto x, auto y) { return x * y; });
  if (needs_grad({a, b}))
    record(out, kMul, {a, b},
           [sa = SavedTensor(a, "mul"), sb = SavedTensor(b, "mul")](const Tensor& g, const std::vector<bool>& need) {
             const Tensor &av = sa.get(), &bv = sb.get();
             return std::vector<Tensor>{need[0] ? sum_to(mul(g, bv), av.shape()) : Tensor(),
                                        need[1] ? sum_to(mul(g, av), bv.shape()) : Tensor()};
           });
  return out;
}

static const OpDef kDiv("div", "da = sum_to(g / b), db = -sum_to(g * a / b^2)", binary_cases(&div, 0.5, 2));
Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = zip_float("div", a, b, [](auto x, auto y) { return x / y; });
  if (needs_grad({a, b}))
    record(out, kDiv, {a, b},
           [sa = SavedTensor(a, "div"), sb = SavedTensor(b, "div")](const Tensor& g, const std::vector<bool>& need) {
             const Tensor &av = sa.get(), &bv = sb.get();
             Tensor ga, gb;
             if (need[0]) ga = sum_to(div(g, bv), av.shape());
             if (need[1]) gb = sum_to(neg(div(mul(g, av), mul(bv, bv))), bv.shape());
             return std::vector<Tensor>{ga, gb};
           });
  return out;
}

static const OpDef kPow("pow", "da = sum_to(g * b * a^(b-1)), db = sum_to(g * a^b * log a)",
                        binary_cases(static_cast<Tensor (*)(const Tensor&, const Tensor&)>(&pow), 0.5, 2));
Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = zip_float("pow", a, b, [](auto x, auto y) { return std::pow(x, y); });
  if (needs_grad({a, b}))
    record(out, kPow, {a, b},
           [sa = SavedTensor(a, "pow"), sb = SavedTensor(b, "pow"), sy = SavedTensor(out.detach(), "pow")](
               const Tensor& g, const std::vector<bool>& need) {
             const Tensor &av = sa.get(), &bv = sb.get();
             Tensor ga, gb;
             // Masked as in PyTorch: b a^(b-1) is 0 * inf = NaN at a = 0, b = 0, where the
             // derivative is 0; a^b log a is 0 * -inf = NaN at a = 0, b >= 0, where it is 0 too.
             const Tensor zero = zeros({}, g.dtype());
             if (need[0]) {
               Tensor da = where(eq(bv, zero), zero, mul(bv, pow(av, sub(bv, ones_like(bv)))));
               ga = sum_to(mul(g, da), av.shape());
             }
             if (need[1]) {
               Tensor at_zero = where(ge(bv, zero), eq(av, zero), zeros({}, DType::b8));
               gb = sum_to(mul(g, where(at_zero, zero, mul(sy.get(), log(av)))), bv.shape());
             }
             return std::vector<Tensor>{ga, gb};
           });
  return out;
}

static const OpDef kMaximum("maximum", "da = sum_to(g * [a >= b]), db = sum_to(g * [a < b])",
                            {{"broadcast [3,4] with [4]",
                              [](Generator& g) {
                                Tensor d = distinct(g, {4, 4});
                                return Inputs{d.narrow(0, 0, 3).contiguous(), d.select(0, 3).contiguous()};
                              },
                              [](const Inputs& in) { return maximum(in[0], in[1]); }}});
static const OpDef kMinimum("minimum", "da = sum_to(g * [a <= b]), db = sum_to(g * [a > b])",
                            {{"broadcast [3,4] with [4]",
                              [](Generator& g) {
                                Tensor d = distinct(g, {4, 4});
                                return Inputs{d.narrow(0, 0, 3).contiguous(), d.select(0, 3).contiguous()};
                              },
                              [](const Inputs& in) { return minimum(in[0], in[1]); }}});
namespace {
Tensor select_op(const OpDef& def, const Tensor& a, const Tensor& b, bool take_max) {
  Tensor out = zip_float(def.name.c_str(), a, b, [take_max](auto x, auto y) {
    bool pick_a = take_max ? (x >= y || x != x) : (x <= y || x != x);  // NaN propagates
    return pick_a ? x : y;
  });
  if (needs_grad({a, b}))
    record(out, def, {a, b},
           [sa = SavedTensor(a, def.name.c_str()), sb = SavedTensor(b, def.name.c_str()), take_max](
               const Tensor& g, const std::vector<bool>& need) {
             const Tensor &av = sa.get(), &bv = sb.get();
             Tensor pick_a = take_max ? ge(av, bv) : le(av, bv);
             Tensor zero = zeros({}, g.dtype());
             Tensor ga, gb;
             if (need[0]) ga = sum_to(where(pick_a, g, zero), av.shape());
             if (need[1]) gb = sum_to(where(pick_a, zero, g), bv.shape());
             return std::vector<Tensor>{ga, gb};
           });
  return out;
}
}  // namespace
Tensor maximum(const Tensor& a, const Tensor& b) { return select_op(kMaximum, a, b, true); }
Tensor minimum(const Tensor& a, const Tensor& b) { return select_op(kMinimum, a, b, false); }

// ---- unary -----------------------------------------------------------------------------------

static const OpDef kNeg("neg", "dx = -g", unary_cases(&neg, -2, 2));
Tensor neg(const Tensor& x) {
  Tensor out = map_float("neg", x, [](auto v) { return -v; });
  if (needs_grad({x}))
    record(out, kNeg, {x}, [](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{neg(g)}; });
  return out;
}

static const OpDef kExp("exp", "dx = g * y", unary_cases(&exp, -2, 2));
Tensor exp(const Tensor& x) {
  return unary_op(kExp, x, [](auto v) { return cpu::exp_fast(v); }, [](auto, auto y) { return y; });
}

static const OpDef kLog("log", "dx = g / x", unary_cases(&log, 0.2, 3));
Tensor log(const Tensor& x) {
  return unary_op(kLog, x, [](auto v) { return std::log(v); }, [](auto v, auto) { return 1 / v; });
}

static const OpDef kSqrt("sqrt", "dx = g / (2 y)", unary_cases(&sqrt, 0.2, 3));
Tensor sqrt(const Tensor& x) {
  return unary_op(kSqrt, x, [](auto v) { return std::sqrt(v); }, [](auto, auto y) { return 1 / (2 * y); });
}

static const OpDef kRsqrt("rsqrt", "dx = -g y^3 / 2", unary_cases(&rsqrt, 0.2, 3));
Tensor rsqrt(const Tensor& x) {
  return unary_op(kRsqrt, x, [](auto v) { return 1 / std::sqrt(v); }, [](auto, auto y) { return -y * y * y / 2; });
}

static const OpDef kTanh("tanh", "dx = g (1 - y^2)", unary_cases(&tanh, -2, 2));
Tensor tanh(const Tensor& x) {
  return unary_op(kTanh, x, [](auto v) { return std::tanh(v); }, [](auto, auto y) { return 1 - y * y; });
}

static const OpDef kSigmoid("sigmoid", "dx = g y (1 - y)", unary_cases(&sigmoid, -3, 3));
Tensor sigmoid(const Tensor& x) {
  return unary_op(
      kSigmoid, x,
      [](auto v) {  // stable for large |v|
        const auto e = cpu::exp_fast(-std::abs(v));  // e^{-|v|} never overflows
        return v >= 0 ? 1 / (1 + e) : e / (1 + e);
      },
      [](auto, auto y) { return y * (1 - y); });
}

static const OpDef kRelu("relu", "dx = g [x > 0]",
                         {{"[4,4] away from 0", [](Generator& g) { return Inputs{distinct(g, {4, 4}, 0.1)}; },
                           [](const Inputs& in) { return relu(in[0]); }},
                          {"non-contiguous", [](Generator& g) { return Inputs{distinct(g, {4, 3}, 0.1).t()}; },
                           [](const Inputs& in) { return relu(in[0]); }}});
Tensor relu(const Tensor& x) {
  return unary_op(kRelu, x, [](auto v) { return v > 0 || v != v ? v : decltype(v)(0); },  // NaN propagates
                  [](auto v, auto) { return v > 0 ? decltype(v)(1) : decltype(v)(0); });
}

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kC = 0.79788456080286535588;  // sqrt(2/pi)
}  // namespace

static const OpDef kGelu("gelu", "dx = g (Phi(x) + x phi(x)); tanh form: d/dx of 0.5 x (1 + tanh(c (x + 0.044715 x^3)))",
                         {{"erf form [3,5]", [](Generator& g) { return Inputs{uni(g, {3, 5}, -3, 3)}; },
                           [](const Inputs& in) { return gelu(in[0]); }},
                          {"tanh form, non-contiguous", [](Generator& g) { return Inputs{uni(g, {5, 3}, -3, 3).t()}; },
                           [](const Inputs& in) { return gelu(in[0], true); }}});
Tensor gelu(const Tensor& x, bool tanh_approximation) {
  if (tanh_approximation)
    return unary_op(
        kGelu, x,
        [](auto v) {
          using T = decltype(v);
          return T(0.5) * v * (1 + std::tanh(T(kC) * (v + T(0.044715) * v * v * v)));
        },
        [](auto v, auto) {
          using T = decltype(v);
          T u = T(kC) * (v + T(0.044715) * v * v * v), th = std::tanh(u);
          return T(0.5) * (1 + th) + T(0.5) * v * (1 - th * th) * T(kC) * (1 + 3 * T(0.044715) * v * v);
        });
  return unary_op(
      kGelu, x,
      [](auto v) {
        using T = decltype(v);
        return T(0.5) * v * (1 + cpu::erf_fast(v * T(kInvSqrt2)));
      },
      [](auto v, auto) {
        using T = decltype(v);
        return T(0.5) * (1 + cpu::erf_fast(v * T(kInvSqrt2))) + v * T(kInvSqrt2Pi) * cpu::exp_fast(T(-0.5) * v * v);
      });
}

static const OpDef kAbs("abs", "dx = g sign(x)",
                        {{"[4,4] away from 0", [](Generator& g) { return Inputs{distinct(g, {4, 4}, 0.1)}; },
                          [](const Inputs& in) { return abs(in[0]); }}});
Tensor abs(const Tensor& x) {
  return unary_op(kAbs, x, [](auto v) { return std::abs(v); },
                  [](auto v, auto) { return decltype(v)((v > 0) - (v < 0)); });
}

static const OpDef kClamp("clamp", "dx = g [lo <= x <= hi]",
                          {{"[4,4] with values inside and outside [-0.3, 0.4]",
                            [](Generator& g) { return Inputs{distinct(g, {4, 4}, 0.07)}; },
                            [](const Inputs& in) { return clamp(in[0], -0.3, 0.4); }}});
Tensor clamp(const Tensor& x, double lo, double hi) {
  if (!(lo <= hi)) fail<ValueError>("clamp", "needs lo <= hi, got lo=", lo, " hi=", hi);
  return unary_op(
      kClamp, x, [lo, hi](auto v) { using T = decltype(v); return v < T(lo) ? T(lo) : v > T(hi) ? T(hi) : v; },
      [lo, hi](auto v, auto) { using T = decltype(v); return (v >= T(lo) && v <= T(hi)) ? T(1) : T(0); });
}

static const OpDef kPowScalar("pow_scalar", "dx = g p x^(p-1)",
                              {{"p = 3 on [3,4]", [](Generator& g) { return Inputs{rn(g, {3, 4})}; },
                                [](const Inputs& in) { return pow(in[0], 3.0); }},
                               {"p = -1.5, non-contiguous", [](Generator& g) { return Inputs{uni(g, {4, 3}, 0.5, 2).t()}; },
                                [](const Inputs& in) { return pow(in[0], -1.5); }}});
Tensor pow(const Tensor& x, double p) {
  return unary_op(kPowScalar, x, [p](auto v) { return std::pow(v, decltype(v)(p)); },
                  [p](auto v, auto) {  // p = 0: 0, not 0 * 0^-1 = NaN at x = 0
                    using T = decltype(v);
                    return p == 0 ? T(0) : T(p) * std::pow(v, T(p - 1));
                  });
}

// ---- where / masks ---------------------------------------------------------------------------

static const OpDef kWhere("where", "da = sum_to(g [cond]), db = sum_to(g [!cond])",
                          {{"broadcast cond [3,1], a [3,4], b [4]",
                            [](Generator& g) {
                              return Inputs{gt(rn(g, {3, 1}), zeros({}, DType::f64)), rn(g, {3, 4}), rn(g, {4})};
                            },
                            [](const Inputs& in) { return where(in[0], in[1], in[2]); }},
                           {"non-contiguous a",
                            [](Generator& g) {
                              return Inputs{gt(rn(g, {4, 3}), zeros({}, DType::f64)), rn_t(g, {4, 3}), rn(g, {4, 3})};
                            },
                            [](const Inputs& in) { return where(in[0], in[1], in[2]); }}});
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  if (cond.dtype() != DType::b8) fail<DTypeError>("where", "condition must be b8, got ", describe(cond));
  check_same_dtype("where", a, b);
  Shape s = broadcast_shapes("where", cond.shape(), broadcast_shapes("where", a.shape(), b.shape()));
  Tensor out = empty(s, a.dtype());
  dispatch_all(a.dtype(), [&]<class T>() {
    cpu::map3<uint8_t, T, T, T>(cond, a, b, out, [](uint8_t c, T x, T y) { return c ? x : y; });
  });
  if (needs_grad({a, b}))
    record(out, kWhere, {cond, a, b},
           [c = SavedTensor(cond, "where"), sa = a.shape(), sb = b.shape()](const Tensor& g,
                                                                             const std::vector<bool>& need) {
             Tensor zero = zeros({}, g.dtype());
             Tensor ga, gb;
             if (need[1]) ga = sum_to(where(c.get(), g, zero), sa);
             if (need[2]) gb = sum_to(where(c.get(), zero, g), sb);
             return std::vector<Tensor>{Tensor(), ga, gb};
           });
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  if (mask.dtype() != DType::b8) fail<DTypeError>("masked_fill", "mask must be b8, got ", describe(mask));
  Shape s = broadcast_shapes("masked_fill", x.shape(), mask.shape());
  if (s != x.shape())
    fail<ShapeError>("masked_fill", "mask ", describe(mask), " must broadcast to the tensor's shape ", describe(x));
  return where(mask, scalar_tensor(value, x.dtype()), x);
}

// ---- comparisons (b8 results, not differentiable) ---------------------------------------------

namespace {
template <class F>
Tensor compare(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_same_dtype(op, a, b);
  Tensor out = empty(broadcast_shapes(op, a.shape(), b.shape()), DType::b8);
  dispatch_all(a.dtype(), [&]<class T>() { cpu::map2<T, T, uint8_t>(a, b, out, [&](T x, T y) { return uint8_t(f(x, y)); }); });
  return out;
}
}  // namespace
Tensor eq(const Tensor& a, const Tensor& b) { return compare("eq", a, b, [](auto x, auto y) { return x == y; }); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare("ne", a, b, [](auto x, auto y) { return x != y; }); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare("lt", a, b, [](auto x, auto y) { return x < y; }); }
Tensor le(const Tensor& a, const Tensor& b) { return compare("le", a, b, [](auto x, auto y) { return x <= y; }); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare("gt", a, b, [](auto x, auto y) { return x > y; }); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare("ge", a, b, [](auto x, auto y) { return x >= y; }); }
Tensor logical_not(const Tensor& x) {
  if (x.dtype() != DType::b8) fail<DTypeError>("logical_not", "expected b8, got ", describe(x));
  Tensor out = empty(x.shape(), DType::b8);
  cpu::map1<uint8_t, uint8_t>(x, out, [](uint8_t v) { return uint8_t(!v); });
  return out;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  broadcast_shapes("allclose", a.shape(), b.shape());
  if (a.shape() != b.shape()) return false;
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return false;
    if (std::fabs(x[i] - y[i]) > atol + rtol * std::fabs(y[i])) return false;
  }
  return true;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), size_t(x.numel()) * x.element_size()) == 0;
}

// ---- operators -------------------------------------------------------------------------------

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& a) { return neg(a); }
Tensor operator+(const Tensor& a, double s) { return add(a, scalar_tensor(s, a.dtype())); }
Tensor operator-(const Tensor& a, double s) { return sub(a, scalar_tensor(s, a.dtype())); }
Tensor operator*(const Tensor& a, double s) { return mul(a, scalar_tensor(s, a.dtype())); }
Tensor operator/(const Tensor& a, double s) { return div(a, scalar_tensor(s, a.dtype())); }
Tensor operator+(double s, const Tensor& a) { return add(scalar_tensor(s, a.dtype()), a); }
Tensor operator-(double s, const Tensor& a) { return sub(scalar_tensor(s, a.dtype()), a); }
Tensor operator*(double s, const Tensor& a) { return mul(scalar_tensor(s, a.dtype()), a); }
Tensor operator/(double s, const Tensor& a) { return div(scalar_tensor(s, a.dtype()), a); }

}  // namespace attnlab

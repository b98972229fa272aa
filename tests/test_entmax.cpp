// sparsemax, 1.5-entmax and α-entmax (attention/entmax.h) and the Fenchel–Young losses
// (layers/losses.h): deep-spin/entmax's README fixtures, the partial sort against a full sort, sort
// against bisection, α = 2 and α → 1, masks as removed coordinates, NaN and fully masked rows, the
// PR #32 regression, per-row α, dims, ∂/∂α, errors, the losses and the classifier's loss config.
// (The float64 gradchecks of every op run in test_gradcheck_registry.)
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "attention/entmax.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "autograd/registry.h"
#include "core/cpu/loops.h"
#include "core/rng.h"
#include "layers/losses.h"
#include "layers/transformer.h"
#include "support.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor matrix(const std::vector<std::vector<double>>& rows, DType t = DType::f64) {
  std::vector<double> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return from_vector(flat, {int64_t(rows.size()), int64_t(rows[0].size())}, t);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(x[i] - y[i]));
  return m;
}

// The textbook algorithms with a full sort of the row (Martins & Astudillo 2016, Peters et al. 2019):
// the independent reference for the partial sort.
std::vector<double> full_sort_entmax(std::vector<double> z, double alpha) {
  const double m = *std::max_element(z.begin(), z.end());
  std::vector<double> y(z.size());
  for (size_t i = 0; i < z.size(); ++i) y[i] = (alpha - 1) * (z[i] - m);
  std::vector<double> s = y;
  std::sort(s.begin(), s.end(), std::greater<double>());
  double sum = 0, sumsq = 0, tau = 0;
  for (size_t k = 1; k <= s.size(); ++k) {
    sum += s[k - 1];
    sumsq += s[k - 1] * s[k - 1];
    double t;
    if (alpha == 2) {
      t = (sum - 1) / double(k);
      if (!(s[k - 1] > t)) break;
    } else {
      const double mean = sum / double(k), ss = sumsq - sum * mean;
      t = mean - std::sqrt(std::max((1 - ss) / double(k), 0.0));
      if (!(t <= s[k - 1])) break;
    }
    tau = t;
  }
  std::vector<double> p(z.size());
  for (size_t i = 0; i < z.size(); ++i) {
    const double t = std::max(y[i] - tau, 0.0);
    p[i] = alpha == 2 ? t : t * t;
  }
  return p;
}

Tensor full_sort_reference(const Tensor& x, double alpha) {
  const int64_t n = x.size(-1);
  std::vector<double> v = x.to(DType::f64).to_vector<double>(), out;
  for (size_t r = 0; r < v.size(); r += size_t(n)) {
    std::vector<double> p = full_sort_entmax({v.begin() + long(r), v.begin() + long(r) + n}, alpha);
    out.insert(out.end(), p.begin(), p.end());
  }
  return from_vector(out, x.shape(), x.dtype());
}

using MapFn = std::function<Tensor(const Tensor&, int64_t)>;
struct NamedMap {
  const char* name;
  MapFn fn;
};
std::vector<NamedMap> all_maps() {
  return {{"sparsemax", [](const Tensor& x, int64_t d) { return sparsemax(x, d); }},
          {"entmax15", [](const Tensor& x, int64_t d) { return entmax15(x, d); }},
          {"bisect α=1.25", [](const Tensor& x, int64_t d) { return entmax_bisect(x, 1.25, d); }},
          {"bisect α=1.75", [](const Tensor& x, int64_t d) { return entmax_bisect(x, 1.75, d); }},
          {"bisect α=2.25", [](const Tensor& x, int64_t d) { return entmax_bisect(x, 2.25, d); }},
          {"bisect α=4", [](const Tensor& x, int64_t d) { return entmax_bisect(x, 4.0, d); }}};
}

// Output and input gradient for the upstream gradient g.
std::pair<Tensor, Tensor> value_and_grad(const MapFn& f, const Tensor& x, const Tensor& g, int64_t dim = -1) {
  Tensor leaf = x.detach().clone().set_requires_grad(true);
  Tensor y = f(leaf, dim);
  y.backward(g);
  return {y.detach(), leaf.grad()};
}

void check_rows_sum_to_one(const Tensor& p, double tol) {
  const int64_t n = p.size(-1);
  std::vector<double> v = p.to(DType::f64).to_vector<double>();
  for (size_t r = 0; r < v.size(); r += size_t(n)) {
    double s = 0;
    for (int64_t j = 0; j < n; ++j) {
      REQUIRE(v[r + size_t(j)] >= 0);
      s += v[r + size_t(j)];
    }
    CHECK(std::fabs(s - 1) <= tol);
  }
}

}  // namespace

TEST_CASE("float64 gradcheck of every entmax op and loss through the registry, ∂/∂α included") {
  for (const char* name :
       {"sparsemax", "entmax15", "entmax_bisect", "sparsemax_loss", "entmax15_loss", "entmax_bisect_loss"}) {
    const OpDef* op = find_op(name);
    REQUIRE_MESSAGE(op != nullptr, name, " is not registered");
    CHECK(op->cases.size() >= 3);
    for (size_t c = 0; c < op->cases.size(); ++c) {
      INFO(name, " / ", op->cases[c].label);
      Generator g(300 + c);
      std::vector<Tensor> inputs = op->cases[c].make_inputs(g);
      GradcheckResult r = gradcheck(op->cases[c].fn, inputs);
      CHECK_MESSAGE(r.ok, r.report());
    }
  }
}

TEST_CASE("deep-spin/entmax README fixtures") {
  Tensor z = matrix({{-2, 0, 0.5}});
  CHECK(max_abs_diff(sparsemax(z), matrix({{0, 0.25, 0.75}})) < 1e-12);
  CHECK(max_abs_diff(entmax15(z), matrix({{0, 0.3260, 0.6740}})) < 1e-4);

  Tensor x = matrix({{-1, 0, 0.5}, {1, 2, 3.5}});
  Tensor alpha = scalar_tensor(1.33, DType::f64).set_requires_grad(true);
  Tensor p = entmax_bisect(x, alpha);
  CHECK(max_abs_diff(p.narrow(0, 0, 1).detach(), matrix({{0.0460, 0.3276, 0.6264}})) < 1e-4);
  p.narrow(0, 0, 1).narrow(1, 0, 1).sum().backward();
  CHECK(alpha.grad().item<double>() == doctest::Approx(-0.2562).epsilon(1e-3));

  // Support exactness (methods.md §2.1): entries outside the support do not move τ.
  Tensor a = entmax15(matrix({{1.3, 20.0, 19.5, 1.0}})), b = entmax15(matrix({{0.0, 20.0, 19.5, 0.0}}));
  CHECK(max_abs_diff(a, b) < 1e-12);
  CHECK(max_abs_diff(a, matrix({{0, 0.674, 0.326, 0}})) < 1e-3);
}

TEST_CASE("the partial sort with doubling gives the full sort's result") {
  // Many rows near-uniform (every entry a candidate: the doubling runs to the end), others peaked.
  for (double scale : {1e-5, 1e-2, 0.5, 3.0, 1e4}) {
    for (int64_t n : {1, 2, 7, 33, 100, 1000}) {
      INFO("scale ", scale, " n ", n);
      Generator g(uint64_t(n), 1);
      Tensor x = randn({5, n}, DType::f64, &g) * scale;
      CHECK(max_abs_diff(sparsemax(x), full_sort_reference(x, 2)) < 1e-12);
      CHECK(max_abs_diff(entmax15(x), full_sort_reference(x, 1.5)) < 1e-12);
    }
  }
  // Ties: equal entries, all or some.
  Tensor ties = matrix({{1, 1, 1, 1}, {0, 2, 2, -1}, {3, 3, 0, 3}});
  CHECK(max_abs_diff(sparsemax(ties), full_sort_reference(ties, 2)) < 1e-15);
  CHECK(max_abs_diff(entmax15(ties), full_sort_reference(ties, 1.5)) < 1e-15);
}

TEST_CASE("sort and bisection agree: α = 2 is sparsemax, α = 1.5 is 1.5-entmax") {
  for (DType t : {DType::f32, DType::f64}) {
    const double tol = t == DType::f32 ? 1e-6 : 1e-10;
    for (double scale : {0.01, 0.5, 2.0, 30.0}) {
      for (int64_t n : {3, 64, 1000}) {
        INFO(dtype_name(t), " scale ", scale, " n ", n);
        Generator g(uint64_t(n) + 7, 2);
        Tensor x = (randn({6, n}, DType::f64, &g) * scale).to(t);
        Tensor y = randn({6, n}, DType::f64, &g).to(t);
        auto [ps, gs] = value_and_grad([](const Tensor& v, int64_t d) { return sparsemax(v, d); }, x, y);
        auto [pb, gb] = value_and_grad([](const Tensor& v, int64_t d) { return entmax_bisect(v, 2.0, d); }, x, y);
        CHECK(max_abs_diff(ps, pb) <= tol);
        CHECK(max_abs_diff(gs, gb) <= tol * 10);
        auto [pe, ge] = value_and_grad([](const Tensor& v, int64_t d) { return entmax15(v, d); }, x, y);
        auto [pc, gc] = value_and_grad([](const Tensor& v, int64_t d) { return entmax_bisect(v, 1.5, d); }, x, y);
        CHECK(max_abs_diff(pe, pc) <= tol);
        CHECK(max_abs_diff(ge, gc) <= tol * 10);
        // The general-α path (pow) near 1.5 and 2 lands next to the exact ones.
        CHECK(max_abs_diff(entmax_bisect(x, 1.5 + 1e-7), pe) <= (t == DType::f32 ? 2e-6 : 1e-6));
        CHECK(max_abs_diff(entmax_bisect(x, 2.0 - 1e-7), ps) <= (t == DType::f32 ? 2e-6 : 1e-6));
      }
    }
  }
}

TEST_CASE("α → 1 approaches softmax") {
  Generator g(3);
  Tensor x = randn({4, 20}, DType::f64, &g);
  Tensor sm = softmax(x, -1);
  double prev = kInf;
  for (double alpha : {1.1, 1.01, 1.001}) {
    const double err = max_abs_diff(entmax_bisect(x, alpha), sm);
    INFO("alpha ", alpha, " max |entmax - softmax| ", err);
    CHECK(err < prev);
    prev = err;
  }
  CHECK(prev < 2e-3);
}

TEST_CASE("outputs sum to 1, and are exactly 0 off the support") {
  for (DType t : {DType::f32, DType::f64}) {
    for (const NamedMap& m : all_maps()) {
      INFO(m.name, " ", dtype_name(t));
      Generator g(11);
      Tensor x = (randn({16, 257}, DType::f64, &g) * 2.0).to(t);
      Tensor p = m.fn(x, -1);
      check_rows_sum_to_one(p, t == DType::f32 ? 1e-5 : 1e-12);
      // Exactly zero, not tiny: outside the support p is 0.0, and the support is what the kernel reports.
      std::vector<double> v = p.to(DType::f64).to_vector<double>();
      int64_t zeros = 0;
      for (double e : v) zeros += e == 0.0;
      CHECK(zeros > 16 * 200);  // these rows are sparse
      Tensor xc = x.to(DType::f64).contiguous();
      std::vector<double> scratch(257);
      for (int64_t r = 0; r < 16; ++r) {
        const double* row = xc.data<double>() + r * 257;
        entmax::Threshold<double> th =
            std::string(m.name) == "sparsemax"  ? entmax::sparsemax_threshold(row, 257, scratch.data())
            : std::string(m.name) == "entmax15" ? entmax::entmax15_threshold(row, 257, scratch.data())
                                                : entmax::Threshold<double>{0, 0, -2};
        if (th.support == -2) continue;
        int64_t support = 0;
        for (int64_t j = 0; j < 257; ++j) support += v[size_t(r * 257 + j)] > 0;
        CHECK(support == th.support);
      }
    }
  }
}

TEST_CASE("masked (-inf) coordinates behave as removed ones; fully masked rows give zeros and zero gradient") {
  for (DType t : {DType::f32, DType::f64}) {
    const double tol = t == DType::f32 ? 1e-6 : 1e-12;
    for (const NamedMap& m : all_maps()) {
      INFO(m.name, " ", dtype_name(t));
      Generator g(5);
      std::vector<double> full = randn({9}, DType::f64, &g).to_vector<double>(), kept;
      std::vector<double> masked = full, gfull = randn({9}, DType::f64, &g).to_vector<double>(), gkept;
      for (size_t i = 0; i < full.size(); ++i) {
        if (i % 3 == 1) {
          masked[i] = -kInf;
        } else {
          kept.push_back(full[i]);
          gkept.push_back(gfull[i]);
        }
      }
      // Row 0 masked, row 1 fully masked.
      std::vector<double> two = masked;
      two.insert(two.end(), 9, -kInf);
      std::vector<double> g2 = gfull;
      g2.insert(g2.end(), gfull.begin(), gfull.end());
      auto [pm, dm] = value_and_grad(m.fn, from_vector(two, {2, 9}, t), from_vector(g2, {2, 9}, t));
      auto [pk, dk] = value_and_grad(m.fn, from_vector(kept, {1, 6}, t), from_vector(gkept, {1, 6}, t));
      std::vector<double> vpm = pm.to(DType::f64).to_vector<double>(), vdm = dm.to(DType::f64).to_vector<double>();
      std::vector<double> vpk = pk.to(DType::f64).to_vector<double>(), vdk = dk.to(DType::f64).to_vector<double>();
      for (size_t i = 0, k = 0; i < 9; ++i) {
        if (i % 3 == 1) {
          CHECK(vpm[i] == 0.0);
          CHECK(vdm[i] == 0.0);
        } else {
          CHECK(std::fabs(vpm[i] - vpk[k]) <= tol);
          CHECK(std::fabs(vdm[i] - vdk[k]) <= tol * 10);
          ++k;
        }
      }
      for (size_t i = 9; i < 18; ++i) {
        CHECK(vpm[i] == 0.0);
        CHECK(vdm[i] == 0.0);
      }
    }
  }
}

TEST_CASE("a row with NaN or +inf gives NaN; the other rows are untouched") {
  for (const NamedMap& m : all_maps()) {
    for (double bad : {std::nan(""), kInf}) {
      INFO(m.name, " bad ", bad);
      Tensor x = matrix({{0.1, bad, -0.3, 2.0}, {0.5, 1.0, -1.0, 0.0}}, DType::f32);
      std::vector<double> p = m.fn(x, -1).to(DType::f64).to_vector<double>();
      for (int i = 0; i < 4; ++i) CHECK(std::isnan(p[size_t(i)]));
      for (int i = 4; i < 8; ++i) CHECK(std::isfinite(p[size_t(i)]));
    }
  }
}

TEST_CASE("PR #32 regression: peaked rows (1000·randn, α = 3, 100 iterations) give no NaN") {
  for (DType t : {DType::f32, DType::f64}) {
    INFO(dtype_name(t));
    Generator g(32);
    Tensor x = (randn({10, 100}, DType::f64, &g) * 1000.0).to(t);
    EntmaxBisectOptions o;
    o.max_iter = 100;
    Tensor p = entmax_bisect(x, 3.0, -1, o);
    for (double v : p.to(DType::f64).to_vector<double>()) REQUIRE(std::isfinite(v));
    check_rows_sum_to_one(p, 1e-6);
    // One-hot at the argmax: no other entry is within reach of the max.
    CHECK(max_abs_diff(p, one_hot(argmax(x, 1), 100, t)) == 0.0);
    // And without the final renormalisation the root itself is right: Σ p = 1 before dividing.
    o.ensure_sum_one = false;
    check_rows_sum_to_one(entmax_bisect(x, 3.0, -1, o), 1e-6);
  }
  // Large α on a moderate row (the exponent 1/(α−1) is small: f is far from linear). Near the edge
  // of the support p = t^(1/(α−1)) is steep in t, so the un-normalised sum holds fewer digits.
  Generator g(33);
  Tensor x = randn({8, 50}, DType::f64, &g);
  EntmaxBisectOptions no_renorm;
  no_renorm.ensure_sum_one = false;
  for (double alpha : {3.0, 10.0, 50.0}) {
    INFO("alpha ", alpha);
    check_rows_sum_to_one(entmax_bisect(x, alpha, -1, no_renorm), alpha < 4 ? 1e-12 : 1e-8);
  }
}

TEST_CASE("per-row and per-head α equal row-by-row scalar calls") {
  Generator g(8);
  Tensor x = randn({2, 3, 4, 7}, DType::f64, &g);  // [B, H, T, n]
  Tensor head_alpha = from_vector(std::vector<double>{1.2, 1.5, 2.6}, {3, 1, 1});
  Tensor p = entmax_bisect(x, head_alpha);
  for (int64_t h = 0; h < 3; ++h) {
    Tensor ph = entmax_bisect(x.narrow(1, h, 1), head_alpha.at({h, 0, 0}));
    CHECK(max_abs_diff(p.narrow(1, h, 1), ph) < 1e-15);
  }
  Tensor rows = randn({5, 6}, DType::f64, &g);
  Tensor row_alpha = from_vector(std::vector<double>{1.05, 1.3, 1.5, 2.0, 7.0}, {5, 1});
  Tensor pr = entmax_bisect(rows, row_alpha);
  for (int64_t r = 0; r < 5; ++r)
    CHECK(max_abs_diff(pr.narrow(0, r, 1), entmax_bisect(rows.narrow(0, r, 1), row_alpha.at({r, 0}))) < 1e-15);
}

TEST_CASE("any dim, any strides: the same as moving the dim last") {
  Generator g(9);
  Tensor x = randn({3, 5, 4}, DType::f64, &g);
  Tensor gy = randn({3, 5, 4}, DType::f64, &g);
  for (const NamedMap& m : all_maps()) {
    for (int64_t d : {0, 1}) {
      INFO(m.name, " dim ", d);
      auto [p, dx] = value_and_grad(m.fn, x, gy, d);
      auto last = [&](const Tensor& v, int64_t) { return m.fn(v.transpose(d, 2), -1).transpose(d, 2); };
      auto [pt, dxt] = value_and_grad(last, x, gy);
      CHECK(max_abs_diff(p, pt) < 1e-14);
      CHECK(max_abs_diff(dx, dxt) < 1e-13);
    }
    // A non-contiguous input along the last dim.
    Tensor xt = randn({4, 6}, DType::f64, &g).t();
    CHECK(max_abs_diff(m.fn(xt, -1), m.fn(xt.contiguous(), -1)) == 0.0);
  }
}

TEST_CASE("results do not depend on the parallel split") {
  Generator g(12);
  Tensor x = randn({37, 129}, DType::f32, &g) * 2.0f;
  Tensor gy = randn({37, 129}, DType::f32, &g);
  Tensor alpha = (rand({37, 1}, DType::f32, &g) + 1.1f).set_requires_grad(true);
  auto run = [&] {
    Tensor leaf = x.detach().clone().set_requires_grad(true);
    alpha.zero_grad();
    Tensor y = entmax_bisect(leaf, alpha) + sparsemax(leaf) + entmax15(leaf, 0);
    y.backward(gy);
    return std::vector<Tensor>{y.detach(), leaf.grad(), alpha.grad()};
  };
  std::vector<Tensor> serial = run(), parallel;
  {
    cpu::ScopedParallelGrain forced(0);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    parallel = run();
    omp_set_num_threads(saved);
  }
  for (size_t i = 0; i < serial.size(); ++i) CHECK(equal(serial[i], parallel[i]));
}

TEST_CASE("bad input: a clear error naming the op and the shapes") {
  Tensor x = zeros({2, 3}, DType::f64);
  std::string m = message_of<ValueError>([&] { entmax_bisect(x, 1.0); });
  CHECK(contains(m, "entmax_bisect"));
  CHECK(contains(m, "> 1"));
  CHECK(contains(message_of<ValueError>([&] { entmax_bisect(x, std::nan("")); }), "nan"));
  CHECK(contains(message_of<ValueError>([&] {
                   entmax_bisect(x, from_vector(std::vector<double>{1.5, 0.5}, {2, 1}));
                 }),
                 "0.5"));
  m = message_of<ShapeError>([&] { entmax_bisect(x, from_vector(std::vector<double>{1.5, 1.5, 1.5}, {1, 3})); });
  CHECK(contains(m, "entmax_bisect"));
  CHECK(contains(m, "f64[1, 3]"));
  CHECK(contains(m, "f64[2, 3]"));
  CHECK(contains(message_of<DTypeError>([&] { entmax_bisect(x, scalar_tensor(1.5, DType::f32)); }), "dtype"));
  CHECK(contains(message_of<DTypeError>([&] { sparsemax(zeros({3}, DType::i64)); }), "sparsemax"));
  CHECK(contains(message_of<IndexError>([&] { entmax15(x, 2); }), "entmax15"));
  EntmaxBisectOptions o;
  o.max_iter = 0;
  CHECK(contains(message_of<ValueError>([&] { entmax_bisect(x, 1.5, -1, o); }), "max_iter"));
}

TEST_CASE("Fenchel–Young losses: fixtures, ≥ 0, gradient p − onehot, ignore_index and reductions") {
  Tensor z = matrix({{-2, 0, 0.5}, {-2, 0, 0.5}});
  Tensor y = from_vector(std::vector<int64_t>{2, 1}, {2});
  FenchelYoungOptions none;
  none.reduction = Reduction::none;
  std::vector<double> l = sparsemax_loss(z, y, none).to_vector<double>();
  CHECK(l[0] == doctest::Approx(0.0625).epsilon(1e-12));
  CHECK(l[1] == doctest::Approx(0.5625).epsilon(1e-12));
  // α = 2 and 1.5 through bisection give the exact losses.
  CHECK(max_abs_diff(entmax_bisect_loss(z, y, 2.0, none), sparsemax_loss(z, y, none)) < 1e-12);
  CHECK(max_abs_diff(entmax_bisect_loss(z, y, 1.5, none), entmax15_loss(z, y, none)) < 1e-12);

  Generator g(21);
  Tensor logits = randn({6, 5}, DType::f64, &g) * 3.0;
  Tensor t = from_vector(std::vector<int64_t>{0, 4, -100, 2, 2, 1}, {6});
  using LossFn = std::function<Tensor(const Tensor&, const FenchelYoungOptions&)>;
  struct Named {
    const char* name;
    LossFn loss;
    MapFn map;
  };
  std::vector<Named> losses = {
      {"sparsemax", [&](const Tensor& v, const FenchelYoungOptions& o) { return sparsemax_loss(v, t, o); },
       [](const Tensor& v, int64_t d) { return sparsemax(v, d); }},
      {"entmax15", [&](const Tensor& v, const FenchelYoungOptions& o) { return entmax15_loss(v, t, o); },
       [](const Tensor& v, int64_t d) { return entmax15(v, d); }},
      {"bisect 1.3", [&](const Tensor& v, const FenchelYoungOptions& o) { return entmax_bisect_loss(v, t, 1.3, o); },
       [](const Tensor& v, int64_t d) { return entmax_bisect(v, 1.3, d); }}};
  for (const Named& n : losses) {
    INFO(n.name);
    std::vector<double> rows = n.loss(logits, none).to_vector<double>();
    CHECK(rows[2] == 0.0);  // ignored
    for (double r : rows) CHECK(r >= -1e-12);
    const double total = std::accumulate(rows.begin(), rows.end(), 0.0);
    FenchelYoungOptions sum_o;
    sum_o.reduction = Reduction::sum;
    CHECK(n.loss(logits, sum_o).item<double>() == doctest::Approx(total).epsilon(1e-12));
    CHECK(n.loss(logits, {}).item<double>() == doctest::Approx(total / 5).epsilon(1e-12));
    // ∂(mean)/∂z = (p − onehot) / count on kept rows, 0 on the ignored one.
    Tensor leaf = logits.detach().clone().set_requires_grad(true);
    n.loss(leaf, {}).backward();
    Tensor p = n.map(logits, -1);
    Tensor expected = (p - one_hot(clamp(t.to(DType::f64), 0, 4).to(DType::i64), 5, DType::f64)) / 5.0;
    expected = where(eq(t, scalar_tensor(-100, DType::i64)).unsqueeze(1), zeros({}, DType::f64), expected);
    CHECK(max_abs_diff(leaf.grad(), expected) < 1e-12);
  }
  // A sure prediction (p = e_y) costs exactly 0.
  Tensor sure = matrix({{10, 0, 0}}), first = from_vector(std::vector<int64_t>{0}, {1});
  CHECK(sparsemax_loss(sure, first).item<double>() == 0.0);
  CHECK(entmax15_loss(sure, first).item<double>() == 0.0);
  CHECK(entmax_bisect_loss(sure, first, 1.3).item<double>() == doctest::Approx(0.0));
  // Errors.
  CHECK(contains(message_of<ShapeError>([&] { sparsemax_loss(zeros({3}, DType::f64), t); }), "sparsemax_loss"));
  CHECK(contains(message_of<IndexError>([&] {
                   entmax15_loss(logits, from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5}, {6}));
                 }),
                 "out of range"));
  CHECK(contains(message_of<ValueError>([&] { entmax_bisect_loss(logits, t, 0.5); }), "alpha"));
  Tensor all_ignored = full({6}, -100, DType::i64);
  CHECK(contains(message_of<ValueError>([&] { sparsemax_loss(logits, all_ignored); }), "ignore_index"));
}

TEST_CASE("the classifier's loss from its config") {
  nlohmann::json base = {{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 1},   {"n_heads", 2},
                         {"d_ff", 16},       {"max_len", 8}, {"num_classes", 3}};
  Generator g(4);
  Tensor ids = randint(0, 11, {4, 6}, &g);
  Tensor labels = from_vector(std::vector<int64_t>{0, 2, 1, 2}, {4});
  struct Case {
    nlohmann::json loss;
    std::function<Tensor(const Tensor&)> expected;
  };
  std::vector<Case> cases = {{"sparsemax", [&](const Tensor& z) { return sparsemax_loss(z, labels); }},
                             {"entmax15", [&](const Tensor& z) { return entmax15_loss(z, labels); }},
                             {{{"type", "entmax_bisect"}, {"alpha", 1.3}},
                              [&](const Tensor& z) { return entmax_bisect_loss(z, labels, 1.3); }},
                             {"cross_entropy", [&](const Tensor& z) { return cross_entropy(z, labels); }}};
  for (const Case& c : cases) {
    INFO(c.loss.dump());
    nlohmann::json j = base;
    j["loss"] = c.loss;
    ModelConfig mc = ModelConfig::from_json(j);
    CHECK(ModelConfig::from_json(mc.to_json()).loss == mc.loss);
    SequenceClassifier clf(mc);
    Tensor loss = clf.loss(ids, labels);
    CHECK(loss.item<double>() == doctest::Approx(c.expected(clf.forward(ids)).item<double>()).epsilon(1e-6));
    loss.backward();  // reaches the parameters
    CHECK(clf.head->weight.grad().defined());
  }
  CHECK(!ModelConfig::from_json(base).to_json().contains("loss"));
  auto bad = [&](const nlohmann::json& loss) {
    nlohmann::json j = base;
    j["loss"] = loss;
    return message_of<ValueError>([&] { ModelConfig::from_json(j); });
  };
  CHECK(contains(bad("hinge"), "unknown loss type 'hinge'"));
  CHECK(contains(bad({{"type", "entmax_bisect"}, {"alpha", 0.9}}), "alpha"));
  CHECK(contains(bad({{"type", "sparsemax"}, {"alpha", 1.3}}), "entmax_bisect only"));
  CHECK(contains(bad({{"type", "entmax15"}, {"temperature", 2}}), "unknown key 'temperature'"));
}

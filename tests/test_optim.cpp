// SGD: convergence on a quadratic, two-step hand computations of each update rule, and validation.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/tensor.h"
#include "layers/module.h"
#include "optim/sgd.h"

using namespace attnlab;

namespace {

Tensor param(const std::vector<double>& v) {
  Tensor p = from_vector(v, Shape{int64_t(v.size())});
  p.set_requires_grad(true);
  return p;
}

Tensor vec(const std::vector<double>& v) { return from_vector(v, Shape{int64_t(v.size())}); }

void check_values(const Tensor& t, const std::vector<double>& expected, double tolerance = 1e-12) {
  std::vector<double> got = t.to_vector<double>();
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK(got[i] == doctest::Approx(expected[i]).epsilon(tolerance));
  }
}

// Two steps with gradients g1 = [0.5, 1], g2 = [-1, 2] from p0 = [1, -2], lr 0.1; returns p2.
Tensor two_steps(SGDOptions o, Tensor* p1_out = nullptr) {
  o.lr = 0.1;
  Tensor p = param({1.0, -2.0});
  SGD opt({p}, o);
  p.set_grad(vec({0.5, 1.0}));
  opt.step();
  if (p1_out) *p1_out = p.detach().clone();
  p.set_grad(vec({-1.0, 2.0}));
  opt.step();
  return p;
}

// Minimises f(x) = 0.5 * sum(a * (x - c)^2), whose minimum is x = c, with autograd gradients.
Tensor minimise_quadratic(SGDOptions o, int steps) {
  Tensor a = vec({1.0, 4.0, 10.0}), c = vec({3.0, -1.0, 0.5});
  Tensor x = param({0.0, 0.0, 0.0});
  SGD opt({x}, o);
  for (int i = 0; i < steps; ++i) {
    Tensor loss = sum(a * pow(x - c, 2.0)) * 0.5;
    loss.backward();
    opt.step();
    opt.zero_grad();
  }
  return x;
}

}  // namespace

TEST_CASE("SGD converges on a quadratic (plain, momentum, nesterov, weight decay)") {
  std::vector<double> minimum = {3.0, -1.0, 0.5};
  const double tol = 1e-6;
  SUBCASE("plain") { check_values(minimise_quadratic({.lr = 0.05}, 400), minimum, tol); }
  SUBCASE("momentum") { check_values(minimise_quadratic({.lr = 0.05, .momentum = 0.9}, 600), minimum, tol); }
  SUBCASE("nesterov") {
    check_values(minimise_quadratic({.lr = 0.05, .momentum = 0.9, .nesterov = true}, 600), minimum, tol);
  }
  SUBCASE("weight decay moves the minimum to a * c / (a + wd)") {
    Tensor x = minimise_quadratic({.lr = 0.05, .weight_decay = 1.0}, 600);
    check_values(x, {3.0 * 1 / 2, -1.0 * 4 / 5, 0.5 * 10 / 11}, tol);
  }
  SUBCASE("too few steps are not enough (the check above is not vacuous)") {
    std::vector<double> x = minimise_quadratic({.lr = 0.05}, 5).to_vector<double>();
    CHECK(std::abs(x[0] - minimum[0]) > 0.1);
  }
}

TEST_CASE("SGD without momentum: p <- p - lr * g") {
  Tensor p1;
  Tensor p2 = two_steps({}, &p1);
  check_values(p1, {1.0 - 0.05, -2.0 - 0.1});  // [0.95, -2.1]
  check_values(p2, {0.95 + 0.1, -2.1 - 0.2});  // [1.05, -2.3]
}

TEST_CASE("SGD heavy-ball momentum matches a hand computation for two steps") {
  // buf1 = g1 = [0.5, 1];                          p1 = p0 - 0.1 buf1 = [0.95, -2.1]
  // buf2 = 0.9 buf1 + g2 = [-0.55, 2.9];           p2 = p1 - 0.1 buf2 = [1.005, -2.39]
  Tensor p1;
  Tensor p2 = two_steps({.momentum = 0.9}, &p1);
  check_values(p1, {0.95, -2.1});
  check_values(p2, {1.005, -2.39});
}

TEST_CASE("SGD nesterov momentum matches a hand computation for two steps") {
  // buf1 = g1 = [0.5, 1];     d1 = g1 + 0.9 buf1 = [0.95, 1.9];      p1 = [0.905, -2.19]
  // buf2 = [-0.55, 2.9];      d2 = g2 + 0.9 buf2 = [-1.495, 4.61];   p2 = [1.0545, -2.651]
  Tensor p1;
  Tensor p2 = two_steps({.momentum = 0.9, .nesterov = true}, &p1);
  check_values(p1, {0.905, -2.19});
  check_values(p2, {1.0545, -2.651});
}

TEST_CASE("SGD weight decay adds weight_decay * p to the gradient") {
  SUBCASE("alone") {
    // d1 = g1 + 0.5 p0 = [1, 0] -> p1 = [0.9, -2];  d2 = g2 + 0.5 p1 = [-0.55, 1] -> p2 = [0.955, -2.1]
    Tensor p1;
    Tensor p2 = two_steps({.weight_decay = 0.5}, &p1);
    check_values(p1, {0.9, -2.0});
    check_values(p2, {0.955, -2.1});
  }
  SUBCASE("with momentum: the decayed gradient goes into the buffer") {
    // buf1 = [1, 0] -> p1 = [0.9, -2];  buf2 = 0.9 [1, 0] + [-0.55, 1] = [0.35, 1] -> p2 = [0.865, -2.1]
    Tensor p2 = two_steps({.momentum = 0.9, .weight_decay = 0.5});
    check_values(p2, {0.865, -2.1});
  }
}

TEST_CASE("SGD momentum buffer does not alias the gradient") {
  // The engine accumulates into .grad in place; the buffer must keep g1, not follow the grad.
  Tensor p = param({1.0, -2.0});
  SGD opt({p}, {.lr = 0.1, .momentum = 0.9});
  p.set_grad(vec({0.5, 1.0}));
  opt.step();
  {
    NoGradGuard no_grad;
    p.grad().add_(vec({-1.5, 1.0}));  // grad is now g2 = [-1, 2], changed in place
  }
  opt.step();
  check_values(p, {1.005, -2.39});      // as in the heavy-ball hand computation
  check_values(p.grad(), {-1.0, 2.0});  // step() never writes to the gradient
}

TEST_CASE("SGD skips parameters without a gradient, and zero_grad clears gradients") {
  Tensor a = param({1.0}), b = param({2.0});
  SGD opt({a, b}, {.lr = 0.5, .momentum = 0.9});
  a.set_grad(vec({1.0}));
  uint64_t b_version = b.version();
  opt.step();
  check_values(a, {0.5});
  check_values(b, {2.0});
  CHECK(b.version() == b_version);

  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
  CHECK_FALSE(b.grad().defined());
  opt.step();  // nothing to do: no gradients at all
  check_values(a, {0.5});
}

TEST_CASE("SGD step updates in place, off the tape, and works on f32") {
  Tensor w = ones({2, 3}, DType::f32);
  w.set_requires_grad(true);
  Tensor before = w.detach();
  SGD opt({w}, {.lr = 0.25});
  Tensor y = sum(w * w);  // saves w for backward
  y.backward(Tensor(), /*retain_graph=*/true);
  uint64_t version = w.version();
  opt.step();
  CHECK(grad_enabled());  // the guard inside step() restored grad mode
  CHECK(w.is_leaf());
  CHECK(w.requires_grad());
  CHECK(w.version() > version);
  CHECK(before.at({1, 2}) == doctest::Approx(0.5));  // same storage: updated in place, 1 - 0.25 * 2
  CHECK(allclose(w, full({2, 3}, 0.5)));
  // The graph saved the old w; the version bump makes a second backward refuse instead of lying.
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("in place"), AutogradError);
}

TEST_CASE("SGD set_lr changes the step size") {
  Tensor p = param({1.0});
  SGD opt({p}, {.lr = 0.1});
  opt.set_lr(0.5);
  CHECK(opt.lr() == 0.5);
  p.set_grad(vec({1.0}));
  opt.step();
  check_values(p, {0.5});
  CHECK_THROWS_AS(opt.set_lr(-1.0), ValueError);
  CHECK(opt.lr() == 0.5);
}

TEST_CASE("SGD rejects bad hyper-parameters and parameters with ValueError") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto make = [](SGDOptions o) { SGD opt({param({1.0})}, o); };
  CHECK_THROWS_AS(make({.lr = -0.1}), ValueError);
  CHECK_THROWS_AS(make({.lr = nan}), ValueError);
  CHECK_THROWS_AS(make({.lr = inf}), ValueError);
  CHECK_THROWS_AS(make({.lr = 0.1, .momentum = -0.5}), ValueError);
  CHECK_THROWS_AS(make({.lr = 0.1, .momentum = 1.0}), ValueError);
  CHECK_THROWS_AS(make({.lr = 0.1, .momentum = nan}), ValueError);
  CHECK_THROWS_AS(make({.lr = 0.1, .weight_decay = -1e-4}), ValueError);
  CHECK_THROWS_AS(make({.lr = 0.1, .nesterov = true}), ValueError);  // nesterov without momentum
  CHECK_NOTHROW(make({.lr = 0.0}));
  CHECK_THROWS_WITH_AS(make({.lr = -0.1}), doctest::Contains("SGD: learning rate"), ValueError);

  Tensor p = param({1.0});
  CHECK_THROWS_AS(SGD({}, {}), ValueError);
  CHECK_THROWS_AS(SGD({Tensor()}, {}), ValueError);
  CHECK_THROWS_AS(SGD({arange(3)}, {}), ValueError);  // i64
  CHECK_THROWS_AS(SGD({p * 2.0}, {}), ValueError);    // not a leaf
  CHECK_THROWS_AS(SGD({p, p}, {}), ValueError);       // the same tensor twice
}

TEST_CASE("SGD state round-trips: a resumed optimizer continues exactly") {
  SGDOptions o{.lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01};
  Tensor a = param({1.0, -2.0}), unused = param({5.0});
  SGD first({a, unused}, o);
  for (double g : {0.5, -1.0}) {
    a.set_grad(vec({g, 2 * g}));
    first.step();
  }
  StateDict slots = first.state_tensors();
  nlohmann::json scalars = first.state_json();
  CHECK(slots.size() == 1);  // `unused` never had a gradient, so it has no buffer
  CHECK(slots.count("0.momentum_buffer") == 1);
  CHECK(scalars["name"] == "sgd");
  CHECK(scalars["step"] == 2);

  // A fresh optimizer with other hyper-parameters over a copy of the parameters, then restored.
  Tensor b = param(a.to_vector<double>()), unused_b = param({5.0});
  SGD resumed({b, unused_b}, {.lr = 1.0});
  resumed.load_state(slots, scalars);
  CHECK(resumed.lr() == 0.1);
  CHECK(resumed.options().nesterov);
  CHECK(resumed.steps() == 2);
  a.set_grad(vec({0.25, 0.75}));
  b.set_grad(vec({0.25, 0.75}));
  first.step();
  resumed.step();
  check_values(b, a.to_vector<double>());
  // state_tensors() hands out the live buffers (like Module::state_dict); load_state copies them.
  const std::string key = "0.momentum_buffer";
  CHECK(slots.at(key).same(first.state_tensors().at(key)));
  CHECK(resumed.state_tensors().at(key).storage_offset() == 0);
  CHECK(resumed.state_tensors().at(key).impl().storage != slots.at(key).impl().storage);
  CHECK(equal(resumed.state_tensors().at(key), first.state_tensors().at(key)));
}

TEST_CASE("SGD load_state rejects state that does not fit, and changes nothing then") {
  Tensor p = param({1.0, 2.0});
  SGD opt({p}, {.lr = 0.1, .momentum = 0.5});
  nlohmann::json good = opt.state_json();
  Tensor buf = vec({1.0, 1.0});

  auto rejects = [&](const StateDict& slots, const nlohmann::json& scalars, const char* what) {
    CAPTURE(what);
    CHECK_THROWS_AS(opt.load_state(slots, scalars), ValueError);
    CHECK(opt.lr() == 0.1);
    CHECK(opt.state_tensors().empty());
  };
  nlohmann::json adam = good;
  adam["name"] = "adamw";
  rejects({}, adam, "another optimizer's state");
  nlohmann::json missing = good;
  missing.erase("momentum");
  rejects({}, missing, "a missing scalar");
  nlohmann::json bad_lr = good;
  bad_lr["lr"] = -1.0;
  rejects({}, bad_lr, "an invalid hyper-parameter");
  nlohmann::json huge_step = good;
  huge_step["step"] = INT64_MAX;
  rejects({}, huge_step, "a step beyond 2^53");
  nlohmann::json negative_step = good;
  negative_step["step"] = -3;
  rejects({}, negative_step, "a negative step");
  rejects({{"1.momentum_buffer", buf}}, good, "a slot for a parameter that does not exist");
  rejects({{"0.exp_avg", buf}}, good, "an unknown slot name");
  rejects({{"x.momentum_buffer", buf}}, good, "a non-numeric index");
  rejects({{"0.momentum_buffer", buf}}, good, "a slot the state does not list");
  nlohmann::json with_buffer = good;
  with_buffer["stateful_params"] = {0};
  rejects({}, with_buffer, "a listed slot that is missing");
  rejects({{"0.momentum_buffer", vec({1.0})}}, with_buffer, "a slot of the wrong shape");
  rejects({{"0.momentum_buffer", from_vector(std::vector<float>{1, 1}, {2})}}, with_buffer,
          "a slot of the wrong dtype");
  CHECK_NOTHROW(opt.load_state({{"0.momentum_buffer", buf}}, with_buffer));
  CHECK(opt.state_tensors().size() == 1);
}

// Adam/AdamW against hand-computed updates, state save/restore, schedules and clipping.
#include <doctest/doctest.h>

#include <cmath>

#include "autograd/grad_mode.h"
#include "optim/adam.h"
#include "optim/schedule.h"
#include "tests/support.h"

using namespace attnlab;

namespace {
Tensor param(std::vector<double> v) {
  Tensor p = from_vector(v, {int64_t(v.size())});
  p.set_requires_grad(true);
  return p;
}
void set_grad(Tensor& p, std::vector<double> g) { p.set_grad(from_vector(g, {int64_t(g.size())})); }
}  // namespace

TEST_CASE("Adam matches a hand computation for two steps") {
  Tensor p = param({1.0, -2.0});
  AdamOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.5;  // L2 folded into g
  Adam opt({p}, o);
  double x[2] = {1.0, -2.0}, m[2] = {0, 0}, v[2] = {0, 0};
  double grads[2][2] = {{0.3, -0.4}, {-1.0, 2.0}};
  for (int t = 1; t <= 2; ++t) {
    set_grad(p, {grads[t - 1][0], grads[t - 1][1]});
    opt.step();
    for (int i = 0; i < 2; ++i) {
      double g = grads[t - 1][i] + 0.5 * x[i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      x[i] -= 0.1 * mh / (std::sqrt(vh) + 1e-8);
    }
    CHECK(p.at({0}) == doctest::Approx(x[0]).epsilon(1e-12));
    CHECK(p.at({1}) == doctest::Approx(x[1]).epsilon(1e-12));
  }
  CHECK(opt.steps() == 2);
}

TEST_CASE("AdamW decays weights decoupled from the gradient") {
  Tensor p = param({2.0});
  Adam opt({p}, adamw_options(0.1, 0.1));
  set_grad(p, {0.0});
  opt.step();
  // m = v = 0: the Adam part is 0 / (0 + eps) = 0, so only the decay acts.
  CHECK(p.at({0}) == doctest::Approx(2.0 - 0.1 * 0.1 * 2.0));
  CHECK(opt.name() == "adamw");
}

TEST_CASE("Adam state restores into a fresh optimizer and continues identically") {
  Tensor a = param({0.5, 1.5, -1.0}), b = param({0.5, 1.5, -1.0});
  Adam oa({a}, adamw_options(0.05)), ob({b}, adamw_options(0.05));
  set_grad(a, {0.1, -0.2, 0.3});
  oa.step();
  {
    NoGradGuard ng;
    b.copy_(a);
  }
  ob.load_state(oa.state_tensors(), oa.state_json());
  for (int i = 0; i < 3; ++i) {
    set_grad(a, {0.2, 0.1 * i, -0.3});
    set_grad(b, {0.2, 0.1 * i, -0.3});
    oa.step();
    ob.step();
  }
  CHECK(equal(a, b));
  Adam wrong({param({1.0})}, adamw_options(0.05));
  CHECK_THROWS_AS(wrong.load_state(oa.state_tensors(), oa.state_json()), ValueError);
  Adam plain({param({1.0, 2.0, 3.0})}, AdamOptions{});
  CHECK_THROWS_AS(plain.load_state(oa.state_tensors(), oa.state_json()), ValueError);  // adamw state into adam
}

TEST_CASE("Adam validates its inputs") {
  AdamOptions o;
  o.lr = -1;
  CHECK_THROWS_AS(Adam({param({1.0})}, o), ValueError);
  o = AdamOptions{};
  o.beta1 = 1.0;
  CHECK_THROWS_AS(Adam({param({1.0})}, o), ValueError);
  CHECK_THROWS_AS(Adam({}, AdamOptions{}), ValueError);
  Tensor p = param({1.0});
  CHECK_THROWS_AS(Adam({p, p}, AdamOptions{}), ValueError);
}

TEST_CASE("Adam refuses a saved step it cannot count from, and steps on from the largest it accepts") {
  // A sidecar's step of INT64_MAX was accepted, and the next step() overflowed t (UBSan).
  Tensor p = param({0.5, -1.0});
  Adam opt({p}, adamw_options(0.05));
  set_grad(p, {0.1, -0.2});
  opt.step();
  const nlohmann::json good = opt.state_json();
  for (const nlohmann::json& step :
       {nlohmann::json(INT64_MAX), nlohmann::json(UINT64_MAX), nlohmann::json(-1),
        nlohmann::json((int64_t(1) << 53) + 1), nlohmann::json(2.5), nlohmann::json("3")}) {
    CAPTURE(step.dump());
    nlohmann::json s = good;
    s["step"] = step;
    CHECK_THROWS_AS(opt.load_state(opt.state_tensors(), s), ValueError);
    CHECK(opt.steps() == 1);  // unchanged
  }
  nlohmann::json count = good;
  count["num_params"] = 1.8e19;  // a float beyond size_t: was undefined behaviour (fuzz/corpus/checkpoint)
  CHECK_THROWS_AS(opt.load_state(opt.state_tensors(), count), ValueError);
  nlohmann::json last = good;
  last["step"] = kMaxOptimizerStep - 1;
  opt.load_state(opt.state_tensors(), last);
  opt.step();  // bias corrections at t = 2^53 are exactly 1: a finite update
  CHECK(std::isfinite(p.at({0})));
  CHECK(opt.steps() == kMaxOptimizerStep);
  CHECK_THROWS_AS(opt.step(), ValueError);
  CHECK(opt.steps() == kMaxOptimizerStep);
}

TEST_CASE("a schedule's warmup_steps must be a JSON integer") {
  // 1e300 converted to int64 was undefined behaviour (found by fuzz/, train_config target).
  const std::string msg = testing::message_of<ValueError>([] {
    LRSchedule::from_json({{"kind", "cosine"}, {"warmup_steps", 1e300}}, 1e-3, 10);
  });
  CHECK(testing::contains(msg, "warmup_steps: must be an integer"));
}

TEST_CASE("schedules: warmup then cosine to min_lr") {
  LRSchedule s = LRSchedule::from_json({{"kind", "cosine"}, {"warmup_steps", 10}, {"min_lr", 1e-4}}, 1e-3, 110);
  CHECK(s.at(0) == doctest::Approx(1e-4));
  CHECK(s.at(9) == doctest::Approx(1e-3));
  CHECK(s.at(10) == doctest::Approx(1e-3));
  CHECK(s.at(60) == doctest::Approx(1e-4 + 0.5 * (1e-3 - 1e-4)));
  CHECK(s.at(110) == doctest::Approx(1e-4));
  CHECK(s.at(500) == doctest::Approx(1e-4));
  CHECK(LRSchedule::from_json("constant", 0.1, 5).at(3) == doctest::Approx(0.1));
  CHECK_THROWS_AS(LRSchedule::from_json("triangle", 0.1, 5), ValueError);
  CHECK_THROWS_AS(LRSchedule::from_json({{"kind", "cosine"}, {"min_lr", 1.0}}, 0.1, 5), ValueError);
}

TEST_CASE("global-norm clipping") {
  Tensor a = param({0, 0}), b = param({0});
  set_grad(a, {3, 0});
  set_grad(b, {4});
  CHECK(clip_grad_norm({a, b}, 1.0) == doctest::Approx(5.0));
  CHECK(grad_norm({a, b}) == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(a.grad().at({0}) == doctest::Approx(0.6).epsilon(1e-5));
  CHECK(clip_grad_norm({a, b}, 10.0) == doctest::Approx(1.0).epsilon(1e-5));  // under the limit: untouched
  CHECK_THROWS_AS(clip_grad_norm({a}, 0.0), ValueError);
}

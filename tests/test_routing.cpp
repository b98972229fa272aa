// Routing attention (attention/routing_attention.h): balanced top-w routing, the fused path against
// the composite reference and a naive loop (outputs and gradients), one cluster == full causal
// attention, causality with frozen routing, the EMA step and the commitment loss against their
// formulas, the method's centroid updates (only through after_step), mixed heads, config errors,
// a routing language model that evaluates and samples before any training step, `attnlab layer` on
// routing, and a tiny training run (commitment loss logged, centroids moved, exact resume).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "attention/flash.h"
#include "attention/local.h"
#include "attention/routing_attention.h"
#include "attention/softmax.h"
#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "tests/attention_support.h"
#include "tests/lm_run_support.h"
#include "tests/support.h"
#include "tools/layer_io.h"
#include "tools/lm_sample.h"
#include "tools/lm_trainer.h"
#include "tools/run_dir.h"

using namespace attnlab;

namespace {

using testing::check_close;
using testing::Result;
using testing::run;

Tensor random_centroids(Generator& g, int64_t H, int64_t k, int64_t dh) {
  return routing_layer_norm(randn({H, k, dh}, DType::f64, &g));
}

// The official semantics, one token at a time in double: per cluster, softmax over the cluster's
// earlier (or all) unpadded members; outputs summed per token and divided by count + 1e-2.
Tensor naive_routing(const Tensor& xhat, const Tensor& v, const routing::Routing& r, bool causal, const Tensor& pad,
                     double scale) {
  const int64_t B = xhat.size(0), H = xhat.size(1), T = xhat.size(2), dh = xhat.size(3);
  const std::vector<double> x = xhat.to(DType::f64).contiguous().to_vector<double>(),
                            vv = v.to(DType::f64).contiguous().to_vector<double>();
  const std::vector<int64_t> idx = r.index.to_vector<int64_t>();
  const std::vector<uint8_t> kp = pad.defined() ? pad.to_vector<uint8_t>() : std::vector<uint8_t>();
  std::vector<double> out(size_t(B * H * T * dh), 0.0), count(size_t(B * H * T), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t c = 0; c < r.k; ++c) {
      const int64_t* m = idx.data() + (bh * r.k + c) * r.w;
      const int64_t filled = int64_t(std::find(m, m + r.w, -1) - m);  // empty slots trail
      for (int64_t a = 0; a < filled; ++a) {
        const int64_t i = m[a];
        count[size_t(bh * T + i)] += 1;
        std::vector<double> s;
        std::vector<int64_t> keys;
        for (int64_t b = 0; b < filled; ++b) {
          const int64_t j = m[b];
          if ((causal && j > i) || (!kp.empty() && kp[size_t((bh / H) * T + j)])) continue;
          double d = 0;
          for (int64_t e = 0; e < dh; ++e) d += x[size_t((bh * T + i) * dh + e)] * x[size_t((bh * T + j) * dh + e)];
          s.push_back(scale * d), keys.push_back(j);
        }
        if (s.empty()) continue;
        const double mx = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t b = 0; b < s.size(); ++b)
          for (int64_t e = 0; e < dh; ++e)
            out[size_t((bh * T + i) * dh + e)] += s[b] / z * vv[size_t((bh * T + keys[b]) * dh + e)];
      }
    }
  for (int64_t t = 0; t < B * H * T; ++t)
    for (int64_t e = 0; e < dh; ++e) out[size_t(t * dh + e)] /= count[size_t(t)] + routing::kCountSmoothing;
  return from_vector(out, {B, H, T, dh});
}

// Routing attention of (x̂ = q, v) as an AttnFn for testing::run (k is unused: queries are keys).
testing::AttnFn fused_fn(const routing::Routing& r, bool causal, const Tensor& pad, double scale) {
  return
      [=](const Tensor& q, const Tensor&, const Tensor& v) { return routing_attention(q, v, r, causal, pad, scale); };
}
testing::AttnFn composite_fn(const routing::Routing& r, bool causal, const Tensor& pad, double scale) {
  return [=](const Tensor& q, const Tensor&, const Tensor& v) {
    return routing_attention_composite(q, v, r, causal, pad, scale);
  };
}

// Outputs, dq and dv (routing heads read no k) close, and finite.
void check_close_qv(const Result& a, const Result& b, double rtol, double atol) {
  CHECK(allclose(a.out, b.out, rtol, atol));
  CHECK(allclose(a.dq, b.dq, rtol, atol));
  CHECK(allclose(a.dv, b.dv, rtol, atol));
  for (const Tensor& t : {a.out, a.dq, a.dv}) testing::require_finite(t);
}

}  // namespace

TEST_CASE("route: every cluster holds exactly its top-w tokens by dot product, in position order") {
  Generator g(1);
  const int64_t B = 2, H = 3, T = 23, dh = 5, k = 4, w = 7;
  Tensor xhat = routing_layer_norm(randn({B, H, T, dh}, DType::f64, &g));
  Tensor mu = random_centroids(g, H, k, dh);
  routing::Routing r = routing::route(xhat, mu, w);
  REQUIRE(r.index.shape() == Shape{B, H, k * w});
  const std::vector<int64_t> idx = r.index.to_vector<int64_t>(), near = r.nearest.to_vector<int64_t>(),
                             count = r.count.to_vector<int64_t>();
  const std::vector<double> x = xhat.to_vector<double>(), m = mu.to_vector<double>();
  auto score = [&](int64_t bh, int64_t t, int64_t c) {
    double d = 0;
    for (int64_t e = 0; e < dh; ++e) d += x[size_t(((bh * T) + t) * dh + e)] * m[size_t(((bh % H) * k + c) * dh + e)];
    return d;
  };
  std::vector<int64_t> seen(size_t(B * H * T), 0);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    for (int64_t c = 0; c < k; ++c) {
      const int64_t* cl = idx.data() + (bh * k + c) * w;
      for (int64_t s = 1; s < w; ++s) CHECK(cl[s] > cl[s - 1]);  // sorted, no duplicates: exactly w tokens
      // The w-th best score is no better than every member's, and no outsider beats any member.
      double worst_in = INFINITY, best_out = -INFINITY;
      std::vector<bool> in(size_t(T), false);
      for (int64_t s = 0; s < w; ++s) in[size_t(cl[s])] = true, ++seen[size_t(bh * T + cl[s])];
      for (int64_t t = 0; t < T; ++t)
        (in[size_t(t)] ? worst_in : best_out) =
            in[size_t(t)] ? std::min(worst_in, score(bh, t, c)) : std::max(best_out, score(bh, t, c));
      CHECK(worst_in >= best_out);
    }
    for (int64_t t = 0; t < T; ++t) {
      int64_t best = 0;
      for (int64_t c = 1; c < k; ++c) best = score(bh, t, c) > score(bh, t, best) ? c : best;
      CHECK(near[size_t(bh * T + t)] == best);
      CHECK(count[size_t(bh * T + t)] == seen[size_t(bh * T + t)]);
    }
  }
  CHECK(routing::window_for(23, 4, 0) == 6);
  CHECK(routing::window_for(23, 4, 64) == 23);
  CHECK(routing::window_for(1, 16, 0) == 1);
  CHECK_THROWS_AS(routing::route(xhat, mu, T + 1), ValueError);
  CHECK_THROWS_AS(routing::route(xhat, random_centroids(g, H + 1, k, dh), w), ShapeError);
}

TEST_CASE("route_nearest: each token in its nearest cluster while it has room, in position order") {
  Generator g(11);
  const int64_t B = 2, H = 2, T = 30, dh = 4, k = 3, w = 6;
  Tensor xhat = routing_layer_norm(randn({B, H, T, dh}, DType::f64, &g));
  routing::Routing r = routing::route_nearest(xhat, random_centroids(g, H, k, dh), w);
  CHECK(r.partial);
  const std::vector<int64_t> idx = r.index.to_vector<int64_t>(), near = r.nearest.to_vector<int64_t>(),
                             count = r.count.to_vector<int64_t>();
  for (int64_t bh = 0; bh < B * H; ++bh) {
    std::vector<std::vector<int64_t>> want(static_cast<size_t>(k));
    for (int64_t t = 0; t < T; ++t) {
      auto& cl = want[size_t(near[size_t(bh * T + t)])];
      CHECK(count[size_t(bh * T + t)] == (int64_t(cl.size()) < w ? 1 : 0));
      if (int64_t(cl.size()) < w) cl.push_back(t);
    }
    for (int64_t c = 0; c < k; ++c) {
      while (int64_t(want[size_t(c)].size()) < w) want[size_t(c)].push_back(-1);
      CHECK(std::vector<int64_t>(idx.begin() + (bh * k + c) * w, idx.begin() + (bh * k + c + 1) * w) ==
            want[size_t(c)]);
    }
  }
  // Empty slots must trail the cluster's positions.
  CHECK_THROWS_AS(routing::from_index(from_vector(std::vector<int64_t>{0, -1, 2}, {1, 1, 3}), 1, 4), ValueError);
  CHECK_THROWS_AS(routing::from_index(from_vector(std::vector<int64_t>{0, 2, 2}, {1, 1, 3}), 1, 4), ValueError);
  CHECK_NOTHROW(routing::from_index(from_vector(std::vector<int64_t>{0, 2, -1}, {1, 1, 3}), 1, 4));
}

TEST_CASE("routing attention: fused == composite == naive loop, outputs and gradients (f64, f32)") {
  Generator g(2);
  const int64_t B = 2, H = 2, T = 19, dh = 4, k = 3;
  for (bool causal : {true, false})
    for (bool padded : {false, true})
      for (int64_t w : {5, 7, 19})
        for (bool nearest : {false, true}) {
          INFO("causal ", causal, ", padding ", padded, ", w ", w, ", nearest ", nearest);
          Tensor q = routing_layer_norm(randn({B, H, T, dh}, DType::f64, &g));
          Tensor v = randn({B, H, T, dh}, DType::f64, &g), go = randn({B, H, T, dh}, DType::f64, &g);
          Tensor pad = padded ? testing::random_padding(g, B, T, 0.3) : Tensor();
          Tensor mu = random_centroids(g, H, k, dh);
          routing::Routing r = nearest ? routing::route_nearest(q, mu, w) : routing::route(q, mu, w);
          Result f = run(fused_fn(r, causal, pad, 0.6), q, q, v, go);
          Result c = run(composite_fn(r, causal, pad, 0.6), q, q, v, go);
          check_close_qv(f, c, 1e-10, 1e-12);
          CHECK(allclose(f.out, naive_routing(q, v, r, causal, pad, 0.6), 1e-10, 1e-12));
          // f32 through the register kernels, against the f64 result.
          Result f32 = run(fused_fn(r, causal, pad.defined() ? pad : Tensor(), 0.6), q.to(DType::f32), q.to(DType::f32),
                           v.to(DType::f32), go.to(DType::f32));
          CHECK(allclose(f32.out.to(DType::f64), f.out, 1e-4, 1e-5));
          CHECK(allclose(f32.dq.to(DType::f64), f.dq, 1e-3, 1e-4));
          CHECK(allclose(f32.dv.to(DType::f64), f.dv, 1e-4, 1e-5));
        }
}

TEST_CASE("routing attention: one cluster holding every token is full causal attention (/ 1.01)") {
  Generator g(3);
  const int64_t B = 2, H = 2, T = 13, dh = 4;
  Tensor q = routing_layer_norm(randn({B, H, T, dh}, DType::f64, &g));
  Tensor v = randn({B, H, T, dh}, DType::f64, &g), go = randn({B, H, T, dh}, DType::f64, &g);
  routing::Routing r = routing::route(q, random_centroids(g, H, 1, dh), T);
  const double keep = 1.0 / (1.0 + routing::kCountSmoothing);
  Result f = run(fused_fn(r, true, {}, 0.5), q, q, v, go);
  Result full = run(
      [&](const Tensor& a, const Tensor&, const Tensor& b) {
        return mul(softmax_attention_composite(a, a, b, {true, {}}, 0.5), scalar_tensor(keep, DType::f64));
      },
      q, q, v, go);
  check_close_qv(f, full, 1e-11, 1e-12);
}

TEST_CASE("routing attention: with frozen routing, perturbing future tokens leaves past outputs bit-identical") {
  Generator g(4);
  const int64_t B = 1, H = 2, T = 16, dh = 8, k = 4, cut = 9;
  Tensor q = routing_layer_norm(randn({B, H, T, dh}, DType::f32, &g));
  Tensor v = randn({B, H, T, dh}, DType::f32, &g);
  routing::Routing r = routing::route(q, random_centroids(g, H, k, dh).to(DType::f32), 6);
  Tensor before = routing_attention(q, v, r, true, {}, 0.4);
  // New values for positions >= cut, same routing (the clusters are constants of this op).
  Tensor noise = randn({B, H, T, dh}, DType::f32, &g);
  Tensor keep = lt(arange(T).reshape({1, 1, T, 1}), scalar_tensor(double(cut), DType::i64));
  Tensor q2 = where(keep, q, noise), v2 = where(keep, v, add(v, noise));
  Tensor after = routing_attention(q2, v2, r, true, {}, 0.4);
  CHECK(equal(before.narrow(2, 0, cut).contiguous(), after.narrow(2, 0, cut).contiguous()));
  CHECK_FALSE(equal(before.narrow(2, cut, T - cut).contiguous(), after.narrow(2, cut, T - cut).contiguous()));
}

TEST_CASE("routing method, \"assign\": \"nearest\": perturbing future tokens leaves past outputs bit-identical") {
  // The whole method (LN, routing, mixed heads): with the official top-w the clusters of the past
  // depend on later tokens' scores (docs/routing.md), with "nearest" they do not.
  Generator g(12);
  const int64_t B = 2, H = 3, T = 24, dh = 8, cut = 13;
  auto m = std::dynamic_pointer_cast<RoutingAttention>(
      make_attention({{"type", "routing"},
                      {"clusters", 3},
                      {"window", 6},
                      {"assign", "nearest"},
                      {"local_heads", 1},
                      {"local_block", 8}},
                     AttentionContext{dh, H, std::make_shared<Generator>(0), DType::f32}));
  REQUIRE(m);
  m->eval();
  NoGradGuard ng;
  Tensor q = randn({B, H, T, dh}, DType::f32, &g), v = randn({B, H, T, dh}, DType::f32, &g);
  Tensor keep = lt(arange(T).reshape({1, 1, T, 1}), scalar_tensor(double(cut), DType::i64));
  Tensor q2 = where(keep, q, randn({B, H, T, dh}, DType::f32, &g)),
         v2 = where(keep, v, randn({B, H, T, dh}, DType::f32, &g));
  Tensor a = m->forward(q, q, v, {true, {}}), b = m->forward(q2, q2, v2, {true, {}});
  CHECK(equal(a.narrow(2, 0, cut).contiguous(), b.narrow(2, 0, cut).contiguous()));
  CHECK_FALSE(equal(a.narrow(2, cut, T - cut).contiguous(), b.narrow(2, cut, T - cut).contiguous()));
}

TEST_CASE("EMA k-means step == the formula on a hand-built batch with an empty cluster") {
  // One head, k = 3, dh = 2; the batch puts 2 tokens in cluster 0, 1 in cluster 1, none in cluster 2.
  Tensor mu = from_vector(std::vector<double>{1.0, 0.0, 0.0, 1.0, -1.0, 0.0}, {1, 3, 2});
  Tensor N = from_vector(std::vector<double>{1.0, 2.0, 0.5}, {1, 3}),
         S = from_vector(std::vector<double>{1.0, 0.0, 0.0, 2.0, -0.5, 0.0}, {1, 3, 2});
  Tensor xhat = from_vector(std::vector<double>{1.0, 1.0, 3.0, -1.0, 0.0, 2.0}, {1, 1, 3, 2});
  Tensor nearest = from_vector(std::vector<int64_t>{0, 0, 1}, {1, 1, 3});
  routing::BatchSums b = routing::nearest_sums(xhat, nearest, 3);
  CHECK(b.count.to_vector<double>() == std::vector<double>{2, 1, 0});
  CHECK(b.sum.to_vector<double>() == std::vector<double>{4, 0, 0, 2, 0, 0});
  const double d = 0.9, eps = 1e-5;
  routing::ema_update(mu, N, S, b, d, eps);
  const std::vector<double> n = {d * 1 + (1 - d) * 2, d * 2 + (1 - d) * 1, d * 0.5};
  const double total = n[0] + n[1] + n[2];
  const std::vector<double> s = {d * 1 + (1 - d) * 4, 0, 0, d * 2 + (1 - d) * 2, d * -0.5, 0};
  CHECK(allclose(N, from_vector(n, {1, 3}), 1e-14, 0));
  CHECK(allclose(S, from_vector(s, {1, 3, 2}), 1e-14, 0));
  std::vector<double> want(6);
  for (int c = 0; c < 3; ++c) {
    const double smoothed = (n[size_t(c)] + eps) / (total + 3 * eps) * total;
    for (int e = 0; e < 2; ++e) want[size_t(c * 2 + e)] = s[size_t(c * 2 + e)] / smoothed;
  }
  CHECK(allclose(mu, from_vector(want, {1, 3, 2}), 1e-14, 0));
  // The empty cluster kept its direction (its sums only decayed) and stayed finite.
  CHECK(mu.to_vector<double>()[4] < 0);
  CHECK(mu.to_vector<double>()[5] == 0);
}

TEST_CASE("commitment loss: value and gradient 2β(x̂ − μ)/numel, none into the centroids") {
  Generator g(5);
  const int64_t B = 2, H = 2, T = 5, dh = 3, k = 3;
  Tensor xhat = randn({B, H, T, dh}, DType::f64, &g).set_requires_grad(true);
  Tensor mu = random_centroids(g, H, k, dh);
  routing::Routing r = routing::route(xhat.detach(), mu, 2);
  const double beta = 1e-2;
  Tensor loss = routing::commitment_loss(xhat, mu, r.nearest, beta);
  loss.backward();
  const std::vector<int64_t> near = r.nearest.to_vector<int64_t>();
  const std::vector<double> x = xhat.detach().to_vector<double>(), m = mu.to_vector<double>();
  std::vector<double> grad(x.size());
  double value = 0;
  const double n = double(x.size());
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < dh; ++e) {
        const size_t i = size_t((bh * T + t) * dh + e);
        const double diff = x[i] - m[size_t(((bh % H) * k + near[size_t(bh * T + t)]) * dh + e)];
        value += beta * diff * diff / n;
        grad[i] = 2 * beta * diff / n;
      }
  CHECK(loss.item<double>() == doctest::Approx(value).epsilon(1e-12));
  CHECK(allclose(xhat.grad(), from_vector(grad, xhat.shape()), 1e-12, 1e-15));
}

namespace {
std::shared_ptr<RoutingAttention> make_routing(const nlohmann::json& cfg, int64_t H, int64_t dh,
                                               DType dt = DType::f32) {
  auto m = std::dynamic_pointer_cast<RoutingAttention>(
      make_attention(cfg, AttentionContext{dh, H, std::make_shared<Generator>(0), dt}));
  REQUIRE(m);
  return m;
}
}  // namespace

TEST_CASE("routing method: centroids change only in after_step, by the EMA of training forwards") {
  Generator g(6);
  const int64_t B = 2, H = 2, T = 16, dh = 8;
  auto m = make_routing({{"type", "routing"}, {"clusters", 4}, {"decay", 0.5}}, H, dh);
  Tensor q = randn({B, H, T, dh}, DType::f32, &g).set_requires_grad(true), v = randn({B, H, T, dh}, DType::f32, &g);
  const Tensor mu0 = m->centroids().clone();
  {
    m->eval();  // evaluation and sampling: nothing is recorded for the EMA
    NoGradGuard ng;
    m->forward(q, q, v, {true, {}});
    m->after_step();
    CHECK(equal(m->centroids(), mu0));
  }
  m->train();
  Tensor out = m->forward(q, q, v, {true, {}});
  add(sum(out), m->aux_loss()).backward();
  CHECK(equal(m->centroids(), mu0));  // forward and backward leave them alone (gradcheck, audit)
  REQUIRE(q.grad().defined());
  const routing::Routing r = routing::route(routing_layer_norm(q.detach()), mu0, 4);
  routing::BatchSums b = routing::nearest_sums(routing_layer_norm(q.detach()), r.nearest, 4);
  Tensor want = mu0.clone(), N = ones({H, 4}), S = mu0.clone();
  routing::ema_update(want, N, S, b, 0.5);
  m->after_step();
  CHECK(allclose(m->centroids(), want, 1e-5, 1e-6));
  CHECK_FALSE(equal(m->centroids(), mu0));
  const auto st = m->stats();
  REQUIRE(st.count("centroid_drift"));
  CHECK(st.at("centroid_drift").size() == size_t(H));
  CHECK(st.at("centroid_drift")[0] > 0);
  // A second after_step with no training forward in between changes nothing.
  const Tensor mu1 = m->centroids().clone();
  m->after_step();
  CHECK(equal(m->centroids(), mu1));
}

TEST_CASE("routing method: mixed heads (local first), internals, fused == composite") {
  Generator g(7);
  const int64_t B = 1, H = 3, T = 12, dh = 4;
  nlohmann::json cfg = {{"type", "routing"}, {"clusters", 3}, {"local_heads", 1}, {"local_block", 4}};
  auto fused = make_routing(cfg, H, dh, DType::f64);
  cfg["impl"] = "composite";
  auto comp = make_routing(cfg, H, dh, DType::f64);
  Tensor q = randn({B, H, T, dh}, DType::f64, &g), k = randn({B, H, T, dh}, DType::f64, &g),
         v = randn({B, H, T, dh}, DType::f64, &g), go = randn({B, H, T, dh}, DType::f64, &g);
  auto fn = [](std::shared_ptr<RoutingAttention> m) {
    return [m](const Tensor& a, const Tensor& b, const Tensor& c) { return m->forward(a, b, c, {true, {}}); };
  };
  Result f = run(fn(fused), q, k, v, go), c = run(fn(comp), q, k, v, go);
  check_close(f, c, 1e-10, 1e-12);
  // Head 0 is block-local attention.
  Tensor local = local_attention(q.narrow(1, 0, 1), k.narrow(1, 0, 1), v.narrow(1, 0, 1), {true, {}}, 4, 0.5);
  CHECK(allclose(f.out.narrow(1, 0, 1).contiguous(), local, 1e-12, 1e-12));
  // Keys feed the local head only (routing heads share queries and keys).
  CHECK(equal(f.dk.narrow(1, 1, 2).contiguous(), zeros({B, 2, T, dh}, DType::f64)));
  fused->record_internals = true;
  {
    NoGradGuard ng;
    Tensor out = fused->forward(q, k, v, {true, {}});
    const Tensor& attn = fused->internals.at("attn");
    REQUIRE(attn.shape() == Shape{B, H, T, T});
    // The equivalent full matrix reproduces the output: attn @ v.
    CHECK(allclose(matmul(attn, v), out, 1e-10, 1e-12));
    CHECK(fused->internals.at("cluster").shape() == Shape{B, H, T});
    CHECK(fused->internals.at("cluster").to_vector<int64_t>()[5] == 1);  // head 0, token 5: local block 1
    CHECK(fused->internals.at("occupancy").shape() == Shape{2, 3});
    CHECK(fused->internals.at("together").shape() == Shape{B, H, T, T});
    CHECK(sum(fused->internals.at("occupancy").to(DType::f64)).item<double>() == 2 * B * T);
  }
}

TEST_CASE("routing config: defaults and errors name the field") {
  auto ctx = [](int64_t max_len, int64_t layer) {
    return AttentionContext{8, 4, std::make_shared<Generator>(0), DType::f32, max_len, layer};
  };
  auto m = std::dynamic_pointer_cast<RoutingAttention>(make_attention({{"type", "routing"}}, ctx(256, 0)));
  REQUIRE(m);
  CHECK(m->options().clusters == 16);  // k ≈ √n
  CHECK(m->options().decay == 0.999);
  CHECK(m->options().commitment == 1e-4);
  auto per_layer = [&](int64_t layer) {
    return std::dynamic_pointer_cast<RoutingAttention>(
        make_attention({{"type", "routing"}, {"local_heads", {4, 2}}}, ctx(64, layer)));
  };
  CHECK(per_layer(0)->routing_heads() == 0);
  CHECK(per_layer(1)->routing_heads() == 2);
  CHECK(testing::contains(testing::message_of<ValueError>([&] { per_layer(2); }), "local_heads"));
  CHECK(testing::contains(testing::message_of<ValueError>([&] {
                            make_attention({{"type", "routing"}}, ctx(0, 0));
                          }),
                          "clusters"));
  CHECK(testing::contains(testing::message_of<ValueError>([&] {
                            make_attention({{"type", "routing"}, {"local_heads", 5}}, ctx(64, 0));
                          }),
                          "local_heads"));
  CHECK(testing::contains(testing::message_of<ValueError>([&] {
                            parse_attention({{"type", "routing"}, {"decay", 1.0}});
                          }),
                          "decay"));
  CHECK(testing::contains(testing::message_of<ValueError>([&] {
                            parse_attention({{"type", "routing"}, {"local_heads", "x"}});
                          }),
                          "local_heads"));
  Generator g(8);
  Tensor q = randn({1, 4, 6, 8}, DType::f32, &g), k = randn({1, 4, 5, 8}, DType::f32, &g);
  CHECK_THROWS_AS(m->forward(q, k, k, {}), ShapeError);
}

TEST_CASE("a routing LM evaluates and samples before any training step (prefixes of every length)") {
  ModelConfig c;
  c.vocab_size = 11, c.d_model = 16, c.n_layers = 2, c.n_heads = 2, c.d_ff = 32, c.max_len = 16;
  c.attention = {{"type", "routing"}, {"local_heads", {1, 0}}, {"local_block", 4}};
  CausalLM lm(c);
  lm.eval();
  NoGradGuard ng;
  for (int64_t T = 1; T <= 16; T += 3) {
    std::vector<int64_t> ids(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) ids[size_t(t)] = t % 11;
    Tensor logits = lm.forward(from_vector(ids, {1, T}));
    testing::require_finite(logits);
  }
  Generator g(9);
  SampleOptions opts;
  opts.length = 20;  // past max_len: the window slides
  CHECK(generate(lm, {1, 2, 3}, opts, g).size() == 23);
  CHECK(lm.trunk->aux_loss().defined());
  CHECK(lm.state_dict().count("trunk.blocks.0.attn.method.centroids"));
}

TEST_CASE("attnlab layer runs routing attention and writes its internals") {
  Generator g(10);
  nlohmann::json att = {{"type", "routing"}, {"clusters", 2}, {"local_heads", 1}, {"local_block", 4}};
  LayerConfig cfg = LayerConfig::from_json({{"attention", att}, {"causal", true}});
  TensorMap r = run_layer("attention", cfg,
                          {{"q", randn({1, 2, 8, 4}, DType::f32, &g)},
                           {"k", randn({1, 2, 8, 4}, DType::f32, &g)},
                           {"v", randn({1, 2, 8, 4}, DType::f32, &g)}});
  CHECK(r.at("out").shape() == Shape{1, 2, 8, 4});
  CHECK(r.at("internals.attn").shape() == Shape{1, 2, 8, 8});
  CHECK(r.count("internals.together"));
  LayerConfig mha = LayerConfig::from_json({{"attention", att}, {"causal", true}, {"n_heads", 2}});
  TensorMap m = run_layer("mha", mha, {{"x", randn({1, 8, 8}, DType::f32, &g)}});
  CHECK(m.count("grad.x"));
}

TEST_CASE("training a routing LM: commitment loss logged, centroids move by EMA, resume is exact") {
  testing::TempDir dir;
  const std::string corpus = testing::write_corpus(dir.path.string());
  auto config = [&](const std::string& sub) {
    nlohmann::json cfg = testing::tiny_config(dir.file(sub), corpus);
    cfg["model"]["attention"] = {{"type", "routing"}, {"clusters", 3}, {"local_heads", 1}, {"local_block", 8}};
    std::filesystem::create_directories(dir.file(sub));
    return TrainConfig::from_json(cfg);
  };
  std::ostringstream log;
  const TrainConfig full = config("a");
  const std::vector<double> uninterrupted = LMTrainer(full, false, log).run();
  CHECK(testing::contains(log.str(), "attn.centroid_drift (layer: per head):  L0 "));
  std::ifstream m(dir.file("a") + "/run/metrics.jsonl");
  std::string line;
  int rows = 0;
  while (std::getline(m, line)) {
    const auto row = nlohmann::json::parse(line);
    if (!row.contains("train_loss")) continue;
    ++rows;
    CHECK(row.at("train_aux_loss").get<double>() > 0);
    CHECK(row.at("train_aux_loss").get<double>() < 1e-2);  // β = 1e-4 times a distance² of order dh
    CHECK(row.at("attn.centroid_drift")[0][0].get<double>() > 0);
  }
  CHECK(rows == 6);
  // The trained centroids differ from a fresh model's: after_step ran.
  LoadedRun run = load_run(dir.file("a") + "/run");
  CausalLM fresh(full.model);
  const std::string key = "trunk.blocks.0.attn.method.centroids";
  CHECK_FALSE(equal(run.model->state_dict().at(key), fresh.state_dict().at(key)));
  // The EMA state is in the checkpoint: stopping at step 7 and resuming gives the same losses.
  const TrainConfig part = config("b");
  std::vector<double> joined;
  {
    LMTrainer t(part, false, log);
    joined = t.run(7);
  }
  const std::vector<double> rest = LMTrainer(part, true, log).run();
  joined.insert(joined.end(), rest.begin(), rest.end());
  CHECK(joined == uninterrupted);
}

// Entmax attention: the fused kernel against the composite reference (output, dQ, dK, dV and ∂α) in
// f32 and f64 over masks, uneven tiles, Tq != Tk, strided inputs and threads; exact zeros, support
// sizes and the tile bitmask against the composite's weights; fully masked and NaN rows; bad input;
// the method (config, learned α and temperature, internals, stats).
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <limits>

#include "attention/entmax_attention.h"
#include "autograd/grad_mode.h"
#include "core/cpu/loops.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "optim/sgd.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;

namespace {

struct Result {
  Tensor out, dq, dk, dv, dalpha;
};

// alpha.per_head, when defined, becomes a leaf too, so ∂L/∂α is compared.
Result run(bool fused, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const AttentionMask& m,
           double scale, const EntmaxAlpha& alpha) {
  Tensor lq = q.detach().clone().set_requires_grad(true);
  Tensor lk = k.detach().clone().set_requires_grad(true);
  Tensor lv = v.detach().clone().set_requires_grad(true);
  EntmaxAlpha a = alpha;
  if (a.per_head.defined()) a.per_head = alpha.per_head.detach().clone().set_requires_grad(true);
  Tensor out = fused ? entmax_attention(lq, lk, lv, m, scale, a) : entmax_attention_composite(lq, lk, lv, m, scale, a);
  out.backward(g);
  return {out.detach(), lq.grad(), lk.grad(), lv.grad(), a.per_head.defined() ? a.per_head.grad() : Tensor()};
}

void check_close(const Result& a, const Result& b, DType dt) {
  const double rtol = dt == DType::f64 ? 1e-9 : 2e-3, atol = dt == DType::f64 ? 1e-11 : 2e-4;
  CHECK(allclose(a.out, b.out, rtol, atol));
  CHECK(allclose(a.dq, b.dq, rtol, atol));
  CHECK(allclose(a.dk, b.dk, rtol, atol));
  CHECK(allclose(a.dv, b.dv, rtol, atol));
  if (b.dalpha.defined()) {
    REQUIRE(a.dalpha.defined());
    CHECK(allclose(a.dalpha, b.dalpha, rtol, dt == DType::f64 ? 1e-9 : 2e-3));
  }
  for (const Tensor& t : {a.out, a.dq, a.dk, a.dv})
    for (double x : t.to(DType::f64).to_vector<double>()) REQUIRE(std::isfinite(x));
}

struct TileGuard {
  explicit TileGuard(const entmax_attention_tiles::Tiles& t) { entmax_attention_tiles::set(t); }
  ~TileGuard() { entmax_attention_tiles::set({}); }
  TileGuard(const TileGuard&) = delete;
  TileGuard& operator=(const TileGuard&) = delete;
};

struct Case {
  int64_t B, H, Tq, Tk, dh;
  bool causal, padding;
  entmax_attention_tiles::Tiles tiles;
};

// α settings every case runs with: the exact maps, a fixed bisection α, per-head α (with ∂α).
std::vector<std::pair<std::string, EntmaxAlpha>> alphas(int64_t H, DType dt) {
  std::vector<double> per_head;
  for (int64_t h = 0; h < H; ++h) per_head.push_back(1.15 + 0.8 * double(h + 1) / double(H + 1));
  return {{"1.5-entmax", {1.5, {}}},
          {"sparsemax", {2.0, {}}},
          {"α = 1.3 (bisection)", {1.3, {}}},
          {"per-head α", {0, from_vector(per_head, {H}, dt)}}};
}

void check_against_composite(const std::vector<Case>& cases, uint64_t seed) {
  for (DType dt : {DType::f64, DType::f32})
    for (const Case& c : cases)
      for (const auto& [label, alpha] : alphas(c.H, dt)) {
        INFO("dtype ", dtype_name(dt), ", ", label, ", B ", c.B, " H ", c.H, " Tq ", c.Tq, " Tk ", c.Tk, " dh ", c.dh,
             " causal ", c.causal, " padding ", c.padding, " tiles ", c.tiles.q, "x", c.tiles.k);
        Generator g(seed++);
        // Scores of a few units, as in a trained model: supports of several keys, not one.
        Tensor q = randn({c.B, c.H, c.Tq, c.dh}, dt, &g), k = randn({c.B, c.H, c.Tk, c.dh}, dt, &g),
               v = randn({c.B, c.H, c.Tk, c.dh}, dt, &g), go = randn({c.B, c.H, c.Tq, c.dh}, dt, &g);
        AttentionMask m;
        m.causal = c.causal;
        if (c.padding) m.key_padding = lt(rand({c.B, c.Tk}, DType::f64, &g), scalar_tensor(0.3, DType::f64));
        const double scale = 1.5 / std::sqrt(double(c.dh));
        const Result ref = run(false, q, k, v, go, m, scale, alpha);
        for (double sparse_below : {0.0, 2.0}) {  // dense tile products, then per weight
          INFO("sparse_below ", sparse_below);
          entmax_attention_tiles::Tiles t = c.tiles;
          t.sparse_below = sparse_below;
          TileGuard tg(t);
          check_close(run(true, q, k, v, go, m, scale, alpha), ref, dt);
        }
      }
}

}  // namespace

TEST_CASE("entmax attention: fused matches the composite (output, dQ, dK, dV, dα), f32 and f64") {
  check_against_composite({{1, 1, 1, 1, 1, false, false, {}},
                           {2, 3, 17, 17, 8, false, false, {4, 5}},
                           {1, 2, 33, 33, 16, true, false, {8, 8}},
                           {2, 2, 13, 29, 5, true, true, {3, 7}},
                           {2, 2, 29, 13, 4, true, false, {6, 4}},  // first rows see nothing
                           {3, 1, 20, 20, 7, false, true, {64, 64}},
                           {1, 2, 70, 130, 24, true, true, {}}},
                          11);
}

TEST_CASE("entmax attention: the parallel paths (grain 0, 3 threads, heads cut in parts) match, bit for bit") {
  cpu::ScopedParallelGrain grain(0);
  Generator g(5);
  const DType dt = DType::f64;
  Tensor q = randn({1, 2, 40, 6}, dt, &g), k = randn({1, 2, 40, 6}, dt, &g), v = randn({1, 2, 40, 6}, dt, &g),
         go = randn({1, 2, 40, 6}, dt, &g);
  const EntmaxAlpha alpha{0, from_vector(std::vector<double>{1.4, 1.7}, {2}, dt)};
  for (double sparse_below : {0.0, 0.3, 2.0}) {  // dense, mixed, per weight
    INFO("sparse_below ", sparse_below);
    TileGuard tg({4, 8, sparse_below});
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const Result one = run(true, q, k, v, go, {true, {}}, 0.7, alpha);
    omp_set_num_threads(3);
    const Result three = run(true, q, k, v, go, {true, {}}, 0.7, alpha);
    omp_set_num_threads(saved);
    CHECK(equal(one.out, three.out));
    CHECK(equal(one.dq, three.dq));
    CHECK(equal(one.dk, three.dk));
    CHECK(equal(one.dv, three.dv));
    CHECK(equal(one.dalpha, three.dalpha));
    check_close(one, run(false, q, k, v, go, {true, {}}, 0.7, alpha), dt);
  }
}

TEST_CASE("entmax attention: exact zeros; support sizes and tile bitmask agree with the composite's weights") {
  Generator g(3);
  const int64_t B = 2, H = 2, T = 23, dh = 8;
  Tensor q = randn({B, H, T, dh}, DType::f64, &g), k = randn({B, H, T, dh}, DType::f64, &g),
         v = randn({B, H, T, dh}, DType::f64, &g);
  TileGuard tg({5, 4});
  for (const EntmaxAlpha& alpha : {EntmaxAlpha{1.5, {}}, EntmaxAlpha{2.0, {}}, EntmaxAlpha{1.8, {}}}) {
    EntmaxAttentionStats st;
    Tensor w;
    entmax_attention(q, k, v, {true, {}}, 2.0, alpha, &st);
    entmax_attention_composite(q, k, v, {true, {}}, 2.0, alpha, &w);
    // Rows sum to 1; at least one exact zero per long row (sparse); nothing above the diagonal.
    const std::vector<double> wv = w.to_vector<double>();
    int64_t zeros_seen = 0;
    for (int64_t r = 0; r < B * H * T; ++r) {
      double s = 0;
      for (int64_t j = 0; j < T; ++j) {
        const double x = wv[size_t(r * T + j)];
        s += x;
        zeros_seen += x == 0.0;
        if (j > r % T) REQUIRE(x == 0.0);
      }
      CHECK(s == doctest::Approx(1.0).epsilon(1e-12));
    }
    CHECK(zeros_seen > B * H * T * (T - 1) / 2);
    REQUIRE(st.support.shape() == Shape{B, H, T});
    const std::vector<int64_t> sup = st.support.to_vector<int64_t>();
    for (int64_t r = 0; r < B * H * T; ++r) {
      int64_t n = 0;
      for (int64_t j = 0; j < T; ++j) n += wv[size_t(r * T + j)] > 0;
      REQUIRE(sup[size_t(r)] == n);
    }
    const int64_t nqt = (T + 4) / 5, nkt = (T + 3) / 4;
    REQUIRE(st.tiles.shape() == Shape{B, H, nqt, nkt});
    REQUIRE(st.tile_q == 5);
    REQUIRE(st.tile_k == 4);
    const std::vector<double> bits = st.tiles.to(DType::f64).to_vector<double>();
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t qt = 0; qt < nqt; ++qt)
        for (int64_t kt = 0; kt < nkt; ++kt) {
          bool any = false;
          for (int64_t i = qt * 5; i < std::min(T, qt * 5 + 5); ++i)
            for (int64_t j = kt * 4; j < std::min(T, kt * 4 + 4); ++j)
              any = any || wv[size_t((bh * T + i) * T + j)] > 0;
          REQUIRE((bits[size_t((bh * nqt + qt) * nkt + kt)] != 0) == any);
        }
  }
}

TEST_CASE("entmax attention: α = 2 is sparsemax attention; α near 1 approaches softmax attention") {
  Generator g(8);
  Tensor q = randn({1, 2, 9, 4}, DType::f64, &g), k = randn({1, 2, 11, 4}, DType::f64, &g),
         v = randn({1, 2, 11, 4}, DType::f64, &g);
  const Tensor ref = entmax_attention(q, k, v, {}, 0.8, {2.0, {}});
  CHECK(allclose(entmax_attention(q, k, v, {}, 0.8, {0, full({2}, 2.0, DType::f64)}), ref, 1e-9, 1e-10));
  const Tensor soft = softmax_attention_composite(q, k, v, {}, 0.8);
  const double far = max(abs(sub(entmax_attention(q, k, v, {}, 0.8, {1.5, {}}), soft))).item<double>();
  const double near = max(abs(sub(entmax_attention(q, k, v, {}, 0.8, {1.001, {}}), soft))).item<double>();
  CHECK(near < 1e-2);
  CHECK(near < far / 10);
}

TEST_CASE("entmax attention: fully masked rows give zeros and zero gradients; NaN scores give NaN") {
  Generator g(4);
  const DType dt = DType::f64;
  Tensor q = randn({2, 1, 6, 3}, dt, &g), k = randn({2, 1, 4, 3}, dt, &g), v = randn({2, 1, 4, 3}, dt, &g);
  // Causal with Tq 6 > Tk 4: the first two queries see nothing; batch 1 is fully padded.
  AttentionMask m{true, from_vector({0, 0, 1, 0, 1, 1, 1, 1}, {2, 4}, DType::b8)};
  for (const EntmaxAlpha& alpha : {EntmaxAlpha{1.5, {}}, EntmaxAlpha{0, full({1}, 1.6, dt)}}) {
    const Result r = run(true, q, k, v, ones({2, 1, 6, 3}, dt), m, 1.0, alpha);
    const std::vector<double> out = r.out.to_vector<double>(), dq = r.dq.to_vector<double>();
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t d = 0; d < 3; ++d) {
        const bool masked = i < 2;
        if (masked) CHECK(out[size_t(i * 3 + d)] == 0.0);
        if (masked) CHECK(dq[size_t(i * 3 + d)] == 0.0);
        CHECK(out[size_t(18 + i * 3 + d)] == 0.0);  // batch 1
        CHECK(dq[size_t(18 + i * 3 + d)] == 0.0);
      }
    for (double x : r.dk.to_vector<double>()) CHECK(std::isfinite(x));
    if (r.dalpha.defined()) CHECK(std::isfinite(r.dalpha.item<double>()));
  }
  Tensor qn = q.clone();
  qn.data<double>()[3] = std::numeric_limits<double>::quiet_NaN();  // query 1 of batch 0
  const std::vector<double> out = entmax_attention(qn, k, v, {}, 1.0, {1.5, {}}).to_vector<double>();
  for (int64_t d = 0; d < 3; ++d) CHECK(std::isnan(out[size_t(3 + d)]));
  for (int64_t d = 0; d < 3; ++d) CHECK(std::isfinite(out[size_t(d)]));
}

TEST_CASE("entmax attention: bad input gives clear errors") {
  Tensor q = zeros({1, 2, 3, 4}, DType::f64), k = zeros({1, 2, 5, 4}, DType::f64);
  CHECK(contains(message_of<Error>([&] { entmax_attention(q, k, k, {}, 1.0, {1.0, {}}); }), "alpha must be finite and > 1"));
  CHECK(contains(message_of<Error>([&] { entmax_attention(q, k, k, {}, 1.0, {NAN, {}}); }), "entmax_attention"));
  CHECK(contains(message_of<Error>([&] {
                   entmax_attention(q, k, k, {}, 1.0, {0, full({3}, 1.5, DType::f64)});
                 }),
                 "per-head alpha must be [H] = [2]"));
  CHECK(contains(message_of<Error>([&] {
                   entmax_attention(q, k, k, {}, 1.0, {0, from_vector(std::vector<double>{1.5, 0.9}, {2})});
                 }),
                 "alpha must be finite and > 1 for every head"));
  CHECK(contains(message_of<Error>([&] {
                   entmax_attention(q, zeros({1, 2, 5, 3}, DType::f64), k, {}, 1.0, {});
                 }),
                 "does not match"));
  CHECK(contains(message_of<Error>([&] { parse_attention({{"type", "entmax"}, {"alpha", 1.0}}); }), "attention.alpha"));
  CHECK(contains(message_of<Error>([&] {
                   parse_attention({{"type", "entmax"}, {"alpha", 2.0}, {"learn_alpha", true}});
                 }),
                 "(1, 2)"));
  CHECK(contains(message_of<Error>([&] { parse_attention({{"type", "entmax"}, {"alpah", 1.5}}); }), "unknown key"));
}

TEST_CASE("entmax attention method: learned α and temperature get gradients; fused == composite; stats") {
  for (const std::string impl : {"fused", "composite"}) {
    AttentionContext ctx{4, 3, nullptr, DType::f64};
    auto cfg = nlohmann::json{{"type", "entmax"},          {"alpha", 1.4}, {"learn_alpha", true}, {"temperature", 1.5},
                              {"learn_temperature", true}, {"impl", impl}};
    auto method = make_attention(cfg, ctx);
    auto* em = dynamic_cast<EntmaxAttention*>(method.get());
    REQUIRE(em);
    CHECK(allclose(em->alpha(), full({3}, 1.4, DType::f64), 1e-12, 1e-12));
    CHECK(allclose(em->temperature(), full({3}, 1.5, DType::f64), 1e-12, 1e-12));
    Generator g(2);
    Tensor q = randn({2, 3, 7, 4}, DType::f64, &g), k = randn({2, 3, 7, 4}, DType::f64, &g),
           v = randn({2, 3, 7, 4}, DType::f64, &g);
    method->record_internals = true;
    Tensor out = method->forward(q, k, v, {true, {}});
    sum(mul(out, out)).backward();
    for (auto& [name, p] : method->named_parameters()) {
      INFO(name);
      REQUIRE(p.grad().defined());
      CHECK(max(abs(p.grad())).item<double>() > 0);
    }
    CHECK(method->internals.count("attn"));
    CHECK(method->internals.count("support"));
    CHECK(method->internals.count("alpha"));
    CHECK(method->internals.count("tiles") == (impl == "fused" ? 1u : 0u));
    const auto st = method->stats();
    REQUIRE(st.at("support").size() == 3);
    REQUIRE(st.at("alpha").size() == 3);
    for (double s : st.at("support")) CHECK((s >= 1 && s <= 7));
  }
}

TEST_CASE("entmax attention in a causal LM: fused == composite loss and gradients; training lowers the loss") {
  ModelConfig c;
  c.vocab_size = 7, c.d_model = 8, c.n_layers = 1, c.n_heads = 2, c.d_ff = 12, c.max_len = 12, c.seed = 3;
  c.attention = {{"type", "entmax"}, {"alpha", 1.3}, {"learn_alpha", true}, {"learn_temperature", true}};
  CausalLM fused(c, DType::f64);
  c.attention["impl"] = "composite";
  CausalLM composite(c, DType::f64);
  composite.load_state_dict(fused.state_dict());
  const Tensor x = from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5}, {2, 9});
  const Tensor y = from_vector(std::vector<int64_t>{2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6}, {2, 9});
  Tensor lf = fused.loss(x, y), lc = composite.loss(x, y);
  CHECK(lf.item<double>() == doctest::Approx(lc.item<double>()).epsilon(1e-12));
  lf.backward();
  lc.backward();
  auto pf = fused.named_parameters(), pc = composite.named_parameters();
  REQUIRE(pf.size() == pc.size());
  for (size_t i = 0; i < pf.size(); ++i) {
    INFO(pf[i].first);
    CHECK(allclose(pf[i].second.grad(), pc[i].second.grad(), 1e-8, 1e-10));
  }
  // A few plain gradient steps on the fused model lower the loss.
  const double before = lf.item<double>();
  SGD opt(fused.parameters(), {.lr = 0.5});
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    fused.loss(x, y).backward();
    opt.step();
  }
  CHECK(fused.loss(x, y).item<double>() < before - 0.1);
}

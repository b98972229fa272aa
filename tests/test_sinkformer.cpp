// Sinkformer attention: the fused streaming-Sinkhorn op against the composite reference (output and
// gradients, f32 and f64, ragged shapes, padding, many tiles), one normalisation == softmax, the
// marginals as the iterations grow, implicit ≈ unrolled, masked rows and columns, errors, the
// method's config and internals, and the doubly-stochastic diagnostic.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <functional>

#include "attention/flash.h"
#include "attention/sinkformer.h"
#include "attention/softmax.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "core/cpu/loops.h"
#include "core/rng.h"
#include "support.h"
#include "tests/attention_support.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;

namespace {

using testing::check_close;
using testing::random_padding;
using testing::require_finite;
using testing::Result;
using testing::run;
using testing::TileGuard;

struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

Tensor padding(const std::vector<double>& v, int64_t B, int64_t T) { return from_vector(v, {B, T}, DType::b8); }

SinkhornOptions opts(int64_t iterations, SinkhornBackward bw = SinkhornBackward::unrolled) {
  SinkhornOptions o;
  o.iterations = iterations;
  o.backward = bw;
  return o;
}

struct Case {
  int64_t B, H, Tq, Tk, dh, iterations;
  bool padding;
  flash::Tiles tiles;
};

}  // namespace

TEST_CASE("sinkformer: fused == composite (output, dQ, dK, dV), unrolled, f64 and f32, ragged shapes and padding") {
  const std::vector<Case> cases = {
      {2, 2, 17, 17, 8, 2, false, {}},             // one tile, ends on a column step
      {2, 3, 37, 37, 8, 3, true, {8, 16, 8, 16}},  // padded keys and queries, n not a multiple of the tile
      {1, 2, 33, 45, 5, 4, true, {16, 8, 16, 8}},  // Tq < Tk, padded keys only, column marginal Tq / n_valid
      {2, 1, 45, 20, 4, 7, false, {7, 5, 7, 5}},   // Tq > Tk
      {3, 2, 50, 31, 16, 5, true, {16, 16, 16, 16}},
      {1, 2, 40, 40, 24, 8, true, {16, 32, 16, 32}},  // dh not a multiple of 16
      {1, 1, 1, 9, 3, 3, false, {}},                  // one query
  };
  uint64_t seed = 10;
  for (double limit : {-1.0, 0.0})  // the low-rank gradient passes (default), one exponential per step
    for (DType dt : {DType::f64, DType::f32})
      for (const Case& c : cases) {
        CAPTURE(c.Tq);
        CAPTURE(c.Tk);
        CAPTURE(c.iterations);
        CAPTURE(c.padding);
        INFO("dtype ", dtype_name(dt));
        Generator g(seed++);
        const auto [q, k, v, go] = testing::random_problem(g, c.B, c.H, c.Tq, c.Tk, c.dh, dt);
        AttentionMask m;
        if (c.padding) m.key_padding = random_padding(g, c.B, c.Tk, 0.3);
        const double scale = 1.0 / std::sqrt(double(c.dh));
        TileGuard tg(c.tiles);
        sinkformer::set_low_rank_limit(limit);
        Result ref = run(
            [&](auto& a, auto& b, auto& d) { return sinkformer_attention_composite(a, b, d, m, scale, c.iterations); },
            q, k, v, go);
        Result fused =
            run([&](auto& a, auto& b, auto& d) { return sinkformer_attention(a, b, d, m, scale, opts(c.iterations)); },
                q, k, v, go);
        if (dt == DType::f64) check_close(fused, ref, 1e-9, 1e-11);
        else check_close(fused, ref, 1e-3, 1e-4);
        CHECK(sinkformer::last_backward_stats().low_rank == (limit < 0 && c.iterations > 1));
        sinkformer::set_low_rank_limit(-1);
      }
}

TEST_CASE("sinkformer: multi-threaded runs are bitwise equal to single-threaded ones (both backward modes)") {
  Generator g(77);
  const int64_t B = 1, H = 3, dh = 16;
  // T = 300: 10 row tiles, two per part of the column sums; an odd count ends on the fused output pass.
  for (auto [T, iters] : {std::pair<int64_t, int64_t>{150, 6}, {300, 5}})
    for (DType dt : {DType::f64, DType::f32})
      for (auto bw : {SinkhornBackward::unrolled, SinkhornBackward::implicit}) {
        Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
        Tensor go = randn({B, H, T, dh}, dt, &g);
        AttentionMask m{false, random_padding(g, B, T, 0.2)};
        TileGuard tg({32, 48, 32, 48});
        auto f = [&](auto& a, auto& b, auto& d) { return sinkformer_attention(a, b, d, m, 0.3, opts(iters, bw)); };
        Result one;
        {
          ThreadCount t1(1);
          one = run(f, q, k, v, go);
        }
        cpu::ScopedParallelGrain forced(0);
        ThreadCount t3(3);
        Result three = run(f, q, k, v, go);
        CHECK(equal(one.out, three.out));
        CHECK(equal(one.dq, three.dq));
        CHECK(equal(one.dk, three.dk));
        CHECK(equal(one.dv, three.dv));
      }
}

TEST_CASE("sinkformer: one normalisation is softmax attention exactly") {
  Generator g(3);
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor q = randn({2, 2, 7, 4}, dt, &g), k = randn({2, 2, 9, 4}, dt, &g), v = randn({2, 2, 9, 4}, dt, &g);
    Tensor go = randn({2, 2, 7, 4}, dt, &g);
    for (bool causal : {false, true}) {
      AttentionMask m{causal, padding({0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0}, 2, 9)};
      Result sm =
          run([&](auto& a, auto& b, auto& d) { return softmax_attention_composite(a, b, d, m, 0.5); }, q, k, v, go);
      Result comp = run([&](auto& a, auto& b, auto& d) { return sinkformer_attention_composite(a, b, d, m, 0.5, 1); },
                        q, k, v, go);
      Result fl = run([&](auto& a, auto& b, auto& d) { return flash_attention(a, b, d, m, 0.5); }, q, k, v, go);
      for (auto bw : {SinkhornBackward::unrolled, SinkhornBackward::implicit}) {
        Result fused = run(
            [&](auto& a, auto& b, auto& d) { return sinkformer_attention(a, b, d, m, 0.5, opts(1, bw)); }, q, k, v, go);
        CHECK(equal(fused.out, fl.out));
        CHECK(equal(fused.dq, fl.dq));
        CHECK(equal(fused.dk, fl.dk));
      }
      CHECK(equal(comp.out, sm.out));
      CHECK(equal(comp.dq, sm.dq));
      CHECK(equal(comp.dk, sm.dk));
      CHECK(equal(comp.dv, sm.dv));
    }
  }
}

TEST_CASE("sinkformer: rows sum to 1 after a row step, columns → n_rows / n_cols as the iterations grow") {
  Generator g(8);
  for (auto [tq, tk] : {std::pair<int64_t, int64_t>{12, 12}, {10, 15}}) {
    Tensor q = randn({1, 2, tq, 8}, DType::f64, &g), k = randn({1, 2, tk, 8}, DType::f64, &g);
    double prev = INFINITY;
    for (int64_t it : {1, 3, 5, 11, 41, 201}) {
      CAPTURE(it);
      Tensor w;
      sinkformer_attention_composite(q, k, k, {}, 0.7, it, &w);
      CHECK(allclose(w.sum(-1), ones({1, 2, tq}, DType::f64), 1e-12, 1e-12));  // odd: a row step last
      const double dev = max(column_sum_deviation(w)).item<double>();
      CHECK(dev < prev);
      prev = dev;
      // The fused potentials give the same matrix: P = exp(S + f + g).
      Tensor f, gg;
      sinkformer_attention(q, k, k, {}, 0.7, opts(it), &f, &gg);
      Tensor p = exp(matmul(q, k.transpose(-1, -2)) * 0.7 + f.unsqueeze(-1) + gg.unsqueeze(-2));
      CHECK(allclose(p, w, 1e-9, 1e-12));
    }
    CHECK(prev < 1e-9);
    // Even: a column step last, the columns sum to n_rows / n_cols exactly.
    Tensor w;
    sinkformer_attention_composite(q, k, k, {}, 0.7, 4, &w);
    CHECK(allclose(w.sum(-2), full({1, 2, tk}, double(tq) / double(tk), DType::f64), 1e-12, 1e-12));
  }
}

TEST_CASE("sinkformer: implicit ≈ unrolled when the iterations are many") {
  Generator g(21);
  const int64_t B = 2, H = 2, Tq = 13, Tk = 11, dh = 6;
  Tensor q = randn({B, H, Tq, dh}, DType::f64, &g), k = randn({B, H, Tk, dh}, DType::f64, &g),
         v = randn({B, H, Tk, dh}, DType::f64, &g), go = randn({B, H, Tq, dh}, DType::f64, &g);
  AttentionMask m{false, padding({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0}, B, Tk)};
  TileGuard tg({4, 5, 4, 5});
  SinkhornOptions im = opts(200, SinkhornBackward::implicit);
  im.tol = 1e-12;
  Result a =
      run([&](auto& x, auto& y, auto& z) { return sinkformer_attention(x, y, z, m, 0.5, opts(200)); }, q, k, v, go);
  Result b = run([&](auto& x, auto& y, auto& z) { return sinkformer_attention(x, y, z, m, 0.5, im); }, q, k, v, go);
  check_close(a, b, 1e-7, 1e-9);
  CHECK(sinkformer::last_backward_stats().converged);
  CHECK(sinkformer::last_backward_stats().cg_iterations > 0);
  // With few iterations they differ: the implicit gradient is the limit's.
  Result c =
      run([&](auto& x, auto& y, auto& z) { return sinkformer_attention(x, y, z, m, 0.5, opts(3)); }, q, k, v, go);
  Result d = run([&](auto& x, auto& y,
                     auto& z) { return sinkformer_attention(x, y, z, m, 0.5, opts(3, SinkhornBackward::implicit)); },
                 q, k, v, go);
  CHECK_FALSE(allclose(c.dq, d.dq, 1e-4, 1e-6));
}

TEST_CASE("sinkformer: f64 gradchecks of both backward modes (beyond the registry's cases)") {
  Generator g(5);
  Tensor q = randn({1, 2, 6, 3}, DType::f64, &g), k = randn({1, 2, 6, 3}, DType::f64, &g),
         v = randn({1, 2, 6, 3}, DType::f64, &g);
  TileGuard tg({4, 4, 4, 4});
  for (int64_t it : {2, 3, 6})
    CHECK(
        gradcheck(
            [&](const std::vector<Tensor>& in) { return sinkformer_attention(in[0], in[1], in[2], {}, 0.9, opts(it)); },
            {q, k, v})
            .ok);
  SinkhornOptions im = opts(400, SinkhornBackward::implicit);
  im.tol = 1e-12;
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return sinkformer_attention(in[0], in[1], in[2], {}, 0.9, im); },
                  {q, k, v})
            .ok);
}

TEST_CASE("sinkformer: fully masked rows and columns stay finite, with zero output and zero gradient") {
  for (DType dt : {DType::f64, DType::f32})
    for (auto bw : {SinkhornBackward::unrolled, SinkhornBackward::implicit}) {
      Generator g(3);
      const int64_t B = 2, H = 2, T = 10, dh = 4;
      Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
      Tensor go = randn({B, H, T, dh}, dt, &g);
      std::vector<double> pad(size_t(B * T), 0.0);
      for (int64_t j = 0; j < T; ++j) pad[size_t(T + j)] = 1;  // batch 1: everything padded
      pad[3] = pad[7] = 1;
      AttentionMask m{false, padding(pad, B, T)};
      TileGuard tg({4, 4, 4, 4});
      Result fused = run([&](auto& a, auto& b, auto& d) { return sinkformer_attention(a, b, d, m, 0.5, opts(5, bw)); },
                         q, k, v, go);
      Result ref = run([&](auto& a, auto& b, auto& d) { return sinkformer_attention_composite(a, b, d, m, 0.5, 5); }, q,
                       k, v, go);
      if (bw == SinkhornBackward::unrolled) check_close(fused, ref, dt == DType::f64 ? 1e-9 : 1e-3, 1e-5);
      else CHECK(allclose(fused.out, ref.out, 1e-4, 1e-5));
      for (const Tensor& t : {fused.out, fused.dq, fused.dk, fused.dv, ref.dq, ref.dk}) {
        require_finite(t);
        for (double x : t.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
        for (int64_t pos : {3, 7})
          for (double x : t.select(0, 0).select(1, pos).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      }
    }
}

TEST_CASE("sinkformer: a key every query ignores (weights below the dtype's range) keeps fused == composite") {
  // The fused column step sums the row-normalised weights; here key 0's are exp(-1000) for every
  // query, so that sum underflows and the step must fall back to the log domain.
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(11);
    const int64_t B = 1, H = 2, T = 70, dh = 4;
    Tensor q = abs(randn({B, H, T, dh}, DType::f64, &g)) + 1.0, k = randn({B, H, T, dh}, DType::f64, &g);
    Tensor v = randn({B, H, T, dh}, dt, &g), go = randn({B, H, T, dh}, dt, &g);
    std::vector<double> kv = k.to_vector<double>();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t d = 0; d < dh; ++d) kv[size_t(h * T * dh + d)] = -500.0;  // key 0 of every head
    k = from_vector(kv, {B, H, T, dh}, DType::f64).to(dt);
    q = q.to(dt);
    TileGuard tg({16, 16, 16, 16});
    for (int64_t iters : {4, 5}) {
      Result fused = run([&](auto& a, auto& b, auto& d) { return sinkformer_attention(a, b, d, {}, 0.5, opts(iters)); },
                         q, k, v, go);
      Result ref =
          run([&](auto& a, auto& b, auto& d) { return sinkformer_attention_composite(a, b, d, {}, 0.5, iters); }, q, k,
              v, go);
      for (const Tensor& t : {fused.out, fused.dq, fused.dk, fused.dv}) require_finite(t);
      // In f32, scores of -1000 carry absolute errors of ~1e-4 and dQ multiplies them by |k_0| = 500:
      // the gradients are compared in f64 only.
      if (dt == DType::f64) check_close(fused, ref, 1e-9, 1e-9);
      else CHECK(allclose(fused.out, ref.out, 1e-4, 1e-5));
    }
  }
}

TEST_CASE("sinkformer: bad inputs and options give clear errors") {
  Generator g(1);
  Tensor q = randn({1, 2, 5, 4}, DType::f32, &g), k = randn({1, 2, 5, 4}, DType::f32, &g);
  std::string msg = message_of<ValueError>([&] { sinkformer_attention(q, k, k, {true, {}}, 0.5, opts(3)); });
  CHECK(contains(msg, "sinkformer_attention"));
  CHECK(contains(msg, "causal"));
  CHECK(contains(msg, "[1, 2, 5, 4]"));
  msg = message_of<ValueError>([&] { sinkformer_attention_composite(q, k, k, {true, {}}, 0.5, 2); });
  CHECK(contains(msg, "causal"));
  CHECK(contains(message_of<ValueError>([&] { sinkformer_attention(q, k, k, {}, 0.5, opts(0)); }), "iterations"));
  SinkhornOptions bad = opts(3, SinkhornBackward::implicit);
  bad.tol = 0;
  CHECK(contains(message_of<ValueError>([&] { sinkformer_attention(q, k, k, {}, 0.5, bad); }), "tol"));
  CHECK(contains(message_of<ShapeError>([&] {
                   sinkformer_attention(q, randn({1, 2, 5, 3}, DType::f32, &g), k, {}, 0.5);
                 }),
                 "sinkformer_attention"));
  // Causal with one normalisation is causal softmax.
  CHECK(allclose(sinkformer_attention(q, k, k, {true, {}}, 0.5, opts(1)), flash_attention(q, k, k, {true, {}}, 0.5)));
  AttentionContext ctx;
  ctx.head_dim = 4;
  ctx.n_heads = 2;
  CHECK(contains(message_of<ValueError>([&] {
                   make_attention({{"type", "sinkformer"}, {"iteration", 3}}, ctx);
                 }),
                 "max_cg_iter"));  // the known keys are listed
  CHECK(contains(message_of<ValueError>([&] {
                   make_attention({{"type", "sinkformer"}, {"iterations", 0}}, ctx);
                 }),
                 "iterations"));
  CHECK(contains(message_of<ValueError>([&] {
                   make_attention({{"type", "sinkformer"}, {"backward", "exact"}}, ctx);
                 }),
                 "backward"));
  CHECK(contains(message_of<ValueError>([&] { make_attention({{"type", "sinkformer"}, {"tol", 2}}, ctx); }), "tol"));
}

TEST_CASE("sinkformer: the method from its config, both impls, and its internals") {
  AttentionContext ctx;
  ctx.head_dim = 8;
  ctx.n_heads = 2;
  auto fused = make_attention({{"type", "sinkformer"}, {"iterations", 5}}, ctx);
  auto comp = make_attention({{"type", "sinkformer"}, {"iterations", 5}, {"impl", "composite"}}, ctx);
  auto implicit = make_attention(
      {{"type", "sinkformer"}, {"iterations", 5}, {"backward", "implicit"}, {"tol", 1e-8}, {"max_cg_iter", 50}}, ctx);
  CHECK(fused->name() == "sinkformer");
  Generator g(4);
  Tensor q = randn({2, 2, 9, 8}, DType::f64, &g), k = randn({2, 2, 9, 8}, DType::f64, &g),
         v = randn({2, 2, 9, 8}, DType::f64, &g);
  AttentionMask m{false, padding({0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 2, 9)};
  CHECK(allclose(fused->forward(q, k, v, m), comp->forward(q, k, v, m), 1e-10, 1e-12));
  CHECK(allclose(implicit->forward(q, k, v, m), comp->forward(q, k, v, m), 1e-10, 1e-12));
  for (auto method : {fused, comp}) {
    method->record_internals = true;
    method->forward(q, k, v, m);
    for (const char* key : {"attn", "f", "g", "row_err", "col_err"}) REQUIRE(method->internals.count(key));
    CHECK(method->internals["attn"].shape() == Shape{2, 2, 9, 9});
    CHECK(method->internals["f"].shape() == Shape{2, 2, 9});
    CHECK(method->internals["col_err"].shape() == Shape{5, 2, 2});
    const Tensor re = method->internals["row_err"], ce = method->internals["col_err"];
    CHECK(max(re.select(0, 4)).item<double>() < 1e-12);  // ends on a row step
    CHECK(max(ce.select(0, 3)).item<double>() < 1e-12);  // the step before: a column step
    CHECK(max(ce.select(0, 4)).item<double>() < max(ce.select(0, 0)).item<double>());
  }
  CHECK(allclose(fused->internals["attn"], comp->internals["attn"], 1e-10, 1e-12));
  CHECK(allclose(fused->internals["g"], comp->internals["g"], 1e-12, 1e-12));
}

TEST_CASE("column_sum_deviation: 0 for doubly stochastic matrices, padding and Tq != Tk accounted for") {
  // A permutation: doubly stochastic.
  Tensor perm = from_vector({0, 1, 0, 0, 0, 1, 1, 0, 0}, {3, 3}, DType::f64);
  CHECK(column_sum_deviation(perm).item<double>() == 0.0);
  // All weight on key 0: columns (3, 0, 0), target 1: mean |dev| = (2 + 1 + 1) / 3.
  Tensor first = from_vector({1, 0, 0, 1, 0, 0, 1, 0, 0}, {3, 3}, DType::f64);
  CHECK(column_sum_deviation(first).item<double>() == doctest::Approx(4.0 / 3.0));
  // Tq 2 x Tk 4, uniform rows: columns sum to 2 / 4 = n_rows / n_cols.
  CHECK(column_sum_deviation(full({1, 1, 2, 4}, 0.25, DType::f64)).item<double>() == doctest::Approx(0.0));
  // Padding: the converged Sinkformer matrix of the valid block, with padded rows and columns, is 0.
  Generator g(2);
  Tensor q = randn({2, 1, 6, 4}, DType::f64, &g), k = randn({2, 1, 6, 4}, DType::f64, &g);
  Tensor pad = padding({0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, 2, 6);
  Tensor w;
  sinkformer_attention_composite(q, k, k, {false, pad}, 1.0, 301, &w);
  Tensor dev = column_sum_deviation(w, pad);
  CHECK(dev.shape() == Shape{2, 1});
  CHECK(max(dev).item<double>() < 1e-10);
  Tensor sm;
  softmax_attention_composite(q, k, k, {false, pad}, 1.0, &sm);
  CHECK(min(column_sum_deviation(sm, pad)).item<double>() > 1e-3);
  CHECK(contains(message_of<ShapeError>([&] {
                   column_sum_deviation(w, padding({0, 0}, 1, 2));
                 }),
                 "column_sum_deviation"));
}

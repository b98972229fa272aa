// Fused (flash) softmax attention and block-local attention against the composite references:
// forward, dQ, dK, dV in f32 and f64, over masks, uneven tiles, Tq != Tk, strided inputs and the
// multi-threaded backward; fully masked rows; float64 gradchecks; the AttentionMethod wiring.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "attention/flash.h"
#include "attention/local.h"
#include "attention/softmax.h"
#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/registry.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "tests/attention_support.h"

using namespace attnlab;

namespace {

using testing::check_close;
using testing::Result;
using testing::run;
using testing::random_padding;
using testing::TileGuard;

// A [B, H, T, dh] view with the strides MultiHeadAttention hands over: a slice of [B, T, 3, H, dh].
Tensor qkv_like(Generator& g, int64_t B, int64_t H, int64_t T, int64_t dh, DType t, int which) {
  return randn({B, T, 3, H, dh}, t, &g).select(2, which).permute({0, 2, 1, 3});
}

const double kRtol32 = 2e-4, kAtol32 = 2e-5, kRtol64 = 1e-9, kAtol64 = 1e-11;

void check_close(const Result& a, const Result& b, DType dt) {
  if (dt == DType::f64) check_close(a, b, kRtol64, kAtol64);
  else check_close(a, b, kRtol32, kAtol32);
}

// One random problem: fused (flash_attention, or local_attention when block > 0) against the
// composite reference with the same masks, in f64 and f32.
struct Case {
  int64_t B, H, Tq, Tk, dh;
  bool causal, padding;
  flash::Tiles tiles;
  int64_t block = 0;
};

void check_against_composite(const std::vector<Case>& cases, uint64_t seed) {
  for (DType dt : {DType::f64, DType::f32}) {
    for (const Case& c : cases) {
      CAPTURE(c.B);
      CAPTURE(c.Tq);
      CAPTURE(c.Tk);
      CAPTURE(c.dh);
      CAPTURE(c.block);
      CAPTURE(c.causal);
      CAPTURE(c.padding);
      INFO("dtype ", dtype_name(dt));
      Generator g(seed++);
      const auto [q, k, v, go] = testing::random_problem(g, c.B, c.H, c.Tq, c.Tk, c.dh, dt);
      AttentionMask m;
      m.causal = c.causal;
      if (c.padding) m.key_padding = random_padding(g, c.B, c.Tk, 0.3);
      const double scale = 1.0 / std::sqrt(double(c.dh));
      TileGuard tg(c.tiles);
      Result ref = run(
          [&](auto& a, auto& b, auto& d) {
            return c.block ? local_attention_composite(a, b, d, m, c.block, scale)
                           : softmax_attention_composite(a, b, d, m, scale);
          },
          q, k, v, go);
      Result fused = run(
          [&](auto& a, auto& b, auto& d) {
            return c.block ? local_attention(a, b, d, m, c.block, scale) : flash_attention(a, b, d, m, scale);
          },
          q, k, v, go);
      check_close(fused, ref, dt);
    }
  }
}

}  // namespace

TEST_CASE("flash attention matches the composite reference (forward, dQ, dK, dV), f32 and f64") {
  check_against_composite(
      {
          {2, 2, 17, 17, 8, false, false, {}},               // one tile
          {2, 3, 37, 37, 8, true, false, {8, 16, 8, 16}},     // n not a multiple of the tile
          {1, 2, 33, 45, 5, true, true, {16, 8, 8, 16}},      // Tq < Tk, causal + padding
          {2, 1, 45, 20, 4, true, true, {7, 5, 6, 3}},        // Tq > Tk: the first rows see no key
          {3, 2, 50, 31, 16, false, true, {16, 16, 16, 16}},  //
          {1, 1, 1, 9, 3, true, false, {}},                   // one query (decoding shape)
          {1, 2, 40, 52, 24, true, true, {16, 32, 16, 32}},   // dh not a multiple of 16 (vector tails)
      },
      10);
}

TEST_CASE("flash attention: strided inputs (the qkv projection's views) and the multi-threaded backward") {
  // Large enough to run the kernels on several threads, with a (batch·head) group split between
  // threads in the backward (3 groups on 2 threads).
  for (DType dt : {DType::f64, DType::f32}) {
    INFO("dtype ", dtype_name(dt));
    Generator g(77);
    const int64_t B = 1, H = 3, T = 301, dh = 16;
    Tensor q = qkv_like(g, B, H, T, dh, dt, 0), k = qkv_like(g, B, H, T, dh, dt, 1),
           v = qkv_like(g, B, H, T, dh, dt, 2);
    Tensor go = randn({B, H, T, dh}, dt, &g);
    for (bool causal : {false, true}) {
      AttentionMask m;
      m.causal = causal;
      TileGuard tg({32, 48, 32, 40});
      Result ref = run([&](auto& a, auto& b, auto& d) { return softmax_attention_composite(a, b, d, m, 0.25); }, q, k,
                       v, go);
      Result fused = run([&](auto& a, auto& b, auto& d) { return flash_attention(a, b, d, m, 0.25); }, q, k, v, go);
      check_close(fused, ref, dt);
      // Deterministic: the static split sums dQ in a fixed order.
      Result again = run([&](auto& a, auto& b, auto& d) { return flash_attention(a, b, d, m, 0.25); }, q, k, v, go);
      CHECK(equal(again.dq, fused.dq));
      CHECK(equal(again.dk, fused.dk));
      CHECK(equal(again.out, fused.out));
    }
  }
}

TEST_CASE("flash attention: the log-sum-exp it saves is the masked scores' logsumexp") {
  Generator g(5);
  Tensor q = randn({2, 2, 9, 4}, DType::f64, &g), k = randn({2, 2, 11, 4}, DType::f64, &g),
         v = randn({2, 2, 11, 4}, DType::f64, &g);
  AttentionMask m;
  m.causal = true;
  m.key_padding = from_vector(std::vector<double>(22, 0.0), {2, 11}, DType::b8);
  TileGuard tg({4, 3, 4, 3});
  Tensor lse;
  flash_attention(q, k, v, m, 0.5, &lse);
  Tensor scores = masked_fill(matmul(q, k.transpose(-1, -2)) * 0.5, causal_block_mask(9, 11), -INFINITY);
  CHECK(allclose(lse, logsumexp(scores, -1), 1e-12, 1e-12));
}

TEST_CASE("fully masked query rows give zero output, -inf LSE and zero gradients, never NaN") {
  for (DType dt : {DType::f64, DType::f32}) {
    Generator g(3);
    const int64_t B = 2, H = 2, T = 10, dh = 4;
    Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
    Tensor go = randn({B, H, T, dh}, dt, &g);
    AttentionMask m;  // batch 1: every key padded
    std::vector<double> pad(size_t(B * T), 0.0);
    for (int64_t j = 0; j < T; ++j) pad[size_t(T + j)] = 1;
    pad[3] = 1;
    m.key_padding = from_vector(pad, {B, T}, DType::b8);
    for (bool causal : {false, true}) {
      m.causal = causal;
      TileGuard tg({4, 4, 4, 4});
      Tensor lse;
      Result fused = run([&](auto& a, auto& b, auto& d) { return flash_attention(a, b, d, m, 0.5, &lse); }, q, k, v, go);
      Result ref = run([&](auto& a, auto& b, auto& d) { return softmax_attention_composite(a, b, d, m, 0.5); }, q, k,
                       v, go);
      check_close(fused, ref, dt);
      for (double x : fused.out.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      for (double x : fused.dq.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      for (double x : fused.dk.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      for (double x : fused.dv.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      for (double x : lse.select(0, 1).to(DType::f64).to_vector<double>()) CHECK(x == -INFINITY);
    }
    // Causal with more queries than keys: the first Tq - Tk rows see nothing.
    Tensor q2 = randn({1, 1, 7, dh}, dt, &g), k2 = randn({1, 1, 3, dh}, dt, &g), v2 = randn({1, 1, 3, dh}, dt, &g);
    AttentionMask c;
    c.causal = true;
    Result r = run([&](auto& a, auto& b, auto& d) { return flash_attention(a, b, d, c, 0.5); }, q2, k2, v2,
                   ones({1, 1, 7, dh}, dt));
    for (int64_t i = 0; i < 4; ++i) {
      for (double x : r.out.select(2, i).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
      for (double x : r.dq.select(2, i).to(DType::f64).to_vector<double>()) CHECK(x == 0.0);
    }
  }
}

TEST_CASE("block-local attention matches the composite with the equivalent block mask") {
  check_against_composite(
      {
          {2, 2, 24, 24, 8, false, false, {}, 8},
          {1, 3, 29, 29, 4, true, false, {}, 8},                  // short last block
          {2, 2, 40, 40, 6, true, true, {6, 5, 7, 3}, 16},        // blocks span several uneven tiles
          {1, 2, 13, 29, 4, false, true, {4, 4, 4, 4}, 5},        // Tq < Tk, aligned at the end
          {2, 1, 64, 64, 8, false, false, {16, 16, 16, 16}, 64},  // one block: plain attention
      },
      40);
  // The block mask itself: query i sees key j iff both lie in the same block.
  Tensor bm = local_block_mask(6, 6, 4);
  CHECK(bm.at({0, 3}) == 0);
  CHECK(bm.at({3, 4}) == 1);
  CHECK(bm.at({5, 4}) == 0);
  CHECK(bm.at({4, 3}) == 1);
}

TEST_CASE("block-local attention on a long sequence, multi-threaded, f32") {
  Generator g(8);
  const int64_t B = 1, H = 2, T = 512, dh = 32;
  Tensor q = qkv_like(g, B, H, T, dh, DType::f32, 0), k = qkv_like(g, B, H, T, dh, DType::f32, 1),
         v = qkv_like(g, B, H, T, dh, DType::f32, 2), go = randn({B, H, T, dh}, DType::f32, &g);
  AttentionMask m;
  m.causal = true;
  Result ref = run([&](auto& a, auto& b, auto& d) { return local_attention_composite(a, b, d, m, 64, 0.2); }, q, k, v,
                   go);
  Result fused = run([&](auto& a, auto& b, auto& d) { return local_attention(a, b, d, m, 64, 0.2); }, q, k, v, go);
  check_close(fused, ref, kRtol32, kAtol32);
}

TEST_CASE("float64 gradcheck: the registry's cases and direct checks") {
  for (const char* name : {"flash_attention", "local_attention"}) {
    const OpDef* op = find_op(name);
    REQUIRE_MESSAGE(op != nullptr, name, " is not registered");
    CHECK(op->cases.size() >= 3);
    for (size_t c = 0; c < op->cases.size(); ++c) {
      INFO(name, " / ", op->cases[c].label);
      Generator gen(200 + c);
      GradcheckResult r = gradcheck(op->cases[c].fn, op->cases[c].make_inputs(gen));
      CHECK_MESSAGE(r.ok, r.report());
    }
  }
  Generator g(9);
  AttentionMask m;
  m.causal = true;
  m.key_padding = from_vector(std::vector<double>{0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1}, {2, 6}, DType::b8);
  TileGuard tg({4, 4, 2, 4});
  auto flash_fn = [&](const std::vector<Tensor>& in) { return flash_attention(in[0], in[1], in[2], m, 0.7); };
  auto local_fn = [&](const std::vector<Tensor>& in) { return local_attention(in[0], in[1], in[2], m, 4, 0.7); };
  std::vector<Tensor> in = {randn({2, 2, 6, 3}, DType::f64, &g), randn({2, 2, 6, 3}, DType::f64, &g),
                            randn({2, 2, 6, 3}, DType::f64, &g)};
  GradcheckResult rf = gradcheck(flash_fn, in);
  CHECK_MESSAGE(rf.ok, rf.report());
  GradcheckResult rl = gradcheck(local_fn, in);
  CHECK_MESSAGE(rl.ok, rl.report());
}

TEST_CASE("flash and local attention validate their inputs with messages naming the op and shapes") {
  Tensor q = zeros({1, 2, 4, 3}), k = zeros({1, 2, 5, 3});
  auto message = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  CHECK_THROWS_AS(flash_attention(q, zeros({1, 2, 5, 4}), k, {}, 1.0), ShapeError);
  std::string msg = message([&] { flash_attention(q, zeros({1, 2, 5, 4}), k, {}, 1.0); });
  CHECK(msg.find("flash_attention") != std::string::npos);
  CHECK(msg.find("[1, 2, 4, 3]") != std::string::npos);
  CHECK_THROWS_AS(flash_attention(zeros({2, 4, 3}), k, k, {}, 1.0), ShapeError);
  CHECK_THROWS_AS(flash_attention(q, k, k.to(DType::f64), {}, 1.0), DTypeError);
  msg = message([&] { flash_attention(q.to(DType::i64), k.to(DType::i64), k.to(DType::i64), {}, 1.0); });
  CHECK(msg.find("flash_attention") != std::string::npos);
  CHECK(msg.find("i64") != std::string::npos);
  AttentionMask bad;
  bad.key_padding = zeros({1, 4}, DType::f32);
  CHECK_THROWS_AS(flash_attention(q, k, k, bad, 1.0), ShapeError);
  CHECK_THROWS_AS(local_attention(q, k, k, {}, 0, 1.0), ValueError);
  CHECK_THROWS_AS(local_attention(q, zeros({1, 3, 5, 3}), k, {}, 2, 1.0), ShapeError);
  CHECK(message([&] { local_attention(q, zeros({1, 3, 5, 3}), k, {}, 2, 1.0); }).find("local_attention") !=
        std::string::npos);
  CHECK_THROWS_AS(flash_attention(q, k, k, {}, INFINITY), ValueError);
}

TEST_CASE("empty shapes: no queries, no keys") {
  Tensor q = randn({1, 1, 3, 2}, DType::f64).set_requires_grad(true);
  Tensor k0 = zeros({1, 1, 0, 2}, DType::f64).set_requires_grad(true);
  Tensor out = flash_attention(q, k0, k0, {}, 1.0);
  CHECK(out.shape() == Shape{1, 1, 3, 2});
  for (double x : out.to_vector<double>()) CHECK(x == 0.0);
  out.sum().backward();
  for (double x : q.grad().to_vector<double>()) CHECK(x == 0.0);
  Tensor none = flash_attention(zeros({1, 1, 0, 2}), zeros({1, 1, 4, 2}), zeros({1, 1, 4, 2}), {}, 1.0);
  CHECK(none.shape() == Shape{1, 1, 0, 2});
}

TEST_CASE("attention methods: softmax impl fused (default) | composite, and the local method") {
  AttentionContext ctx{8, 2, std::make_shared<Generator>(0)};
  auto sm = std::dynamic_pointer_cast<SoftmaxAttention>(make_attention({{"type", "softmax"}}, ctx));
  REQUIRE(sm);
  CHECK(sm->impl() == AttentionImpl::fused);
  auto comp =
      std::dynamic_pointer_cast<SoftmaxAttention>(make_attention({{"type", "softmax"}, {"impl", "composite"}}, ctx));
  REQUIRE(comp);
  CHECK(comp->impl() == AttentionImpl::composite);
  CHECK_THROWS_AS(make_attention({{"type", "softmax"}, {"impl", "fast"}}, ctx), ValueError);
  auto types = attention_types();
  CHECK(std::find(types.begin(), types.end(), "local") != types.end());
  auto loc = std::dynamic_pointer_cast<LocalAttention>(make_attention({{"type", "local"}, {"block", 4}}, ctx));
  REQUIRE(loc);
  CHECK(loc->block() == 4);
  CHECK(std::dynamic_pointer_cast<LocalAttention>(make_attention({{"type", "local"}}, ctx))->block() == 64);
  CHECK_THROWS_AS(make_attention({{"type", "local"}, {"block", 0}}, ctx), ValueError);
  CHECK_THROWS_AS(make_attention({{"type", "local"}, {"block", "big"}}, ctx), ValueError);
  CHECK_THROWS_AS(make_attention({{"type", "local"}, {"impl", "nope"}}, ctx), ValueError);
  CHECK_NOTHROW(ModelConfig::from_json({{"attention", {{"type", "local"}, {"block", 16}}}}));

  Generator g(4);
  Tensor q = randn({2, 2, 9, 8}, DType::f64, &g), k = randn({2, 2, 9, 8}, DType::f64, &g),
         v = randn({2, 2, 9, 8}, DType::f64, &g);
  AttentionMask m;
  m.causal = true;
  CHECK(allclose(sm->forward(q, k, v, m), comp->forward(q, k, v, m), 1e-12, 1e-12));
  auto loc_comp = make_attention({{"type", "local"}, {"block", 4}, {"impl", "composite"}}, ctx);
  CHECK(allclose(loc->forward(q, k, v, m), loc_comp->forward(q, k, v, m), 1e-12, 1e-12));
  // record_internals: the fused path still hands the weights to the tools.
  for (auto method : std::vector<std::shared_ptr<AttentionMethod>>{sm, comp, loc, loc_comp}) {
    method->record_internals = true;
    method->forward(q, k, v, m);
    REQUIRE(method->internals.count("attn"));
    CHECK(method->internals["attn"].shape() == Shape{2, 2, 9, 9});
  }
  CHECK(allclose(sm->internals["attn"], comp->internals["attn"], 1e-12, 1e-12));
  CHECK(allclose(loc->internals["attn"], loc_comp->internals["attn"], 1e-12, 1e-12));
  CHECK(loc->internals["attn"].at({0, 0, 5, 3}) == 0.0);  // another block
}

TEST_CASE("MultiHeadAttention with the fused and the composite softmax agree, and local passes a gradcheck") {
  auto gen = std::make_shared<Generator>(5);
  Generator init_a(6), init_b(6), g(7);
  MultiHeadAttention fused(8, 2, {{"type", "softmax"}}, 0.0, gen, init_a, DType::f64);
  MultiHeadAttention comp(8, 2, {{"type", "softmax"}, {"impl", "composite"}}, 0.0, gen, init_b, DType::f64);
  Tensor x = randn({2, 6, 8}, DType::f64, &g);
  AttentionMask m;
  m.causal = true;
  CHECK(allclose(fused.forward(x, m), comp.forward(x, m), 1e-12, 1e-12));

  MultiHeadAttention local(8, 2, {{"type", "local"}, {"block", 3}}, 0.0, gen, init_a, DType::f64);
  Tensor xin = randn({2, 7, 8}, DType::f64, &g).set_requires_grad(true);
  std::vector<Tensor> leaves = {xin};
  for (auto& p : local.parameters()) leaves.push_back(p);
  GradcheckOptions opts;
  opts.atol = 1e-6;
  opts.rtol = 1e-4;
  GradcheckResult r = gradcheck_leaves([&] { return local.forward(xin, m); }, leaves, opts);
  CHECK_MESSAGE(r.ok, r.report());
}

namespace {
// Rows (b, h, i) of out that hold any NaN or Inf.
std::vector<bool> nonfinite_rows(const Tensor& out) {
  const int64_t dh = out.size(-1);
  std::vector<double> v = out.to(DType::f64).to_vector<double>();
  std::vector<bool> rows(v.size() / size_t(dh), false);
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) rows[i / size_t(dh)] = true;
  return rows;
}
}  // namespace

TEST_CASE("a NaN or an infinity in q or k gives NaN out of the fused kernels, as on the composite path") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  for (DType dt : {DType::f64, DType::f32})
    for (int64_t block : {0, 4})
      for (bool causal : {false, true})
        for (double bad : {nan, inf, -inf})
          for (int which : {0, 1}) {  // plant it in q or in k
            INFO("dtype ", std::string(dtype_name(dt)), " block ", block, " causal ", causal, " value ", bad, " in ",
                 which ? "k" : "q");
            Generator g(21);
            Tensor q = randn({1, 2, 9, 4}, dt, &g), k = randn({1, 2, 9, 4}, dt, &g), v = randn({1, 2, 9, 4}, dt, &g);
            // Row 5 of head 1 (or key 5, which rows 5.. see when causal); the other head stays clean.
            Tensor& t = which ? k : q;
            std::vector<double> vals = t.to(DType::f64).to_vector<double>();
            vals[size_t((9 + 5) * 4 + 2)] = bad;
            t = from_vector(vals, t.shape()).to(dt);
            AttentionMask m;
            m.causal = causal;
            TileGuard tg({2, 3, 2, 3});
            Tensor fused = block ? local_attention(q, k, v, m, block, 0.5) : flash_attention(q, k, v, m, 0.5);
            Tensor ref = block ? local_attention_composite(q, k, v, m, block, 0.5)
                               : softmax_attention_composite(q, k, v, m, 0.5);
            const std::vector<bool> fr = nonfinite_rows(fused), rr = nonfinite_rows(ref);
            CHECK(fr == rr);
            // A NaN always reaches the output; an infinity may only make scores -inf (a row that then
            // looks fully masked gives zeros on both paths).
            if (std::isnan(bad)) CHECK(std::count(fr.begin(), fr.end(), true) > 0);
            // The clean head and every unaffected row agree with the reference.
            std::vector<double> a = fused.to(DType::f64).to_vector<double>(), b = ref.to(DType::f64).to_vector<double>();
            for (size_t i = 0; i < a.size(); ++i)
              if (!fr[i / 4]) CHECK(std::fabs(a[i] - b[i]) < 1e-4);
          }
}

TEST_CASE("the backward runs with the tiles its forward ran with, whatever the setting when it runs") {
  Generator g(8);
  Tensor q = randn({1, 1, 7, 3}, DType::f64, &g).set_requires_grad(true), k = randn({1, 1, 7, 3}, DType::f64, &g),
         v = randn({1, 1, 7, 3}, DType::f64, &g);
  Tensor out;
  {
    TileGuard tg({2, 3, 2, 3});
    out = flash_attention(q, k, v, {}, 0.5);
  }
  sum(out).backward();  // the default tiles are in force now
  const flash::Tiles used = flash::last_backward_tiles();
  CHECK(used.bwd_q == 2);
  CHECK(used.bwd_k == 3);
}

TEST_CASE("the f32 tile kernel is the one the build's target calls for") {
  // CI runs the Release suite native (the AVX-512 kernel on AVX-512 machines) and the sanitizer suite
  // at x86-64-v3, so both f32 paths are tested; this pins each suite to its path.
  const std::string arch = ATTNLAB_ARCH, kernel = flash::f32_tile_kernel();
  MESSAGE("-march=", arch.empty() ? "(compiler default)" : arch, ": f32 tile products by ", kernel);
  if (arch == "native") CHECK(kernel == (__builtin_cpu_supports("avx512f") ? "avx512" : "blas"));
  if (arch == "x86-64" || arch == "x86-64-v2" || arch == "x86-64-v3") CHECK(kernel == "blas");  // no AVX-512
}

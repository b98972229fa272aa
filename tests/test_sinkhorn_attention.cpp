// Sparse Sinkhorn attention: the Sinkhorn balancing op (fused == composite, marginals, causal
// prefix property, masks), the layer (fused == composite in f64, output and every gradient, for the
// plain, causal + padding and SortCut forms, short last block), the layer against a naive per-query
// loop over [sorted block ; own block], causality (perturbing the future leaves the past
// bit-identical), hard permutations, the method from a config, and errors.
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <sstream>

#include "attention/attention.h"
#include "attention/sinkhorn_attention.h"
#include "attention/sinkhorn_balance.h"
#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "tests/support.h"
#include "tools/draw.h"
#include "tools/run_dir.h"
#include "tools/sort_trainer.h"

using namespace attnlab;
using testing::contains;
using testing::message_of;

namespace {

using Options = SparseSinkhornOptions;

std::vector<double> vec(const Tensor& t) { return t.detach().to(DType::f64).contiguous().to_vector<double>(); }

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = vec(a), y = vec(b);
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

SortNet random_net(Generator& g, int64_t H, int64_t d_in, int64_t max_blocks, DType dt) {
  return {randn({1, H, d_in, max_blocks}, dt, &g), randn({1, H, 1, max_blocks}, dt, &g) * 0.1};
}

// Output and the gradients of q, k, v, the SortNet weight and bias, for upstream gradient go.
std::vector<Tensor> layer_grads(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                const SortNet& net, const Options& o, const Tensor& go, uint64_t noise_seed) {
  std::vector<Tensor> leaves;
  for (const Tensor& t : {q, k, v, net.weight, net.bias}) leaves.push_back(t.detach().clone().set_requires_grad(true));
  Generator noise(noise_seed);
  Tensor out =
      sparse_sinkhorn_attention(leaves[0], leaves[1], leaves[2], mask, {leaves[3], leaves[4]}, o, &noise, true);
  out.backward(go);
  std::vector<Tensor> r{out.detach()};
  for (const Tensor& l : leaves) r.push_back(l.grad());
  return r;
}

void check_fused_vs_composite(Options o, const AttentionMask& mask, int64_t B, int64_t H, int64_t T, int64_t dh,
                              uint64_t seed) {
  Generator g(seed);
  const DType dt = DType::f64;
  const Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
  const Tensor go = randn({B, H, T, dh}, dt, &g);
  const SortNet net = random_net(g, H, dh * (o.sort_on_queries ? 2 : 1), o.max_blocks, dt);
  o.impl = AttentionImpl::fused;
  const std::vector<Tensor> fused = layer_grads(q, k, v, mask, net, o, go, seed + 1);
  o.impl = AttentionImpl::composite;
  const std::vector<Tensor> comp = layer_grads(q, k, v, mask, net, o, go, seed + 1);
  const char* names[] = {"out", "dq", "dk", "dv", "dW", "db"};
  for (size_t i = 0; i < fused.size(); ++i) {
    INFO(names[i]);
    REQUIRE(fused[i].defined());
    CHECK(max_abs_diff(fused[i], comp[i]) < 1e-10);
    for (double x : vec(fused[i])) REQUIRE(std::isfinite(x));
  }
}

}  // namespace

TEST_CASE("sinkhorn_balance: fused == composite, forward and gradient (plain, causal, masked)") {
  Generator g(3);
  const Tensor pad_mask =
      from_vector(std::vector<double>{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1}, {1, 1, 4, 4}, DType::b8);
  for (bool causal : {false, true})
    for (int64_t T : {1, 3, 7})
      for (bool masked : {false, true}) {
        INFO("causal ", causal, " T ", T, " masked ", masked);
        const Tensor z = randn({2, 2, 4, 4}, DType::f64, &g) * 2.0, gs = randn({2, 2, 4, 4}, DType::f64, &g);
        const Tensor blk = masked ? pad_mask : Tensor();
        Tensor za = z.clone().set_requires_grad(true), zb = z.clone().set_requires_grad(true);
        Tensor sa = sinkhorn_balance(za, blk, {T, causal}), sb = sinkhorn_balance_composite(zb, blk, {T, causal});
        (sa * gs).sum().backward();
        (sb * gs).sum().backward();
        CHECK(max_abs_diff(sa, sb) < 1e-12);
        CHECK(max_abs_diff(za.grad(), zb.grad()) < 1e-12);
        for (double x : vec(za.grad())) REQUIRE(std::isfinite(x));
      }
}

TEST_CASE("sinkhorn_balance: marginals (columns exact after the last step, rows -> 1), Sinkhorn-Knopp limit") {
  Generator g(4);
  const int64_t n = 6;
  const Tensor z = randn({1, 1, n, n}, DType::f64, &g);
  auto sums = [&](const Tensor& s, int64_t dim) { return vec(s.sum(dim)); };
  double row_err_prev = 1e9;
  for (int64_t T : {1, 5, 50}) {
    const Tensor s = sinkhorn_balance(z, {}, {T, false});
    for (double c : sums(s, 2)) CHECK(c == doctest::Approx(1).epsilon(1e-12));
    double row_err = 0;
    for (double r : sums(s, 3)) row_err = std::max(row_err, std::abs(r - 1));
    CHECK(row_err < row_err_prev);
    row_err_prev = row_err;
  }
  CHECK(row_err_prev < 1e-9);
  // Kernel-space Sinkhorn-Knopp on K = exp(z): S = diag(u) K diag(w), same doubly stochastic limit.
  std::vector<double> K = vec(exp(z)), u(n, 1), w(n, 1);
  for (int it = 0; it < 2000; ++it) {
    for (int64_t i = 0; i < n; ++i) {
      double r = 0;
      for (int64_t j = 0; j < n; ++j) r += K[size_t(i * n + j)] * w[size_t(j)];
      u[size_t(i)] = 1 / r;
    }
    for (int64_t j = 0; j < n; ++j) {
      double c = 0;
      for (int64_t i = 0; i < n; ++i) c += K[size_t(i * n + j)] * u[size_t(i)];
      w[size_t(j)] = 1 / c;
    }
  }
  const std::vector<double> s = vec(sinkhorn_balance(z, {}, {200, false}));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      CHECK(s[size_t(i * n + j)] == doctest::Approx(u[size_t(i)] * K[size_t(i * n + j)] * w[size_t(j)]).epsilon(1e-9));
  // Blocked entries are exactly 0 and a fully blocked row gives zeros, not NaN (causal: row 0).
  const std::vector<double> c = vec(sinkhorn_balance(z, {}, {3, true}));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) CHECK(c[size_t(i * n + j)] == 0);
}

TEST_CASE("sinkhorn_balance: causal rows depend on the logits of rows <= i only") {
  Generator g(5);
  const int64_t n = 7;
  for (DType dt : {DType::f32, DType::f64}) {
    const Tensor z = randn({1, 2, n, n}, dt, &g);
    const std::vector<double> base = vec(sinkhorn_balance(z, {}, {7, true}));
    for (int64_t p = 1; p < n; ++p) {
      std::vector<double> zz = vec(z);
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = p; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) zz[size_t((h * n + i) * n + j)] += 3.0 * std::sin(double(i + j));
      const std::vector<double> moved = vec(sinkhorn_balance(from_vector(zz, z.shape(), dt), {}, {7, true}));
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < n; ++j)
            REQUIRE(moved[size_t((h * n + i) * n + j)] == base[size_t((h * n + i) * n + j)]);
    }
  }
}

TEST_CASE("sparse sinkhorn layer: fused == composite in f64 (output and all gradients)") {
  Options o;
  o.max_blocks = 8;
  o.iterations = 3;
  o.scale = 0.5;
  SUBCASE("plain, T 10 block 4 (short last block)") {
    o.block = 4;
    check_fused_vs_composite(o, {}, 2, 2, 10, 3, 20);
  }
  SUBCASE("causal + key padding, mean pooling on queries and keys, T 11 block 3") {
    o.block = 3;
    o.pooling = Options::Pooling::mean;
    o.sort_on_queries = true;
    Generator g(21);
    const Tensor pad = lt(rand({2, 11}, DType::f64, &g), scalar_tensor(0.3, DType::f64));
    check_fused_vs_composite(o, {true, pad}, 2, 2, 11, 3, 22);
  }
  SUBCASE("SortCut 2, linear SortNet, T 9 block 2") {
    o.block = 2;
    o.sortcut = 2;
    o.relu = false;
    check_fused_vs_composite(o, {}, 1, 3, 9, 2, 23);
  }
  SUBCASE("sorted block only (local off), T 8 block 4") {
    o.block = 4;
    o.local = false;
    check_fused_vs_composite(o, {}, 1, 2, 8, 4, 24);
  }
}

TEST_CASE("sparse sinkhorn layer == a naive loop over [sorted block ; own block]") {
  // Independent of the layout and the engine: for each query, scores against the S-mixed keys of its
  // block's sorted block and the keys of its own block (causally), softmax, and the same mix of values.
  Generator g(30);
  const int64_t B = 1, H = 2, T = 10, dh = 3, b = 4, nb = 3;
  // hard: the eval-mode hard permutation, which puts the short last block (2 positions) whole into
  // some destination block, whose last 2 sorted slots then hold no key and are masked.
  for (auto [causal, hard] : {std::pair{false, false}, {true, false}, {false, true}, {true, true}}) {
    INFO("causal ", causal, " hard ", hard);
    Options o;
    o.block = b;
    o.max_blocks = nb;
    o.iterations = 4;
    o.scale = 0.6;
    o.hard = hard;
    const Tensor q = randn({B, H, T, dh}, DType::f64, &g), k = randn({B, H, T, dh}, DType::f64, &g),
                 v = randn({B, H, T, dh}, DType::f64, &g);
    const SortNet net = random_net(g, H, dh, nb, DType::f64);
    SparseSinkhornTrace tr;
    const std::vector<double> out = vec(sparse_sinkhorn_attention(q, k, v, {causal, {}}, net, o, nullptr, false, &tr));
    const std::vector<double> S = vec(tr.sort), Q = vec(q), K = vec(k), V = vec(v);
    int64_t masked_slots = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const int64_t blk = i / b;
        std::vector<double> sc, vals;
        for (int64_t p = 0; p < b; ++p) {  // sorted slot p of block blk: Σ_j S_blk,j K_(j)[p] (0 past T)
          std::vector<double> ks(size_t(dh), 0), vs(size_t(dh), 0);
          double weight = 0;
          for (int64_t j = 0; j < nb; ++j) {
            const double s = S[size_t((h * nb + blk) * nb + j)];
            if (j * b + p < T) {
              weight += s;
              for (int64_t d = 0; d < dh; ++d) {
                ks[size_t(d)] += s * K[size_t((h * T + j * b + p) * dh + d)];
                vs[size_t(d)] += s * V[size_t((h * T + j * b + p) * dh + d)];
              }
            }
          }
          if (weight == 0) {  // no real key behind the slot: masked
            ++masked_slots;
            continue;
          }
          double dot = 0;
          for (int64_t d = 0; d < dh; ++d) dot += Q[size_t((h * T + i) * dh + d)] * ks[size_t(d)];
          sc.push_back(o.scale * dot);
          vals.insert(vals.end(), vs.begin(), vs.end());
        }
        for (int64_t j = blk * b; j < std::min(T, (blk + 1) * b); ++j) {
          if (causal && j > i) continue;
          double dot = 0;
          for (int64_t d = 0; d < dh; ++d) dot += Q[size_t((h * T + i) * dh + d)] * K[size_t((h * T + j) * dh + d)];
          sc.push_back(o.scale * dot);
          for (int64_t d = 0; d < dh; ++d) vals.push_back(V[size_t((h * T + j) * dh + d)]);
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        double z = 0;
        for (double& x : sc) z += (x = std::exp(x - m));
        for (int64_t d = 0; d < dh; ++d) {
          double acc = 0;
          for (size_t e = 0; e < sc.size(); ++e) acc += sc[e] / z * vals[e * size_t(dh) + size_t(d)];
          CHECK(out[size_t((h * T + i) * dh + d)] == doctest::Approx(acc).epsilon(1e-12));
        }
      }
    CHECK((masked_slots > 0) == (causal || hard));
    if (hard)
      for (double x : S) CHECK((x == 0 || x == 1));
  }
}

TEST_CASE("causal sparse sinkhorn: perturbing future tokens leaves past outputs bit-identical") {
  Generator g(40);
  const int64_t B = 2, H = 2, T = 23, dh = 4;
  Options o;
  o.block = 4;
  o.max_blocks = 6;
  o.scale = 0.5;
  const Tensor q = randn({B, H, T, dh}, DType::f32, &g), k = randn({B, H, T, dh}, DType::f32, &g),
               v = randn({B, H, T, dh}, DType::f32, &g);
  const SortNet net = random_net(g, H, dh, 6, DType::f32);
  for (Options::Pooling pool : {Options::Pooling::sum, Options::Pooling::mean}) {
    o.pooling = pool;
    auto run = [&](const Tensor& kk, const Tensor& vv, const Tensor& qq) {
      Generator noise(41);  // the same Gumbel noise in both runs: only the inputs differ
      return vec(sparse_sinkhorn_attention(qq, kk, vv, {true, {}}, net, o, &noise, true));
    };
    const std::vector<double> base = run(k, v, q);
    for (int64_t p : {1, 5, 8, 13, 22}) {
      std::vector<double> kk = vec(k), vv = vec(v), qq = vec(q);
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t t = p; t < T; ++t)
          for (int64_t d = 0; d < dh; ++d) {
            const size_t x = size_t((bh * T + t) * dh + d);
            kk[x] += 5.0f, vv[x] -= 3.0f, qq[x] *= -2.0f;
          }
      const std::vector<double> moved =
          run(from_vector(kk, k.shape(), DType::f32), from_vector(vv, v.shape(), DType::f32),
              from_vector(qq, q.shape(), DType::f32));
      bool later_changed = false;
      for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t d = 0; d < dh; ++d) {
            const size_t x = size_t((bh * T + t) * dh + d);
            if (t < p) REQUIRE(moved[x] == base[x]);
            else later_changed = later_changed || moved[x] != base[x];
          }
      CHECK(later_changed);
    }
  }
}

TEST_CASE("hard permutation: a permutation of the free rows and columns, used in eval mode") {
  Generator g(50);
  const Tensor s = sinkhorn_balance(randn({2, 3, 5, 5}, DType::f64, &g), {}, {7, false});
  const std::vector<double> p = vec(hard_permutation(s));
  for (int64_t m = 0; m < 6; ++m)
    for (int64_t i = 0; i < 5; ++i) {
      double r = 0, c = 0;
      for (int64_t j = 0; j < 5; ++j) r += p[size_t(m * 25 + i * 5 + j)], c += p[size_t(m * 25 + j * 5 + i)];
      CHECK(r == 1);
      CHECK(c == 1);
    }
  // Causal: row 0 has nothing to take and stays zero; every entry stays strictly below the diagonal.
  const std::vector<double> pc =
      vec(hard_permutation(sinkhorn_balance(randn({1, 1, 5, 5}, DType::f64, &g), {}, {3, true})));
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = i; j < 5; ++j) CHECK(pc[size_t(i * 5 + j)] == 0);

  // The method in eval mode with "hard": the sort matrix is 0/1, and forwards repeat exactly.
  auto m = make_attention({{"type", "sinkhorn"}, {"block", 3}, {"max_blocks", 4}, {"hard", true}},
                          {4, 2, std::make_shared<Generator>(1), DType::f32});
  m->eval();
  m->record_internals = true;
  const Tensor q = randn({1, 2, 10, 4}, DType::f32, &g), k = randn({1, 2, 10, 4}, DType::f32, &g);
  const std::vector<double> a = vec(m->forward(q, k, k, {}));
  for (double x : vec(m->internals.at("sort"))) CHECK((x == 0 || x == 1));
  CHECK(vec(m->forward(q, k, k, {})) == a);
}

TEST_CASE("sinkhorn method: config, Gumbel noise only in training, stats and internals") {
  Generator g(60);
  auto ctx = AttentionContext{4, 2, std::make_shared<Generator>(7), DType::f32};
  auto m = make_attention({{"type", "sinkhorn"}, {"block", 4}, {"max_blocks", 4}, {"pooling", "mean"}}, ctx);
  CHECK(m->name() == "sinkhorn");
  CHECK(m->parameters().size() == 2);
  const Tensor q = randn({2, 2, 13, 4}, DType::f32, &g), k = randn({2, 2, 13, 4}, DType::f32, &g);
  m->train();
  const std::vector<double> t1 = vec(m->forward(q, k, k, {})), t2 = vec(m->forward(q, k, k, {}));
  CHECK(t1 != t2);  // fresh noise each step
  m->eval();
  m->record_internals = true;
  const std::vector<double> e1 = vec(m->forward(q, k, k, {}));
  CHECK(e1 == vec(m->forward(q, k, k, {})));
  CHECK(m->internals.at("sort").shape() == Shape{2, 2, 4, 4});
  CHECK(m->internals.at("order").shape() == Shape{2, 2, 4});
  const Tensor attn = m->internals.at("attn");
  REQUIRE(attn.shape() == Shape{2, 2, 13, 13});
  const auto st = m->stats();
  REQUIRE(st.at("sort_max").size() == 2);
  for (double x : st.at("sort_max")) CHECK((x > 0.25 && x <= 1.0 + 1e-6));

  CHECK(contains(message_of<ValueError>([&] { parse_attention({{"type", "sinkhorn"}, {"blocks", 4}}); }), "blocks"));
  CHECK(contains(message_of<ValueError>([&] {
                   parse_attention({{"type", "sinkhorn"}, {"temperature", 0}});
                 }),
                 "temperature"));
  CHECK(contains(message_of<ValueError>([&] {
                   parse_attention({{"type", "sinkhorn"}, {"pooling", "max"}});
                 }),
                 "pooling"));
}

TEST_CASE("sparse sinkhorn: bad input gives errors naming the op and the field") {
  Generator g(70);
  Options o;
  o.block = 4;
  o.max_blocks = 2;
  const SortNet net = random_net(g, 2, 3, 2, DType::f32);
  const Tensor q = randn({1, 2, 8, 3}, DType::f32, &g);
  const Tensor long_q = randn({1, 2, 9, 3}, DType::f32, &g);
  CHECK(contains(
      message_of<ValueError>([&] { sparse_sinkhorn_attention(long_q, long_q, long_q, {}, net, o, nullptr, false); }),
      "max_blocks"));
  CHECK(contains(
      message_of<ShapeError>([&] { sparse_sinkhorn_attention(q, long_q, long_q, {}, net, o, nullptr, false); }),
      "sinkhorn_attention"));
  Options sc = o;
  sc.sortcut = 1;
  CHECK(contains(message_of<ValueError>([&] {
                   sparse_sinkhorn_attention(q, q, q, {true, {}}, net, sc, nullptr, false);
                 }),
                 "SortCut"));
  const SortNet wrong = random_net(g, 2, 5, 2, DType::f32);
  CHECK(contains(message_of<ShapeError>([&] { sparse_sinkhorn_attention(q, q, q, {}, wrong, o, nullptr, false); }),
                 "SortNet"));
  CHECK(contains(message_of<ShapeError>([&] {
                   sinkhorn_balance(randn({1, 1, 3, 4}, DType::f32, &g), {}, {3, false});
                 }),
                 "sinkhorn_balance"));
  CHECK(contains(message_of<ValueError>([&] {
                   sinkhorn_balance(randn({1, 1, 3, 3}, DType::f32, &g), {}, {0, false});
                 }),
                 "iterations"));
}

TEST_CASE("sort task as a decoder-only LM: sequences, config, a short run with exact match and edit distance") {
  // "3 1 2 EOS PAD" then the sorted part shifted right; targets only on the sorted part (EOS included).
  SortBatch b{from_vector(std::vector<int64_t>{5, 3, 4, 1, 0}, {1, 5}),
              from_vector(std::vector<int64_t>{3, 4, 5, 1, 0}, {1, 5}), from_vector(std::vector<int64_t>{3}, {1})};
  const SortSequences s = sort_sequences(b);
  CHECK(s.ids.to_vector<int64_t>() == std::vector<int64_t>{5, 3, 4, 1, 0, 3, 4, 5, 1});
  CHECK(s.targets.to_vector<int64_t>() == std::vector<int64_t>{-100, -100, -100, -100, 3, 4, 5, 1, -100});

  testing::TempDir dir;
  nlohmann::json j = {
      {"model",
       {{"d_model", 16},
        {"n_layers", 1},
        {"n_heads", 2},
        {"d_ff", 32},
        {"max_len", 17},
        {"vocab_size", 8},
        {"attention", {{"type", "sinkhorn"}, {"block", 4}, {"max_blocks", 5}}}}},
      {"data", {{"dataset", "sort"}, {"num_symbols", 6}, {"min_len", 2}, {"max_len", 8}, {"batch_size", 4}}},
      {"optim", {{"name", "adamw"}, {"lr", 0.01}, {"schedule", {{"kind", "cosine"}, {"warmup_steps", 1}}}}},
      {"steps", 4},
      {"eval_interval", 4},
      {"eval_tokens", 16},
      {"checkpoint_interval", 4},
      {"log_interval", 2},
      {"out_dir", dir.file("run")}};
  const TrainConfig cfg = TrainConfig::from_json(j);
  CHECK(cfg.data.seq_len == 17);
  nlohmann::json small = j;
  small["model"]["vocab_size"] = 7;
  CHECK(contains(message_of<ValueError>([&] { TrainConfig::from_json(small); }), "model.vocab_size"));
  nlohmann::json bad_len = j;
  bad_len["data"]["seq_len"] = 16;
  CHECK(contains(message_of<ValueError>([&] { TrainConfig::from_json(bad_len); }), "data.seq_len"));

  std::ostringstream log;
  auto trainer = make_trainer(cfg, false, log, false);
  trainer->run();
  const Evaluation e = trainer->evaluate_split("val", 16);
  for (const char* key : {"loss", "em", "edit"}) REQUIRE(e.fields.contains(key));
  CHECK(e.fields["em"].get<double>() >= 0);
  CHECK(e.fields["em"].get<double>() <= 1);
  CHECK(e.fields["edit"].get<double>() >= 0);
  CHECK(contains(log.str(), "exact match"));
  // The run loads without a tokenizer; eval and draw work on it (draw: the sort matrices).
  LoadedRun run = load_run(dir.file("run"));
  CHECK(!run.tokenizer);
  const SortEval r = evaluate_sort(*run.model, run.config, "val", 16);
  CHECK(r.loss == doctest::Approx(e.fields["loss"].get<double>()).epsilon(1e-5));
  CHECK(r.exact_match == e.fields["em"].get<double>());
  const HeatmapGrid grid = run_attention_grid(dir.file("run"), "", "sort");
  CHECK(grid.cells.size() == 2);
  CHECK(grid.cells[0].shape() == Shape{5, 5});
}

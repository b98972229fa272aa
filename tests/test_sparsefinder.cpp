// Sparsefinder: attention graphs and their metrics on hand-built masks, entmax attention on a graph
// (== full entmax when the graph holds the support; gradchecks), the hinge loss, the predictors
// (equal-size buckets, distance, clusters, windows) and the pair sampler.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "attention/entmax_attention.h"
#include "attention/graph_entmax.h"
#include "attention/sparsefinder.h"
#include "autograd/gradcheck.h"
#include "core/rng.h"
#include "optim/adam.h"
#include "support.h"
#include "tests/attention_support.h"
#include "tests/lm_run_support.h"
#include "tools/lm_trainer.h"
#include "tools/sparsefinder_experiment.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;
using attnlab::testing::TempDir;
namespace fs = std::filesystem;

namespace {

Tensor mask_of(const std::vector<double>& v, const Shape& s) { return from_vector(v, s, DType::b8); }

std::shared_ptr<const AttentionGraph> shared(AttentionGraph g) {
  return std::make_shared<const AttentionGraph>(std::move(g));
}

}  // namespace

TEST_CASE("attention graphs: masks round-trip, blocks, union, restriction") {
  const std::vector<double> m = {1, 0, 1, 0,  //
                                 0, 0, 0, 0,  //
                                 1, 1, 1, 1};
  AttentionGraph g = AttentionGraph::from_mask(mask_of(m, {3, 4}), 1, 1);
  CHECK(g.edges() == 6);
  CHECK(g.begin(1) == g.end(1));
  CHECK(g.has(0, 0, 2));
  CHECK_FALSE(g.has(0, 0, 1));
  CHECK(g.to_mask().reshape({3, 4}).to(DType::f64).to_vector<double>() == m);
  // 2 x 2 blocks: block row 0 (queries 0, 1) touches key blocks 0 and 1; block row 1 both.
  AttentionGraph bg = block_graph(g, 2, 2);
  CHECK(bg.Tq == 2);
  CHECK(bg.Tk == 2);
  CHECK(bg.to_mask().reshape({2, 2}).to(DType::f64).to_vector<double>() == std::vector<double>{1, 1, 1, 1});
  AttentionGraph back = expand_blocks(bg, 2, 2, 3, 4, {true, {}});  // causal: query i sees keys <= i + 1
  CHECK(back.to_mask().reshape({3, 4}).to(DType::f64).to_vector<double>() ==
        std::vector<double>{1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1});
  AttentionGraph r = restrict_to_visible(g, {true, {}});
  CHECK(r.to_mask().reshape({3, 4}).to(DType::f64).to_vector<double>() ==
        std::vector<double>{1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1});
  AttentionGraph u = sparsefinder::graph_union(
      r, AttentionGraph::from_mask(mask_of({0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}, {3, 4}), 1, 1));
  CHECK(u.to_mask().reshape({3, 4}).to(DType::f64).to_vector<double>() ==
        std::vector<double>{1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1});
}

TEST_CASE("attention graphs: bad graphs are refused with the op's name") {
  AttentionGraph g{1, 1, 2, 3, {0, 2, 3}, {2, 1, 0}};  // row 0 not increasing
  CHECK(contains(message_of<ValueError>([&] { g.validate("my_op"); }), "my_op"));
  CHECK(contains(message_of<ValueError>([&] { g.validate("my_op"); }), "strictly increasing"));
  AttentionGraph h{1, 1, 2, 3, {0, 1, 2}, {0, 3}};  // key out of range
  CHECK(contains(message_of<ValueError>([&] { h.validate("op"); }), "outside"));
  AttentionGraph s{1, 1, 2, 3, {0, 1}, {0}};  // too few offsets
  CHECK(contains(message_of<ValueError>([&] { s.validate("op"); }), "row_ptr"));
}

TEST_CASE("graph metrics: sparsity, recall and exact fraction on hand-built masks") {
  // 4 queries x 4 keys, causal: 10 valid pairs. Gold: (0,0) (1,0) (2,1) (2,2) (3,3).
  const AttentionMask causal{true, {}};
  AttentionGraph gold =
      AttentionGraph::from_mask(mask_of({1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1}, {4, 4}), 1, 1);
  // Predicted: (0,0) (1,1) (2,1) (3,0) (3,3): 5 of 10 valid pairs; hits (0,0) (2,1) (3,3) = 3 of 5;
  // queries with every gold edge: 0 and 3 -> 2 of 4.
  AttentionGraph pred =
      AttentionGraph::from_mask(mask_of({1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1}, {4, 4}), 1, 1);
  GraphMetrics m = graph_metrics(pred, gold, causal);
  CHECK(m.sparsity[0] == doctest::Approx(0.5));
  CHECK(m.gold_sparsity[0] == doctest::Approx(0.5));
  CHECK(m.recall[0] == doctest::Approx(0.6));
  CHECK(m.exact[0] == doctest::Approx(0.5));
  // The gold graph predicts itself: recall 1, exact 1.
  GraphMetrics self = graph_metrics(gold, gold, causal);
  CHECK(self.mean_recall() == 1.0);
  CHECK(self.mean_exact() == 1.0);
  // Key padding on key 3 (queries and keys the same positions: query 3 is padded too): valid pairs 6
  // (the causal lower triangle of 3 x 3), gold in them 4 of which pred holds (0,0) (2,1).
  AttentionMask padded{true, mask_of({0, 0, 0, 1}, {1, 4})};
  GraphMetrics pm = graph_metrics(restrict_to_visible(pred, padded), restrict_to_visible(gold, padded), padded);
  CHECK(pm.sparsity[0] == doctest::Approx(1.0 - 3.0 / 6.0));
  CHECK(pm.recall[0] == doctest::Approx(0.5));
  CHECK(pm.exact[0] == doctest::Approx(1.0 / 3.0));
  // Blocks of 2: valid tiles (0,0) (1,0) (1,1); gold touches all three, pred (0,0) (1,0) (1,1) too.
  GraphMetrics bm = block_graph_metrics(pred, gold, causal, 2, 2);
  CHECK(bm.sparsity[0] == doctest::Approx(0.0));
  CHECK(bm.recall[0] == doctest::Approx(1.0));
  // A prediction of only the diagonal tiles misses (1,0).
  AttentionGraph diag =
      AttentionGraph::from_mask(mask_of({1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}, {4, 4}), 1, 1);
  GraphMetrics dm = block_graph_metrics(diag, gold, causal, 2, 2);
  CHECK(dm.sparsity[0] == doctest::Approx(1.0 / 3.0));
  CHECK(dm.recall[0] == doctest::Approx(2.0 / 3.0));
  CHECK(dm.exact[0] == doctest::Approx(0.5));
}

TEST_CASE("graph entmax attention: a graph holding the support gives full entmax attention (f32, f64)") {
  for (DType dt : {DType::f64, DType::f32})
    for (double alpha : {1.5, 2.0, 1.3}) {
      Generator g(21);
      const int64_t B = 2, H = 2, T = 37, dh = 8;
      Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
      const AttentionMask mask{true, {}};
      const double scale = 0.9;
      AttentionGraph support = sparsefinder::entmax_support(q, k, mask, scale, alpha);
      Generator g2(3);
      AttentionGraph extra = sparsefinder::random_graph(B, H, T, T, 0.2, mask, g2);
      auto graph = shared(sparsefinder::graph_union(support, extra));
      CHECK(graph->edges() < B * H * T * (T + 1) / 2);  // a real subset of the causal pairs
      Tensor ours = graph_entmax_attention(q, k, v, graph, alpha, scale);
      Tensor full = entmax_attention(q, k, v, mask, scale, {alpha, {}});
      CHECK(allclose(ours, full, dt == DType::f64 ? 1e-12 : 2e-5, dt == DType::f64 ? 1e-12 : 2e-6));
      // Without a support edge the rows that lose it differ.
      AttentionGraph cut = *graph;
      bool changed = false;
      for (int64_t row = 0; row < cut.rows() && !changed; ++row)
        if (support.end(row) - support.begin(row) >= 2) {
          const int32_t drop = support.cols[size_t(support.begin(row))];
          std::vector<int32_t> cols;
          std::vector<int64_t> ptr{0};
          for (int64_t r = 0; r < cut.rows(); ++r) {
            for (int64_t e = cut.begin(r); e < cut.end(r); ++e)
              if (r != row || cut.cols[size_t(e)] != drop) cols.push_back(cut.cols[size_t(e)]);
            ptr.push_back(int64_t(cols.size()));
          }
          cut.cols = cols;
          cut.row_ptr = ptr;
          changed = true;
        }
      REQUIRE(changed);
      CHECK_FALSE(allclose(graph_entmax_attention(q, k, v, shared(cut), alpha, scale), full, 1e-4, 1e-6));
    }
}

TEST_CASE("graph entmax attention: f64 gradcheck on a causal support graph, deterministic across threads") {
  Generator g(8);
  Tensor q = randn({1, 2, 7, 3}, DType::f64, &g), k = randn({1, 2, 7, 3}, DType::f64, &g),
         v = randn({1, 2, 7, 3}, DType::f64, &g);
  Generator g2(9);
  auto graph = shared(sparsefinder::graph_union(sparsefinder::entmax_support(q, k, {true, {}}, 1.0, 1.5),
                                                sparsefinder::window_graph(1, 2, 7, 7, 3, 1, {true, {}})));
  CHECK(gradcheck(
            [&](const std::vector<Tensor>& in) { return graph_entmax_attention(in[0], in[1], in[2], graph, 1.5, 1.0); },
            {q, k, v})
            .ok);
}

TEST_CASE("graph entmax attention: bad inputs give clear errors") {
  Generator g(1);
  Tensor q = randn({1, 2, 4, 3}, DType::f64, &g);
  auto graph = shared(sparsefinder::window_graph(1, 2, 4, 4, 3, 0, {}));
  CHECK(contains(message_of<ShapeError>([&] {
                   graph_entmax_attention(q, q, q, shared(sparsefinder::window_graph(1, 1, 4, 4, 3, 0, {})), 1.5, 1.0);
                 }),
                 "graph_entmax_attention"));
  CHECK(contains(message_of<ValueError>([&] { graph_entmax_attention(q, q, q, graph, 1.0, 1.0); }), "alpha"));
  CHECK(contains(message_of<ValueError>([&] { graph_entmax_attention(q, q, q, graph, 1.5, -1.0); }), "scale"));
  CHECK(contains(message_of<ValueError>([&] { graph_entmax_attention(q, q, q, nullptr, 1.5, 1.0); }), "no graph"));
}

TEST_CASE("sparsefinder: equal-size buckets hold exactly bucket_size tokens, padding last") {
  Generator g(4);
  const int64_t B = 2, H = 3, T = 23, r = 4, size = 5;
  Tensor x = randn({B, H, T, r}, DType::f64, &g);
  std::vector<double> pad(size_t(B * T), 0.0);
  pad[size_t(T + 3)] = pad[size_t(T + 9)] = 1;
  Tensor ids = sparsefinder::equal_size_buckets(x, size, mask_of(pad, {B, T}));
  const std::vector<double> v = ids.to(DType::f64).to_vector<double>(), xv = x.to_vector<double>();
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t c = 0; c < r; ++c) {
      std::vector<int64_t> count(size_t((T + size - 1) / size), 0);
      for (int64_t t = 0; t < T; ++t) ++count[size_t(v[size_t((bh * T + t) * r + c)])];
      for (size_t bkt = 0; bkt + 1 < count.size(); ++bkt) CHECK(count[bkt] == size);
      CHECK(count.back() == T - size * int64_t(count.size() - 1));
      if (bh / H == 1) {  // the padded tokens are in the last bucket
        CHECK(v[size_t((bh * T + 3) * r + c)] == double(count.size() - 1));
        CHECK(v[size_t((bh * T + 9) * r + c)] == double(count.size() - 1));
      }
      // Buckets follow the values: a token in a lower bucket never has a larger value.
      for (int64_t s = 0; s < T; ++s)
        for (int64_t t = 0; t < T; ++t)
          if (bh / H == 0 && v[size_t((bh * T + s) * r + c)] < v[size_t((bh * T + t) * r + c)])
            CHECK(xv[size_t((bh * T + s) * r + c)] <= xv[size_t((bh * T + t) * r + c)]);
    }
}

TEST_CASE("sparsefinder: predictors against brute force") {
  Generator g(6);
  const int64_t B = 1, H = 2, T = 12, r = 3;
  Tensor qp = randn({B, H, T, r}, DType::f64, &g), kp = randn({B, H, T, r}, DType::f64, &g);
  const AttentionMask causal{true, {}};
  const std::vector<double> q = qp.to_vector<double>(), k = kp.to_vector<double>();
  AttentionGraph d = sparsefinder::distance_graph(qp, kp, 2.0, causal);
  for (int64_t bh = 0; bh < H; ++bh)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j < T; ++j) {
        double d2 = 0;
        for (int64_t c = 0; c < r; ++c)
          d2 += std::pow(q[size_t((bh * T + i) * r + c)] - k[size_t((bh * T + j) * r + c)], 2);
        CHECK(d.has(bh, i, j) == (j <= i && d2 < 2.0));
      }
  // Buckets of 4: an edge iff the query and key share a bucket in some dimension.
  AttentionGraph bg = sparsefinder::bucket_graph(qp, kp, 4, causal);
  const std::vector<double> qb = sparsefinder::equal_size_buckets(qp, 4, {}).to(DType::f64).to_vector<double>(),
                            kb = sparsefinder::equal_size_buckets(kp, 4, {}).to(DType::f64).to_vector<double>();
  for (int64_t bh = 0; bh < H; ++bh)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        bool share = false;
        for (int64_t c = 0; c < r; ++c) share |= qb[size_t((bh * T + i) * r + c)] == kb[size_t((bh * T + j) * r + c)];
        CHECK(bg.has(bh, i, j) == share);
      }
  // k-means: every cluster as a top cluster links every visible pair; one cluster of C = 3 splits them.
  Generator kg(7);
  sparsefinder::Centroids cent = sparsefinder::fit_kmeans(qp, kp, 3, 10, kg);
  CHECK(cent.c.shape() == Shape{H, 3, r});
  CHECK(sparsefinder::cluster_graph(qp, kp, cent, 3, causal).edges() == H * T * (T + 1) / 2);
  AttentionGraph one = sparsefinder::cluster_graph(qp, kp, cent, 1, causal);
  CHECK(one.edges() < H * T * (T + 1) / 2);
  CHECK(one.edges() > 0);
  // Window 3 + 1 global token, causal: keys i-1, i and 0.
  AttentionGraph w = sparsefinder::window_graph(1, 1, 6, 6, 3, 1, causal);
  CHECK(w.to_mask().reshape({6, 6}).to(DType::f64).to_vector<double>() ==
        std::vector<double>{1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0,
                            1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1});
}

TEST_CASE("sparsefinder: window graphs match their definition on every shape") {
  for (int64_t Tq : {1, 5, 9})
    for (int64_t Tk : {1, 6, 9})
      for (int64_t window : {0, 1, 2, 3, 6, 20})
        for (int64_t n_global : {0, 1, 4})
          for (bool causal : {false, true}) {
            const AttentionMask mask{causal, {}};
            AttentionGraph w = sparsefinder::window_graph(1, 2, Tq, Tk, window, n_global, mask);
            w.validate("test");
            for (int64_t h = 0; h < 2; ++h)
              for (int64_t i = 0; i < Tq; ++i)
                for (int64_t j = 0; j < Tk; ++j) {
                  const int64_t pos = i + Tk - Tq;
                  const bool want = (!causal || j <= pos) &&
                                    ((window > 0 && std::abs(pos - j) <= window / 2) || j < n_global || pos < n_global);
                  CHECK(w.has(h, i, j) == want);
                }
          }
}

TEST_CASE("sparsefinder: sampled negatives are visible non-gold keys, as many as the positives") {
  Generator g(10);
  const int64_t B = 2, H = 2, T = 15;
  Tensor q = randn({B, H, T, 4}, DType::f64, &g), k = randn({B, H, T, 4}, DType::f64, &g);
  AttentionMask mask{true, mask_of(std::vector<double>(size_t(B * T), 0.0), {B, T})};
  AttentionGraph gold = sparsefinder::entmax_support(q, k, mask, 1.0, 1.5);
  Generator sg(11);
  sparsefinder::PairSample s = sparsefinder::sample_pairs(gold, mask, sg);
  CHECK(s.valid_queries == std::vector<int64_t>{T, T});
  for (int64_t row = 0; row < gold.rows(); ++row) {
    const int64_t i = row % T, npos = s.pos.end(row) - s.pos.begin(row), nneg = s.neg.end(row) - s.neg.begin(row);
    CHECK(npos == gold.end(row) - gold.begin(row));
    CHECK(nneg == std::min<int64_t>(npos, i + 1 - npos));
    for (int64_t e = s.neg.begin(row); e < s.neg.end(row); ++e) {
      const int32_t j = s.neg.cols[size_t(e)];
      CHECK(j <= i);
      CHECK_FALSE(gold.has(row / T, i, j));
    }
  }
}

TEST_CASE("sparsefinder: hinge loss value by hand, zero when the margin is met, and a bad call") {
  // One query at 0, gold key at distance 1, negative at distance 3 (r = 1): [1 + 1 − 9]_+ = 0; margin 10: 2.
  AttentionGraph gold{1, 1, 1, 2, {0, 1}, {0}};
  auto pairs = std::make_shared<sparsefinder::PairSample>(
      sparsefinder::PairSample{gold, AttentionGraph{1, 1, 1, 2, {0, 1}, {1}}, {1}});
  Tensor qp = from_vector(std::vector<double>{0.0}, {1, 1, 1, 1}, DType::f64),
         kp = from_vector(std::vector<double>{1.0, 3.0}, {1, 1, 2, 1}, DType::f64);
  CHECK(sparsefinder::hinge_loss(qp, kp, pairs, 1.0).item<double>() == 0.0);
  CHECK(sparsefinder::hinge_loss(qp, kp, pairs, 10.0).item<double>() == doctest::Approx(2.0));
  CHECK(gradcheck([&](const std::vector<Tensor>& in) { return sparsefinder::hinge_loss(in[0], in[1], pairs, 10.0); },
                  {qp.to(DType::f64), kp.to(DType::f64)})
            .ok);
  CHECK(contains(message_of<ShapeError>([&] {
                   sparsefinder::hinge_loss(qp, from_vector(std::vector<double>{1.0}, {1, 1, 1, 1}, DType::f64), pairs);
                 }),
                 "sparsefinder_hinge"));
}

TEST_CASE("sparsefinder: projections train the hinge loss down on a teacher's graph") {
  Generator g(12);
  const int64_t B = 2, H = 2, T = 24, dh = 8;
  Tensor q = randn({B, H, T, dh}, DType::f32, &g), k = randn({B, H, T, dh}, DType::f32, &g);
  const AttentionMask causal{true, {}};
  AttentionGraph gold = sparsefinder::entmax_support(q, k, causal, 0.5, 1.5);
  Generator pg(13);
  sparsefinder::Projections proj(H, dh, 4, DType::f32, pg);
  Generator sg(14);
  auto pairs = std::make_shared<const sparsefinder::PairSample>(sparsefinder::sample_pairs(gold, causal, sg));
  AdamOptions ao;
  ao.lr = 0.01;
  Adam opt(proj.parameters(), ao);
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    proj.zero_grad();
    Tensor loss = sparsefinder::hinge_loss(proj.project(q), proj.project(k), pairs);
    loss.backward();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
    opt.step();
  }
  CHECK(last < 0.7 * first);
}

TEST_CASE("entmax attention with a graph provider: the full causal graph gives the usual output") {
  Generator g(30);
  EntmaxAttention::Options o;
  o.alpha = 1.5;
  o.scale = 0.7;
  EntmaxAttention m(o, 2, DType::f64);
  Tensor q = randn({2, 2, 9, 4}, DType::f64, &g), k = randn({2, 2, 9, 4}, DType::f64, &g),
         v = randn({2, 2, 9, 4}, DType::f64, &g);
  const AttentionMask causal{true, {}};
  Tensor full = m.forward(q, k, v, causal);
  int calls = 0;
  m.graph_provider = [&](const Tensor& qq, const Tensor&, const AttentionMask& mask) {
    ++calls;
    CHECK(qq.shape() == q.shape());
    CHECK(mask.causal);
    // Every pair (the future too): the method keeps only what the mask lets through.
    return std::make_shared<const AttentionGraph>(sparsefinder::window_graph(2, 2, 9, 9, 100, 0, {}));
  };
  Tensor on_graph = m.forward(q, k, v, causal);
  CHECK(calls == 1);
  CHECK(allclose(on_graph, full, 1e-12, 1e-12));
  // A window of 1 (each query its own key) gives v itself.
  m.graph_provider = [](const Tensor&, const Tensor&, const AttentionMask&) {
    return std::make_shared<const AttentionGraph>(sparsefinder::window_graph(2, 2, 9, 9, 1, 0, {}));
  };
  CHECK(allclose(m.forward(q, k, v, causal), v, 1e-12, 1e-12));
}

TEST_CASE("the sparsefinder experiment end to end on a tiny entmax run") {
  TempDir tmp;
  nlohmann::json j =
      attnlab::testing::tiny_config(tmp.path.string(), attnlab::testing::write_corpus(tmp.path.string()));
  j["model"]["attention"] = {{"type", "entmax"}, {"alpha", 1.5}};
  j["model"]["dropout"] = 0.0;
  std::ostringstream log;
  LMTrainer(TrainConfig::from_json(j), false, log).run(6);
  SparsefinderConfig cfg = parse_sparsefinder_config({{"run", tmp.path.string() + "/run"},
                                                      {"out", tmp.path.string() + "/sf"},
                                                      {"train_tokens", 256},
                                                      {"eval_tokens", 128},
                                                      {"steps", 5},
                                                      {"batch", 4},
                                                      {"block", 4},
                                                      {"distances", {1, 4}},
                                                      {"buckets", {2, 4}},
                                                      {"clusters", {2, 3}},
                                                      {"top_clusters", {1}},
                                                      {"windows", {3, 64}},
                                                      {"strides", {4}},
                                                      {"densities", {0.3}},
                                                      {"bpc_recalls", {1.0}},
                                                      {"bpc_tokens", 200}});
  nlohmann::json r = run_sparsefinder_experiment(cfg);
  CHECK(fs::exists(tmp.path / "sf" / "pareto.png"));
  CHECK(fs::exists(tmp.path / "sf" / "pareto.json"));
  CHECK(fs::exists(tmp.path / "sf" / "graphs.png"));
  // 2 distances + 2 bucket sizes + 2 cluster counts + 2 windows + 1 stride + 1 density, each at 2 levels.
  CHECK(r["pareto"].size() == 20);
  double full_bpc = 0;
  for (const auto& row : r["bpc"])
    if (row["family"] == "full entmax") full_bpc = row["bpc"];
  bool saw_full_window = false;
  for (const auto& p : r["pareto"]) {
    CHECK(p["sparsity"].get<double>() >= 0.0);
    CHECK(p["recall"].get<double>() <= 1.0 + 1e-12);
    if (p["family"] == "window" && p["param"] == 64 && p["level"] == "token") {
      saw_full_window = true;  // a window over the whole sequence: every pair, so recall 1 and sparsity 0
      CHECK(p["recall"].get<double>() == 1.0);
      CHECK(p["sparsity"].get<double>() == doctest::Approx(0.0));
    }
  }
  CHECK(saw_full_window);
  // At recall 1 every family's graph holds each support: bpc equals full entmax's.
  int at_full_recall = 0;
  for (const auto& row : r["bpc"])
    if (row["family"] != "full entmax") {
      ++at_full_recall;
      CHECK(row["bpc"].get<double>() == doctest::Approx(full_bpc).epsilon(1e-5));
    }
  CHECK(at_full_recall >= 1);
  CHECK(contains(message_of<ValueError>([] { parse_sparsefinder_config({{"run", "x"}, {"rnak", 4}}); }), "rnak"));
  CHECK(contains(message_of<ValueError>([] { parse_sparsefinder_config({{"out", "x"}}); }), "run"));
}

TEST_CASE("the shipped experiment configs parse") {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(ATTNLAB_SOURCE_DIR) / "configs" / "experiments")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    std::ifstream f(entry.path());
    nlohmann::json j;
    f >> j;
    CHECK_NOTHROW(parse_sparsefinder_config(j));
    ++n;
  }
  CHECK(n >= 1);
}

#include "tools/sparsefinder_experiment.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "attention/entmax_attention.h"
#include "attention/sparsefinder.h"
#include "autograd/grad_mode.h"
#include "core/config.h"
#include "datasets/corpus.h"
#include "optim/adam.h"
#include "tools/draw.h"
#include "tools/plot.h"
#include "tools/png.h"
#include "tools/run_dir.h"

namespace attnlab {

namespace {
using namespace sparsefinder;
using nlohmann::json;
constexpr const char* kOp = "sparsefinder experiment";

template <class T>
std::vector<T> list(ConfigSection& c, const std::string& key, std::vector<T> dflt, double lo, double hi) {
  const json* v = c.value(key);
  if (!v) return dflt;
  if (!v->is_array() || v->empty()) c.fail(key, "must be a non-empty array of numbers");
  std::vector<T> out;
  for (const json& x : *v) {
    if (!x.is_number()) c.fail(key, "must be an array of numbers, got ", x.dump());
    const double d = x.get<double>();
    if (!(d >= lo && d <= hi) || (std::is_integral_v<T> && d != std::floor(d)))
      c.fail(key, "values must be ", std::is_integral_v<T> ? "whole numbers " : "", "in [", lo, ", ", hi, "], got ", d);
    out.push_back(T(d));
  }
  return out;
}

// One layer's teacher: its q, k on the windows [N, H, T, dh], the score scale and α.
struct Teacher {
  Tensor q, k;
  double scale = 1, alpha = 1.5;
};

EntmaxAttention& entmax_method(LoadedRun& run, size_t layer) {
  auto* m = dynamic_cast<EntmaxAttention*>(run.model->trunk->blocks[layer]->attn->method.get());
  if (!m || m->options().learn_alpha)
    fail<ValueError>(kOp, "layer ", layer, " of ", run.config.out_dir,
                     " must use entmax attention with a fixed alpha (the teacher of methods.md §5)");
  return *m;
}

// Every layer's q, k on the full windows of a token stream (at most max_tokens of it).
std::vector<Teacher> collect(LoadedRun& run, std::vector<int64_t> tokens, int64_t max_tokens) {
  const int64_t T = run.config.data.seq_len;
  if (int64_t(tokens.size()) > max_tokens + 1) tokens.resize(size_t(max_tokens + 1));
  LMEvalBatches batches(std::move(tokens), T, 16);
  auto& blocks = run.model->trunk->blocks;
  std::vector<std::vector<Tensor>> qs(blocks.size()), ks(blocks.size());
  NoGradGuard ng;
  run.model->eval();
  LMBatch b;
  while (batches.next(b)) {
    if (b.input.size(1) != T) continue;  // a short last window
    for (size_t l = 0; l < blocks.size(); ++l) entmax_method(run, l).record_internals = true;
    run.model->forward(b.input);
    for (size_t l = 0; l < blocks.size(); ++l) {
      EntmaxAttention& m = entmax_method(run, l);
      qs[l].push_back(m.internals.at("q"));
      ks[l].push_back(m.internals.at("k"));
      m.record_internals = false;
      m.internals.clear();
    }
  }
  if (qs.empty() || qs[0].empty())
    fail<ValueError>(kOp, "no full window of ", T, " tokens in the split (train_tokens / eval_tokens too small?)");
  std::vector<Teacher> out;
  for (size_t l = 0; l < blocks.size(); ++l) {
    EntmaxAttention& m = entmax_method(run, l);
    out.push_back({concat(qs[l], 0), concat(ks[l], 0), m.score_scale(), m.options().alpha});
  }
  return out;
}

// A predictor of the sweep: a family and its parameter.
struct Predictor {
  std::string family;  // distance | buckets | kmeans | window | strided | random
  double param = 0;
  int64_t top = 0;  // kmeans: top clusters
  std::string series() const { return family == "kmeans" ? "k-means top " + std::to_string(top) : family; }
  json to_json() const {
    json j{{"family", family}, {"param", param}};
    if (family == "kmeans") j["top_clusters"] = top;
    return j;
  }
};

// Per layer: its projections and (for k-means) centroids per cluster count.
struct Learned {
  std::unique_ptr<Projections> proj;
  std::map<int64_t, Centroids> centroids;
};

AttentionGraph predict(const Predictor& p, const SparsefinderConfig& cfg, const Learned& lr, const Tensor& q,
                       const Tensor& k, const AttentionMask& mask, uint64_t seed) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2);
  if (p.family == "window") return window_graph(B, H, Tq, Tk, int64_t(p.param), cfg.n_global, mask);
  if (p.family == "strided") return strided_graph(B, H, Tq, Tk, int64_t(p.param), mask);
  if (p.family == "random") {
    Generator g(seed);
    return random_graph(B, H, Tq, Tk, p.param, mask, g);
  }
  NoGradGuard ng;
  const Tensor qp = lr.proj->project(q), kp = lr.proj->project(k);
  AttentionGraph g;
  if (p.family == "distance") g = distance_graph(qp, kp, p.param, mask);
  else if (p.family == "buckets") g = bucket_graph(qp, kp, int64_t(p.param), mask);
  else g = cluster_graph(qp, kp, lr.centroids.at(int64_t(p.param)), p.top, mask);
  return graph_union(g, window_graph(B, H, Tq, Tk, cfg.window, cfg.n_global, mask));
}

// Trains one layer's projections on the train windows (chunks of cfg.batch windows, pairs resampled
// every step); returns the loss at the first and the last step.
std::pair<double, double> train_projections(const SparsefinderConfig& cfg, const Teacher& t, Learned& lr,
                                            Generator& gen) {
  const AttentionMask causal{true, {}};
  const int64_t N = t.q.size(0), chunks = std::max<int64_t>(1, N / cfg.batch);
  std::vector<AttentionGraph> gold;
  for (int64_t c = 0; c < chunks; ++c)
    gold.push_back(entmax_support(t.q.narrow(0, c * cfg.batch, std::min(cfg.batch, N)),
                                  t.k.narrow(0, c * cfg.batch, std::min(cfg.batch, N)), causal, t.scale, t.alpha));
  AdamOptions ao;
  ao.lr = cfg.lr;
  Adam opt(lr.proj->parameters(), ao);
  double first = 0, last = 0;
  for (int64_t step = 0; step < cfg.steps; ++step) {
    const int64_t c = step % chunks, n = std::min(cfg.batch, N);
    auto pairs = std::make_shared<const PairSample>(sample_pairs(gold[size_t(c)], causal, gen));
    lr.proj->zero_grad();
    Tensor loss = hinge_loss(lr.proj->project(t.q.narrow(0, c * cfg.batch, n)),
                             lr.proj->project(t.k.narrow(0, c * cfg.batch, n)), pairs, cfg.margin);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  return {first, last};
}

plot::Panel pareto_panel(const json& points, const std::string& level) {
  static const std::vector<RGB> colours = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                                           {148, 103, 189}, {140, 86, 75},  {127, 127, 127}, {23, 190, 207}};
  std::map<std::string, std::vector<std::pair<double, double>>> by_series;
  for (const json& p : points)
    if (p["level"] == level) by_series[p["series"].get<std::string>()].push_back({p["sparsity"], p["recall"]});
  plot::Panel panel{
      level + " level (mean over layers and heads)", "sparsity (share of valid pairs not computed)", "recall", {}};
  size_t c = 0;
  for (auto& [name, pts] : by_series) {
    std::sort(pts.begin(), pts.end());
    plot::Series s{name, {}, {}, colours[c++ % colours.size()], true, 1.5};
    for (auto& [x, y] : pts) s.x.push_back(x), s.y.push_back(y);
    panel.series.push_back(s);
  }
  return panel;
}

// One validation window's first n queries and keys, per layer (rows) and head (columns): 0 neither,
// 1 predicted only, 2 gold but missed, 3 gold and predicted.
void draw_graphs(const std::string& path, const std::string& what, const std::vector<AttentionGraph>& pred,
                 const std::vector<AttentionGraph>& gold, int64_t n) {
  HeatmapGrid grid;
  grid.title = "validation window 0, first " + std::to_string(n) + " characters: " + what +
               " (1 predicted only, 2 gold missed, 3 gold predicted; grey: neither)";
  grid.rows = int64_t(pred.size());
  grid.cols = pred[0].H;
  for (size_t l = 0; l < pred.size(); ++l) {
    grid.row_labels.push_back("layer " + std::to_string(l));
    for (int64_t h = 0; h < pred[l].H; ++h) {
      std::vector<double> m(size_t(n * n), 0.0);
      for (int64_t i = 0; i < std::min(n, pred[l].Tq); ++i)
        for (int64_t j = 0; j < std::min(n, pred[l].Tk); ++j)
          m[size_t(i * n + j)] = double(pred[l].has(h, i, j)) + 2.0 * double(gold[l].has(h, i, j));
      grid.cells.push_back(from_vector(m, {n, n}, DType::f64));
    }
  }
  for (int64_t h = 0; h < pred[0].H; ++h) grid.col_labels.push_back("head " + std::to_string(h));
  HeatmapStyle style;
  style.norm = "grid";
  write_png(path, draw_heatmap_grid(grid, style));
}

}  // namespace

SparsefinderConfig parse_sparsefinder_config(const json& j) {
  if (!j.is_object()) fail<ValueError>("config", "the sparsefinder config must be a JSON object");
  ConfigSection c(j, "");
  SparsefinderConfig s;
  c.string("comment", "");
  s.run = c.string("run", "");
  if (s.run.empty()) c.fail("run", "is required: the directory of a trained entmax run");
  s.out = c.string("out", "runs/sparsefinder");
  s.train_tokens = c.integer("train_tokens", s.train_tokens, 1, int64_t(1) << 30);
  s.eval_tokens = c.integer("eval_tokens", s.eval_tokens, 1, int64_t(1) << 30);
  s.rank = c.integer("rank", s.rank, 1, 64);
  s.steps = c.integer("steps", s.steps, 0, 1000000);
  s.batch = c.integer("batch", s.batch, 1, 4096);
  s.lr = c.number("lr", s.lr, NumberRange::above(0));
  s.margin = c.number("margin", s.margin, NumberRange::at_least(0));
  s.seed = c.seed("seed", s.seed);
  s.window = c.integer("window", s.window, 0, 1 << 20);
  s.n_global = c.integer("global", s.n_global, 0, 1 << 20);
  s.block = c.integer("block", s.block, 1, 1 << 20);
  s.kmeans_iterations = c.integer("kmeans_iterations", s.kmeans_iterations, 0, 10000);
  s.distances = list<double>(c, "distances", s.distances, 0, 1e12);
  s.buckets = list<int64_t>(c, "buckets", s.buckets, 1, 1 << 20);
  s.clusters = list<int64_t>(c, "clusters", s.clusters, 1, 4096);
  s.top_clusters = list<int64_t>(c, "top_clusters", s.top_clusters, 1, 4096);
  s.windows = list<int64_t>(c, "windows", s.windows, 1, 1 << 20);
  s.strides = list<int64_t>(c, "strides", s.strides, 1, 1 << 20);
  s.densities = list<double>(c, "densities", s.densities, 0, 1);
  s.bpc_recalls = list<double>(c, "bpc_recalls", s.bpc_recalls, 0, 1);
  s.bpc_tokens = c.integer("bpc_tokens", s.bpc_tokens, 0, int64_t(1) << 30);
  for (int64_t top : s.top_clusters)
    for (int64_t k : s.clusters)
      if (top > k) c.fail("top_clusters", top, " top clusters exceed the ", k, " clusters of \"clusters\"");
  c.finish();
  return s;
}

json run_sparsefinder_experiment(const SparsefinderConfig& cfg) {
  LoadedRun run = load_run(cfg.run);
  if (!run.model) fail<ValueError>(kOp, cfg.run, " holds a classifier run, not a language model");
  const size_t L = run.model->trunk->blocks.size();
  for (size_t l = 0; l < L; ++l) entmax_method(run, l);
  const TextCorpus corpus = load_corpus(run.config.data.corpus);
  std::cout << "sparsefinder: teacher " << cfg.run << " (step " << run.step << "), " << L << " layers\n";
  const std::vector<Teacher> train = collect(run, run.tokenizer->encode(corpus.train), cfg.train_tokens);
  const std::vector<int64_t> val_tokens = run.tokenizer->encode(corpus.val);  // encoded once: every bpc run reads it
  const std::vector<Teacher> eval = collect(run, val_tokens, cfg.eval_tokens);
  const AttentionMask causal{true, {}};
  const int64_t H = train[0].q.size(1), dh = train[0].q.size(3);
  std::cout << "  windows: " << train[0].q.size(0) << " train, " << eval[0].q.size(0) << " validation of "
            << train[0].q.size(2) << " tokens\n";

  // Projections and centroids per layer.
  Generator gen(cfg.seed);
  std::vector<Learned> learned(L);
  for (size_t l = 0; l < L; ++l) {
    learned[l].proj = std::make_unique<Projections>(H, dh, cfg.rank, DType::f32, gen);
    const auto [first, last] = train_projections(cfg, train[l], learned[l], gen);
    NoGradGuard ng;
    const Tensor qp = learned[l].proj->project(train[l].q), kp = learned[l].proj->project(train[l].k);
    for (int64_t k : cfg.clusters) learned[l].centroids[k] = fit_kmeans(qp, kp, k, cfg.kmeans_iterations, gen);
    std::cout << "  layer " << l << ": hinge loss " << first << " -> " << last << " over " << cfg.steps << " steps\n";
  }

  // The sweep.
  std::vector<Predictor> sweep;
  for (double t : cfg.distances) sweep.push_back({"distance", t});
  for (int64_t b : cfg.buckets) sweep.push_back({"buckets", double(b)});
  for (int64_t k : cfg.clusters)
    for (int64_t top : cfg.top_clusters) sweep.push_back({"kmeans", double(k), top});
  for (int64_t w : cfg.windows) sweep.push_back({"window", double(w)});
  for (int64_t s : cfg.strides) sweep.push_back({"strided", double(s)});
  for (double d : cfg.densities) sweep.push_back({"random", d});
  std::vector<AttentionGraph> gold;
  for (size_t l = 0; l < L; ++l)
    gold.push_back(entmax_support(eval[l].q, eval[l].k, causal, eval[l].scale, eval[l].alpha));
  json points = json::array();
  for (const Predictor& p : sweep) {
    double ts = 0, tr = 0, te = 0, bs = 0, br = 0, be = 0, gs = 0;
    for (size_t l = 0; l < L; ++l) {
      const AttentionGraph g = predict(p, cfg, learned[l], eval[l].q, eval[l].k, causal, cfg.seed + l);
      const GraphMetrics tm = graph_metrics(g, gold[l], causal);
      const GraphMetrics bm = block_graph_metrics(g, gold[l], causal, cfg.block, cfg.block);
      ts += tm.mean_sparsity(), tr += tm.mean_recall(), te += tm.mean_exact();
      bs += bm.mean_sparsity(), br += bm.mean_recall(), be += bm.mean_exact();
      double gsum = 0;
      for (double x : tm.gold_sparsity) gsum += x;
      gs += gsum / double(tm.gold_sparsity.size());
    }
    const double n = double(L);
    json base = p.to_json();
    base["series"] = p.series();
    json tok = base, blk = base;
    tok.update(
        {{"level", "token"}, {"sparsity", ts / n}, {"recall", tr / n}, {"exact", te / n}, {"gold_sparsity", gs / n}});
    blk.update({{"level", "block"}, {"sparsity", bs / n}, {"recall", br / n}, {"exact", be / n}});
    points.push_back(tok);
    points.push_back(blk);
    std::cout << "  " << std::left << std::setw(14) << p.series() << std::right << std::setw(6) << p.param << std::fixed
              << std::setprecision(3) << "  token: sparsity " << ts / n << " recall " << tr / n << " exact " << te / n
              << "  block: sparsity " << bs / n << " recall " << br / n << "\n"
              << std::defaultfloat;
  }
  std::filesystem::create_directories(cfg.out);
  write_png(cfg.out + "/pareto.png",
            plot::line_chart({pareto_panel(points, "token"), pareto_panel(points, "block")}, 1000, 1100));

  // bpc with attention on the predicted graphs: per family and target recall, the sparsest point
  // (token level) that reaches it.
  json bpc = json::array();
  auto evaluate = [&](const Predictor* p) {
    for (size_t l = 0; l < L; ++l) {
      EntmaxAttention& m = entmax_method(run, l);
      if (!p) {
        m.graph_provider = nullptr;
        continue;
      }
      m.graph_provider = [&, p, l](const Tensor& q, const Tensor& k, const AttentionMask& mask) {
        return std::make_shared<const AttentionGraph>(predict(*p, cfg, learned[l], q, k, mask, cfg.seed + 100 + l));
      };
    }
    const EvalResult r = evaluate_lm(*run.model, val_tokens, run.config.data, cfg.bpc_tokens);
    for (size_t l = 0; l < L; ++l) entmax_method(run, l).graph_provider = nullptr;
    return r.bpc;
  };
  const double full_bpc = evaluate(nullptr);
  bpc.push_back({{"family", "full entmax"}, {"bpc", full_bpc}, {"sparsity", 0.0}, {"recall", 1.0}});
  std::cout << "  bpc on " << cfg.bpc_tokens << " validation tokens: full entmax " << full_bpc << "\n";
  for (const std::string family : {"distance", "buckets", "kmeans", "window", "strided", "random"})
    for (double target : cfg.bpc_recalls) {
      const json* best = nullptr;
      for (const json& pt : points)
        if (pt["level"] == "token" && pt["family"] == family && pt["recall"].get<double>() >= target &&
            (!best || pt["sparsity"].get<double>() > (*best)["sparsity"].get<double>()))
          best = &pt;
      if (!best) continue;
      Predictor p{family, (*best)["param"].get<double>(), best->value("top_clusters", int64_t(0))};
      const auto seen = std::find_if(bpc.begin(), bpc.end(), [&](const json& row) {
        return row["family"] == family && row["param"] == p.param && row.value("top_clusters", int64_t(0)) == p.top;
      });
      const double b = seen != bpc.end() ? (*seen)["bpc"].get<double>() : evaluate(&p);  // one point, one run
      json row = *best;
      row["target_recall"] = target;
      row["bpc"] = b;
      bpc.push_back(row);
      std::cout << "  " << p.series() << " " << p.param << " (recall " << (*best)["recall"].get<double>()
                << ", sparsity " << (*best)["sparsity"].get<double>() << "): " << b << " bpc\n";
    }
  // The picture: the sparsest distance point reaching the first target recall (else the densest one).
  {
    const json* pick = nullptr;
    for (const json& pt : points)
      if (pt["level"] == "token" && pt["family"] == "distance" &&
          (!pick || (pt["recall"].get<double>() >= cfg.bpc_recalls[0]
                         ? (*pick)["recall"].get<double>() < cfg.bpc_recalls[0] ||
                               pt["sparsity"].get<double>() > (*pick)["sparsity"].get<double>()
                         : (*pick)["recall"].get<double>() < pt["recall"].get<double>())))
        pick = &pt;
    if (pick) {
      const Predictor p{"distance", (*pick)["param"].get<double>()};
      std::vector<AttentionGraph> pred, gold_one;
      for (size_t l = 0; l < L; ++l) {
        const Tensor q0 = eval[l].q.narrow(0, 0, 1), k0 = eval[l].k.narrow(0, 0, 1);
        pred.push_back(predict(p, cfg, learned[l], q0, k0, causal, cfg.seed));
        gold_one.push_back(entmax_support(q0, k0, causal, eval[l].scale, eval[l].alpha));
      }
      draw_graphs(cfg.out + "/graphs.png", "distance t = " + plot::format_value(p.param), pred, gold_one,
                  std::min<int64_t>(96, eval[0].q.size(2)));
    }
  }
  json result{{"teacher", cfg.run}, {"step", run.step}, {"pareto", points}, {"bpc", bpc}};
  std::ofstream(cfg.out + "/pareto.json") << result.dump(1) << "\n";
  std::cout << "  wrote " << cfg.out << "/pareto.json, pareto.png and graphs.png\n";
  return result;
}

}  // namespace attnlab

// Image classification from configs: the ViT's patch embedding and pooling, a tiny ViT trained by the
// shared trainer on synthetic stripes (accuracy and column-sum deviation in metrics.jsonl, exact
// resume, load_run and eval), the config checks, and the optimizer's parameter groups.
#include <doctest/doctest.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "attention/sinkformer.h"
#include "autograd/grad_mode.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tests/support.h"
#include "tools/classifier_trainer.h"
#include "tools/draw.h"
#include "tools/run_dir.h"

using namespace attnlab;
using namespace attnlab::testing;

namespace {

// 8x8 stripes in 4 classes, 2x2 patches (16 tokens and a class token).
nlohmann::json tiny_vit(const std::string& dir, const nlohmann::json& attention = "softmax") {
  return {{"model",
           {{"image_size", 8},
            {"patch_size", 2},
            {"num_classes", 4},
            {"d_model", 16},
            {"n_layers", 1},
            {"n_heads", 2},
            {"d_ff", 32},
            {"max_len", 17},
            {"pooling", "cls"},
            {"dropout", 0.1},
            {"attention", attention}}},
          {"data", {{"dataset", "synthetic_images"}, {"train_size", 192}, {"val_size", 64}, {"batch_size", 16}}},
          {"optim", {{"lr", 0.01}, {"weight_decay", 0.05}, {"schedule", {{"kind", "constant"}}}}},
          {"steps", 40},
          {"eval_interval", 20},
          {"eval_tokens", 0},
          {"checkpoint_interval", 10},
          {"log_interval", 5},
          {"seed", 3},
          {"out_dir", dir + "/run"}};
}

std::vector<nlohmann::json> rows(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

}  // namespace

TEST_CASE("ViT: patches are the image's p x p blocks in row-major order") {
  ModelConfig c = ModelConfig::from_json(
      {{"image_size", 4}, {"patch_size", 2}, {"num_classes", 3}, {"d_model", 8}, {"n_heads", 2}, {"max_len", 4}});
  SequenceClassifier m(c);
  std::vector<float> px(16);
  for (int i = 0; i < 16; ++i) px[size_t(i)] = float(i);
  Tensor p = m.patches(from_vector(px, {1, 16}));
  REQUIRE(p.shape() == Shape{1, 4, 4});
  CHECK(p.select(0, 0).select(0, 1).to_vector<double>() == std::vector<double>{2, 3, 6, 7});
  CHECK(p.select(0, 0).select(0, 2).to_vector<double>() == std::vector<double>{8, 9, 12, 13});
  CHECK_THROWS_AS(m.patches(from_vector(px, {2, 8})), ShapeError);
}

TEST_CASE("ViT: mean and class-token pooling give logits, and every parameter gets a gradient") {
  for (const char* pooling : {"mean", "cls"}) {
    CAPTURE(pooling);
    ModelConfig c = ModelConfig::from_json({{"image_size", 8},
                                            {"patch_size", 4},
                                            {"num_classes", 3},
                                            {"d_model", 8},
                                            {"n_heads", 2},
                                            {"n_layers", 1},
                                            {"max_len", 5},
                                            {"pooling", pooling}});
    SequenceClassifier m(c);
    CHECK(m.num_parameters() == c.parameter_count());
    Generator g(1);
    Tensor x = rand({5, 64}, DType::f32, &g), y = randint(0, 3, {5}, &g);
    CHECK(m.forward(x).shape() == Shape{5, 3});
    m.loss(x, y).backward();
    for (auto& [name, p] : m.named_parameters()) {
      CAPTURE(name);
      REQUIRE(p.grad().defined());
      CHECK(sum(mul(p.grad(), p.grad())).item<double>() > 0);
    }
  }
}

TEST_CASE("ViT configs: sizes, pooling and the data section are checked") {
  auto model = [](nlohmann::json extra) {
    nlohmann::json j = {{"image_size", 8}, {"patch_size", 2}, {"num_classes", 4},
                        {"d_model", 8},    {"n_heads", 2},    {"max_len", 16}};
    for (auto& [k, v] : extra.items()) j[k] = v;
    return j;
  };
  CHECK_NOTHROW(ModelConfig::from_json(model({})));
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model({{"patch_size", 3}})), doctest::Contains("model.patch_size"),
                       ValueError);
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model({{"pooling", "cls"}})), doctest::Contains("model.max_len"),
                       ValueError);
  CHECK_THROWS_WITH_AS(ModelConfig::from_json(model({{"num_classes", 0}})), doctest::Contains("num_classes"),
                       ValueError);
  CHECK_THROWS_WITH_AS(ModelConfig::from_json({{"patch_size", 2}}), doctest::Contains("model.patch_size"), ValueError);
  CHECK_THROWS_WITH_AS(ModelConfig::from_json({{"pooling", "cls"}}), doctest::Contains("model.pooling"), ValueError);

  TempDir dir;
  nlohmann::json j = tiny_vit(dir.path.string());
  CHECK_NOTHROW(TrainConfig::from_json(j));
  nlohmann::json text = j;
  text["data"] = {{"dataset", "text"}};
  CHECK_THROWS_WITH_AS(TrainConfig::from_json(text), doctest::Contains("data.dataset"), ValueError);
  nlohmann::json fm = j;
  fm["data"]["dataset"] = "fashion_mnist";
  CHECK_THROWS_WITH_AS(TrainConfig::from_json(fm), doctest::Contains("28 x 28"), ValueError);
  nlohmann::json nd = j;
  nd["optim"]["no_decay"] = {"*.bias", 3};
  CHECK_THROWS_WITH_AS(TrainConfig::from_json(nd), doctest::Contains("optim.no_decay"), ValueError);
  nd["optim"]["no_decay"] = "bias";
  CHECK_THROWS_WITH_AS(TrainConfig::from_json(nd), doctest::Contains("optim.no_decay"), ValueError);
  nlohmann::json big = j;
  big["data"]["batch_size"] = 1000;
  CHECK_THROWS_WITH_AS(ClassifierTrainer(TrainConfig::from_json(big), false, std::cout),
                       doctest::Contains("data.batch_size"), ValueError);
}

TEST_CASE("a tiny ViT learns synthetic stripes; metrics hold accuracy and every layer's column-sum deviation") {
  TempDir dir;
  std::ostringstream log;
  nlohmann::json j = tiny_vit(dir.path.string());
  j["model"]["pooling"] = "mean";
  j["optim"]["lr"] = 0.02;
  j["steps"] = 60;
  TrainConfig cfg = TrainConfig::from_json(j);
  ClassifierTrainer t(cfg, false, log);
  const double before = t.evaluate("test", 0).accuracy;
  t.run();
  const ClassifierEval after = t.evaluate("test", 0);
  MESSAGE("test accuracy " << before << " -> " << after.accuracy);
  CHECK(after.images == 128);
  CHECK(after.accuracy > 0.6);  // chance is 0.25
  CHECK(after.accuracy > before);
  CHECK(log.str().find("attn.colsum_dev (layer: per head):  L0 ") != std::string::npos);
  int train_rows = 0, val_rows = 0;
  for (const auto& row : rows(dir.file("run/metrics.jsonl"))) {
    if (row.contains("val_acc")) {
      ++val_rows;
      CHECK(row["val_acc"].get<double>() >= 0);
      CHECK(row["val_acc"].get<double>() <= 1);
      continue;
    }
    ++train_rows;
    REQUIRE(row.contains("images_per_s"));
    REQUIRE(row.contains("attn.colsum_dev"));
    REQUIRE(row["attn.colsum_dev"].size() == 1);     // layers
    REQUIRE(row["attn.colsum_dev"][0].size() == 2);  // heads
    for (const auto& d : row["attn.colsum_dev"][0]) CHECK(d.get<double>() >= 0);
  }
  CHECK(train_rows == 12);
  CHECK(val_rows == 3);

  // The run directory reads back: the same test accuracy from load_run, and a heatmap of a test image.
  LoadedRun run = load_run(cfg.out_dir);
  REQUIRE(run.classifier);
  CHECK(!run.tokenizer);
  ImageSplits data = load_image_splits(run.config);
  CHECK(evaluate_classifier(*run.classifier, data.test, 50, 0).accuracy == doctest::Approx(after.accuracy));
  HeatmapGrid g = run_attention_grid(cfg.out_dir, "", "attn", 3);
  CHECK(g.cells.size() == 2);
  CHECK(g.cells[0].shape() == Shape{16, 16});
  CHECK_THROWS_WITH_AS(run_attention_grid(cfg.out_dir, "x", "attn"), doctest::Contains("--image"), ValueError);
  Image img = draw_metrics(dir.file("run/metrics.jsonl"), 400, 300);
  CHECK(img.width == 400);
}

TEST_CASE("a classifier run resumed from its checkpoint continues exactly like an uninterrupted one") {
  TempDir dir;
  std::ostringstream log;
  nlohmann::json j = tiny_vit(dir.path.string(), {{"type", "sinkformer"}, {"iterations", 3}});
  j["steps"] = 20;
  TrainConfig full = TrainConfig::from_json(j);
  std::vector<double> uninterrupted = ClassifierTrainer(full, false, log).run();
  const std::vector<nlohmann::json> full_rows = rows(dir.file("run/metrics.jsonl"));

  TrainConfig part = full;
  part.out_dir = dir.file("part");
  std::vector<double> resumed;
  {
    ClassifierTrainer t(part, false, log);
    resumed = t.run(13);  // an interrupted run checkpoints where it stops
  }
  ClassifierTrainer t(part, true, log);
  CHECK(t.step() == 13);
  std::vector<double> rest = t.run();
  resumed.insert(resumed.end(), rest.begin(), rest.end());
  CHECK(resumed == uninterrupted);
  const std::vector<nlohmann::json> part_rows = rows(dir.file("part/metrics.jsonl"));
  REQUIRE(part_rows.size() == full_rows.size());
  for (size_t i = 0; i < part_rows.size(); ++i) {
    CHECK(part_rows[i].value("train_loss", -1.0) == full_rows[i].value("train_loss", -1.0));
    CHECK(part_rows[i].value("val_acc", -1.0) == full_rows[i].value("val_acc", -1.0));
  }
}

TEST_CASE("column-sum deviation: softmax is not doubly stochastic, a many-iteration Sinkformer nearly is") {
  auto deviation = [](const nlohmann::json& attention) {
    ModelConfig c = ModelConfig::from_json({{"image_size", 8},
                                            {"patch_size", 2},
                                            {"num_classes", 4},
                                            {"d_model", 16},
                                            {"n_heads", 2},
                                            {"n_layers", 2},
                                            {"max_len", 16},
                                            {"seed", 5},
                                            {"attention", attention}});
    SequenceClassifier m(c);
    Generator g(9);
    Tensor x = 4.0 * rand({3, 64}, DType::f32, &g);
    nlohmann::json dev = attention_colsum_deviation(*m.trunk, [&] { m.forward(x); });
    for (const auto& b : m.trunk->blocks) {
      CHECK(!b->attn->method->record_internals);
      CHECK(b->attn->method->internals.empty());
    }
    REQUIRE(dev["attn.colsum_dev"].size() == 2);
    double worst = 0;
    for (const auto& layer : dev["attn.colsum_dev"]) {
      REQUIRE(layer.size() == 2);
      for (const auto& h : layer) worst = std::max(worst, h.get<double>());
    }
    return worst;
  };
  const double softmax = deviation("softmax");
  const double sinkformer = deviation({{"type", "sinkformer"}, {"iterations", 41}});
  MESSAGE("column-sum deviation: softmax " << softmax << ", Sinkformer (41 iterations) " << sinkformer);
  CHECK(softmax > 1e-3);
  CHECK(sinkformer < 1e-3);
  CHECK(sinkformer < softmax);
}

TEST_CASE("parameter groups: no weight decay on biases, norms, embeddings and attention methods' own parameters") {
  ModelConfig c = ModelConfig::from_json({{"vocab_size", 10},
                                          {"d_model", 8},
                                          {"n_heads", 2},
                                          {"n_layers", 1},
                                          {"max_len", 8},
                                          {"attention", {{"type", "entmax"}, {"learn_alpha", true}}}});
  CausalLM lm(c);
  const auto named = lm.named_parameters();
  const std::vector<bool> mask = no_decay_mask(named, OptimConfig::default_no_decay());
  int64_t decayed = 0;
  for (size_t i = 0; i < named.size(); ++i) {
    const std::string& n = named[i].first;
    CAPTURE(n);
    const bool matrix = n.find("qkv.weight") != std::string::npos || n.find("out.weight") != std::string::npos ||
                        (n.find("mlp.") != std::string::npos && n.find(".weight") != std::string::npos) ||
                        n == "head.weight";
    CHECK(mask[i] == matrix);
    decayed += mask[i];
  }
  CHECK(decayed >= 4);
  CHECK(glob_match("*.bias", "trunk.blocks.0.attn.qkv.bias"));
  CHECK(!glob_match("*.bias", "trunk.bias.weight"));
  CHECK(glob_match("a*b*c", "aXbYbc"));

  // AdamW with zero gradients: a decayed parameter shrinks, one left out stays; the mask is saved
  // and restored with the state.
  for (const char* name : {"adamw", "sgd"}) {
    CAPTURE(name);
    Tensor a = from_vector(std::vector<double>{1, 2}, {2}), b = from_vector(std::vector<double>{3, 4}, {2});
    a.set_requires_grad(true);
    b.set_requires_grad(true);
    OptimConfig oc;
    oc.name = name;
    oc.weight_decay = 0.5;
    oc.no_decay = {"b"};
    std::unique_ptr<Optimizer> opt = make_optimizer(oc, {{"a", a}, {"b", b}});
    a.set_grad(zeros_like(a));
    b.set_grad(zeros_like(b));
    opt->step();
    CHECK(a.to_vector<double>()[0] < 1);
    CHECK(b.to_vector<double>() == std::vector<double>{3, 4});
    CHECK(opt->state_json()["no_decay"] == nlohmann::json{1});
    std::unique_ptr<Optimizer> fresh = make_optimizer(oc, std::vector<Tensor>{a, b});
    CHECK(fresh->decays(1));
    fresh->load_state(opt->state_tensors(), opt->state_json());
    CHECK(!fresh->decays(1));
    CHECK(fresh->decays(0));
    nlohmann::json bad = opt->state_json();
    bad["no_decay"] = {7};
    CHECK_THROWS_WITH_AS(fresh->load_state(opt->state_tensors(), bad), doctest::Contains("no_decay"), ValueError);
  }
}

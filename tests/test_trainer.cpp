// End-to-end training: a tiny LM overfits a fixed batch; a run resumed from its checkpoint gives
// exactly the losses of an uninterrupted run; configs are validated.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "optim/adam.h"
#include "tests/lm_run_support.h"
#include "tools/lm_sample.h"
#include "tools/lm_trainer.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {
std::string temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("attnlab_test_trainer_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}
}  // namespace

TEST_CASE("a tiny causal LM overfits a fixed batch") {
  ModelConfig c;
  c.vocab_size = 10;
  c.d_model = 32;
  c.n_layers = 1;
  c.n_heads = 2;
  c.d_ff = 64;
  c.max_len = 8;
  c.seed = 1;
  CausalLM model(c);
  Adam opt(model.parameters(), adamw_options(0.01, 0.0));
  Generator g(2);
  Tensor x = randint(0, 10, {4, 9}, &g);
  Tensor inp = x.narrow(1, 0, 8).contiguous(), tgt = x.narrow(1, 1, 8).contiguous();
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    opt.zero_grad();
    Tensor loss = model.loss(inp, tgt);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  MESSAGE("loss " << first << " -> " << last);
  CHECK(first > 1.5);
  CHECK(last < 0.05);
}

TEST_CASE("resuming from a checkpoint continues exactly like an uninterrupted run") {
  std::string dir = temp_dir("resume");
  std::string corpus = write_corpus(dir);
  std::ostringstream log;

  TrainConfig full = TrainConfig::from_json(tiny_config(dir + "/a", corpus));
  fs::create_directories(dir + "/a");
  std::vector<double> uninterrupted = LMTrainer(full, false, log).run();
  REQUIRE(uninterrupted.size() == 12);

  TrainConfig part = TrainConfig::from_json(tiny_config(dir + "/b", corpus));
  fs::create_directories(dir + "/b");
  std::vector<double> first_half;
  {
    LMTrainer t(part, false, log);
    first_half = t.run(7);  // stops (and checkpoints) after step 7, between checkpoint intervals
    CHECK(t.step() == 7);
  }
  LMTrainer resumed(part, true, log);
  CHECK(resumed.step() == 7);
  std::vector<double> second_half = resumed.run();
  std::vector<double> joined = first_half;
  joined.insert(joined.end(), second_half.begin(), second_half.end());
  REQUIRE(joined.size() == uninterrupted.size());
  for (size_t i = 0; i < joined.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(joined[i] == uninterrupted[i]);  // bit-identical, dropout and data order included
  }
  // The metrics log has exactly one row per logged step, the interrupted tail dropped.
  std::ifstream m(dir + "/b/run/metrics.jsonl");
  std::string line;
  std::vector<int64_t> train_steps;
  while (std::getline(m, line)) {
    auto row = nlohmann::json::parse(line);
    if (row.contains("train_loss")) train_steps.push_back(row["step"].get<int64_t>());
  }
  CHECK(train_steps == std::vector<int64_t>{3, 5, 6, 9, 10, 12});
  fs::remove_all(dir);
}

TEST_CASE("entmax attention: training logs the support size, α and column-sum deviation of every layer and head") {
  std::string dir = temp_dir("entmax");
  std::string corpus = write_corpus(dir);
  std::ostringstream log;
  nlohmann::json cfg = tiny_config(dir, corpus);
  cfg["model"]["n_layers"] = 2;
  cfg["model"]["attention"] = {{"type", "entmax"}, {"alpha", 1.5}, {"learn_alpha", true}};
  TrainConfig tc = TrainConfig::from_json(cfg);
  LMTrainer(tc, false, log).run();
  CHECK(log.str().find("attn.alpha (layer: per head):  L0 ") != std::string::npos);
  CHECK(log.str().find("attn.support (layer: per head):") != std::string::npos);
  std::ifstream m(dir + "/run/metrics.jsonl");
  std::string line;
  int rows = 0;
  while (std::getline(m, line)) {
    auto row = nlohmann::json::parse(line);
    if (!row.contains("train_loss")) continue;
    ++rows;
    REQUIRE(row.contains("attn.alpha"));
    REQUIRE(row["attn.alpha"].size() == 2);     // layers
    REQUIRE(row["attn.alpha"][0].size() == 2);  // heads
    REQUIRE(row.contains("attn.colsum_dev"));  // every method's, from a probe batch at log time
    REQUIRE(row["attn.colsum_dev"].size() == 2);
    for (const auto& layer : row["attn.colsum_dev"])
      for (const auto& d : layer) CHECK(d.get<double>() >= 0);
    for (const auto& layer : row["attn.support"])
      for (const auto& s : layer) CHECK((s.get<double>() >= 1 && s.get<double>() <= 16));
    for (const auto& layer : row["attn.alpha"])
      for (const auto& a : layer) CHECK((a.get<double>() > 1 && a.get<double>() < 2));
  }
  CHECK(rows == 6);  // steps 3, 5 (evaluated), 6, 9, 10, 12
  fs::remove_all(dir);
}

TEST_CASE("malformed training configs are rejected with a clear error") {
  auto base = tiny_config("/tmp/x", "/tmp/x/corpus.txt");
  auto bad = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j);
    return j;
  };
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["stpes"] = 3; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["steps"] = 0; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["data"]["seq_len"] = 64; })), ValueError);  // > max_len
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["data"]["tokenizer"] = "bpe"; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["optim"]["name"] = "lion"; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["optim"]["lr"] = "fast"; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["model"]["n_heads"] = 3; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_json(bad([](auto& j) { j["model"]["attention"] = {{"type", "nope"}}; })), ValueError);
  CHECK_THROWS_AS(TrainConfig::from_file("/nonexistent/config.json"), IOError);
  std::string dir = temp_dir("badjson");
  std::ofstream(dir + "/c.json") << "{\"steps\": 3,";
  CHECK_THROWS_AS(TrainConfig::from_file(dir + "/c.json"), ValueError);
  fs::remove_all(dir);
}

TEST_CASE("config values found by fuzzing are refused with a ValueError naming the field") {
  // Each was undefined behaviour (a float beyond int64 converted to an integer) or let a raw
  // JSON-library exception out; fuzz/corpus holds the inputs the fuzzer wrote.
  auto refusal = [](const nlohmann::json& j) {
    try {
      TrainConfig::from_json(j);
    } catch (const ValueError& e) {
      return std::string(e.what());
    } catch (const std::exception& e) {
      FAIL("not a ValueError: ", e.what());
    }
    FAIL("accepted: ", j.dump());
    return std::string();
  };
  auto says = [](const std::string& msg, const char* part) {
    CAPTURE(msg);
    CHECK(msg.find(part) != std::string::npos);
  };
  says(refusal({{"model", {{"d_model", 1e300}}}}), "model.d_model: must be an integer");
  says(refusal(nlohmann::json::parse(R"({"model": {"d_model": 4611686086018427387904}})")),
       "model.d_model: must be an integer");
  says(refusal({{"model", {{"seed", -1.5}}}}), "model.seed: must be an integer");
  says(refusal({{"steps", 1e300}}), "steps: must be an integer");
  says(refusal({{"data", {{"batch_size", 1e19}}}}), "data.batch_size: must be an integer");
  says(refusal({{"model", "softmax"}}), "model: must be a JSON object");
}

TEST_CASE("the shipped configs parse") {
  for (const auto& entry : fs::directory_iterator(fs::path(ATTNLAB_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    CHECK_NOTHROW(TrainConfig::from_file(entry.path().string()));
  }
}

TEST_CASE("sampling: top-k, temperature, determinism") {
  std::vector<double> logits{0.0, 5.0, 1.0, 4.9};
  for (double u : {0.0, 0.3, 0.7, 0.999999}) {
    int64_t k1 = sample_logits(logits, 1.0, 1, u);
    CHECK(k1 == 1);  // top-1 is greedy
    int64_t k2 = sample_logits(logits, 1.0, 2, u);
    CHECK((k2 == 1 || k2 == 3));
  }
  CHECK(sample_logits(logits, 1e-3, 0, 0.99) == 1);  // near-zero temperature: greedy
  // Over a uniform grid of u, each index is drawn in proportion to softmax(logits).
  std::vector<int> counts(4, 0);
  const int n = 100000;
  for (int i = 0; i < n; ++i) counts[size_t(sample_logits(logits, 1.0, 0, (i + 0.5) / n))]++;
  double z = 0;
  for (double l : logits) z += std::exp(l);
  for (size_t j = 0; j < 4; ++j) CHECK(counts[j] / double(n) == doctest::Approx(std::exp(logits[j]) / z).epsilon(1e-3));
  CHECK_THROWS_AS(sample_logits(logits, 0.0, 0, 0.5), ValueError);
  CHECK_THROWS_AS(sample_logits({}, 1.0, 0, 0.5), ValueError);

  ModelConfig c;
  c.vocab_size = 9;
  c.d_model = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.d_ff = 16;
  c.max_len = 6;
  CausalLM model(c);
  SampleOptions o;
  o.length = 10;  // longer than max_len: the window slides
  Generator g1(5), g2(5), g3(6);
  auto a = generate(model, {1, 2}, o, g1), b = generate(model, {1, 2}, o, g2), d = generate(model, {1, 2}, o, g3);
  CHECK(a.size() == 12);
  CHECK(a == b);
  CHECK(a != d);
  for (int64_t id : a) CHECK((id >= 0 && id < 9));
}

// The run directory: eval, sample and draw only read it; a resume keeps every row the checkpoint
// committed to and refuses what would lose data; the tokenizer and config come from the checkpoint;
// sampling stays within the tokenizer's ids.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/lm_run_support.h"
#include "tests/support.h"
#include "tools/draw.h"
#include "tools/lm_sample.h"
#include "tools/lm_trainer.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
  std::vector<uint8_t> b = read_bytes(path);
  return std::string(b.begin(), b.end());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Every file in a directory with its bytes: what "nothing was written" compares.
std::map<std::string, std::vector<uint8_t>> snapshot(const std::string& dir) {
  std::map<std::string, std::vector<uint8_t>> out;
  for (auto& e : fs::directory_iterator(dir)) out[e.path().filename().string()] = read_bytes(e.path().string());
  return out;
}

// tiny_config trained for 7 of its 12 steps: checkpoints at step 6 and, stopping, at step 7. Its
// metrics.jsonl has 4 rows: train rows at steps 3, 5 and 6, an eval row at step 5.
struct TrainedRun {
  TempDir tmp;
  TrainConfig cfg;
  std::string dir, metrics, sidecar;
  std::ostringstream log;

  explicit TrainedRun(const std::function<void(nlohmann::json&)>& edit = {}) {
    nlohmann::json j = tiny_config(tmp.path.string(), write_corpus(tmp.path.string()));
    if (edit) edit(j);
    cfg = TrainConfig::from_json(j);
    dir = cfg.out_dir;
    metrics = dir + "/metrics.jsonl";
    sidecar = dir + "/checkpoint.json";
    LMTrainer(cfg, false, log).run(7);
  }
};

}  // namespace

TEST_CASE("run dir: eval, sample and draw read a run without writing to it") {
  TrainedRun r;
  REQUIRE(lines_of(read_text(r.metrics)).size() == 4);
  // Rows that are not JSON, or have a wrong type, are no concern of eval's (it used to parse them).
  write_file(r.metrics, read_text(r.metrics) + "not json\n{\"step\": \"three\"}\n");
  auto before = snapshot(r.dir);

  LoadedRun run = load_run(r.dir);
  CHECK(run.step == 7);
  CHECK(run.config.out_dir == r.dir);
  EvalResult e = evaluate_run(run, "val", 0);
  CHECK(e.tokens > 0);
  CHECK(std::isfinite(e.loss));
  SampleOptions o;
  o.length = 20;
  o.vocab_limit = run.tokenizer->vocab_size();
  Generator g(1);
  CHECK_NOTHROW(run.tokenizer->decode(generate(*run.model, {0}, o, g)));
  CHECK(run_attention_grid(r.dir, "the fox").rows == 1);
  CHECK(snapshot(r.dir) == before);

  // A sidecar whose step was edited (it used to make eval drop rows) is only read.
  nlohmann::json sc = nlohmann::json::parse(read_text(r.sidecar));
  sc["step"] = 3;
  write_file(r.sidecar, sc.dump());
  before = snapshot(r.dir);
  CHECK(load_run(r.dir).step == 3);
  CHECK(snapshot(r.dir) == before);

  // No sidecar (it used to truncate metrics.jsonl to 0 bytes): a clear error, and nothing written.
  fs::rename(r.sidecar, r.sidecar + ".away");
  before = snapshot(r.dir);
  CHECK_THROWS_WITH_AS(load_run(r.dir), doctest::Contains("checkpoint.json is missing"), IOError);
  CHECK_THROWS_WITH_AS(run_attention_grid(r.dir, "the fox"), doctest::Contains("checkpoint.json is missing"), IOError);
  CHECK(snapshot(r.dir) == before);
}

TEST_CASE("run dir: resume keeps the checkpoint's metrics rows byte for byte and cuts off only the tail after it") {
  TrainedRun r;
  // Hand edits the resume must keep as they are: a row that is not JSON, a row with a wrong type.
  std::vector<std::string> rows = lines_of(read_text(r.metrics));
  REQUIRE(rows.size() == 4);
  rows[0] = "not json";
  rows[1] = R"({"step": "five", "train_loss": 2.5})";
  std::string committed;
  for (auto& row : rows) committed += row + "\n";
  // The interrupted run's tail: a row after the checkpoint and a half-written one.
  write_file(r.metrics, committed + R"({"step": 9, "train_loss": 1.0})" + "\n" + R"({"step": 10, "tra)");

  LMTrainer resumed(r.cfg, true, r.log);
  CHECK(resumed.step() == 7);
  CHECK(read_text(r.metrics) == committed);
  resumed.run();
  const std::string after = read_text(r.metrics);
  REQUIRE(after.compare(0, committed.size(), committed) == 0);
  std::vector<int64_t> steps;
  for (auto& row : lines_of(after.substr(committed.size())))
    steps.push_back(nlohmann::json::parse(row)["step"].get<int64_t>());
  CHECK(steps == std::vector<int64_t>{9, 10, 10, 12, 12});  // train 9, train + eval 10, train + eval 12
  CHECK(nlohmann::json::parse(read_text(r.sidecar))["extra"]["metrics_rows"] == 4 + 5);
}

TEST_CASE("run dir: a resume that would lose metrics rows or start afresh is refused") {
  TrainedRun r;
  const std::vector<std::string> rows = lines_of(read_text(r.metrics));
  REQUIRE(rows.size() == 4);

  // Fewer rows than the checkpoint committed to (what a kill during the old in-place rewrite left).
  write_file(r.metrics, rows[0] + "\n" + rows[1] + "\n" + rows[2]);
  auto before = snapshot(r.dir);
  CHECK_THROWS_WITH_AS(
      LMTrainer(r.cfg, true, r.log),
      doctest::Contains("metrics.jsonl holds 2 complete rows but the checkpoint at step 7 commits to 4"), IOError);
  CHECK(snapshot(r.dir) == before);
  // A missing log has nothing to lose: the resume starts a new one.
  fs::remove(r.metrics);
  {
    LMTrainer t(r.cfg, true, r.log);
    t.run(9);
  }
  CHECK(lines_of(read_text(r.metrics)).size() == 1);  // step 9

  // No sidecar: --resume used to start at step 1, truncating the metrics and deleting the weights.
  fs::remove(r.sidecar);
  before = snapshot(r.dir);
  CHECK_THROWS_WITH_AS(LMTrainer(r.cfg, true, r.log), doctest::Contains("no checkpoint to resume from"), IOError);
  CHECK(snapshot(r.dir) == before);
  TrainConfig elsewhere = r.cfg;
  elsewhere.out_dir = r.tmp.file("never-trained");
  CHECK_THROWS_AS(LMTrainer(elsewhere, true, r.log), IOError);
  CHECK_FALSE(fs::exists(elsewhere.out_dir));
}

TEST_CASE("run dir: a fresh start refuses to replace a run unless asked to overwrite it") {
  TrainedRun r;
  auto before = snapshot(r.dir);
  // It used to rewrite config.json, tokenizer.json and metrics.jsonl, then the checkpoint.
  CHECK_THROWS_WITH_AS(LMTrainer(r.cfg, false, r.log), doctest::Contains("--overwrite"), IOError);
  CHECK(snapshot(r.dir) == before);
  {
    LMTrainer t(r.cfg, false, r.log, /*overwrite=*/true);
    CHECK(t.step() == 0);
    CHECK_FALSE(fs::exists(r.sidecar));  // the old commit record went first
    CHECK(read_text(r.metrics).empty());
    t.run(2);
  }
  CHECK(fs::exists(r.sidecar));  // the new run's checkpoint, at step 2
  CHECK(LMTrainer(r.cfg, true, r.log).step() == 2);
}

TEST_CASE("run dir: the tokenizer and the config are the checkpoint's, never a fallback or an edited file") {
  TrainedRun r;
  const nlohmann::json ref = nlohmann::json::parse(read_text(r.sidecar))["files"]["tokenizer"];
  CHECK(ref["name"] == "tokenizer.json");
  CHECK(ref["bytes"] == fs::file_size(r.dir + "/tokenizer.json"));
  LoadedRun first = load_run(r.dir);
  const double loss = evaluate_run(first, "val", 0).loss;

  // Edits to config.json (window and batch size, model) change nothing eval loads.
  nlohmann::json cfg = nlohmann::json::parse(read_text(r.dir + "/config.json"));
  cfg["data"]["seq_len"] = 8;
  cfg["data"]["batch_size"] = 1;
  cfg["model"]["d_model"] = 32;
  write_file(r.dir + "/config.json", cfg.dump());
  LoadedRun run = load_run(r.dir);
  CHECK(evaluate_run(run, "val", 0).loss == loss);
  CHECK(run.config.data.seq_len == 16);

  // A changed or missing tokenizer is an error naming it, for eval, sample, draw and resume alike.
  const std::string tok_path = r.dir + "/tokenizer.json";
  const std::vector<uint8_t> tok = read_bytes(tok_path);
  CharTokenizer::from_corpus("other vocabulary").save(tok_path);
  CHECK_THROWS_WITH_AS(load_run(r.dir), doctest::Contains("tokenizer.json has"), IOError);
  CHECK_THROWS_WITH_AS(LMTrainer(r.cfg, true, r.log), doctest::Contains("tokenizer.json has"), IOError);
  fs::remove(tok_path);
  CHECK_THROWS_WITH_AS(load_run(r.dir), doctest::Contains("tokenizer.json cannot be read"), IOError);
  CHECK_THROWS_WITH_AS(run_attention_grid(r.dir, "the"), doctest::Contains("tokenizer.json cannot be read"), IOError);
  write_file(tok_path, std::string(tok.begin(), tok.end()));
  CHECK_NOTHROW(load_run(r.dir));

  // A byte-level run records its tokenizer too (no file used to mean "bytes", whatever the run was).
  TrainedRun bytes([](nlohmann::json& j) {
    j["data"]["tokenizer"] = "byte";
    j["model"]["vocab_size"] = 256;
  });
  CHECK(load_run(bytes.dir).tokenizer->name() == "byte");
  fs::remove(bytes.dir + "/tokenizer.json");
  CHECK_THROWS_AS(load_run(bytes.dir), IOError);
}

TEST_CASE("run dir: a model vocabulary larger than the tokenizer's is allowed, smaller is refused") {
  TrainedRun r;  // vocab_size 64 for the corpus's 36 symbols
  LoadedRun run = load_run(r.dir);
  const int64_t known = run.tokenizer->vocab_size();
  REQUIRE(known < run.config.model.vocab_size);
  SampleOptions o;
  o.length = 300;
  o.temperature = 50;  // close to uniform: unrestricted, about 40% of the draws have no text
  Generator g1(3), g2(3);
  std::vector<int64_t> unrestricted = generate(*run.model, {0}, o, g1);
  CHECK(std::any_of(unrestricted.begin(), unrestricted.end(), [&](int64_t id) { return id >= known; }));
  o.vocab_limit = known;
  std::vector<int64_t> ids = generate(*run.model, {0}, o, g2);
  CHECK(std::all_of(ids.begin(), ids.end(), [&](int64_t id) { return id < known; }));
  CHECK(run.tokenizer->decode(ids).size() == ids.size());
  o.vocab_limit = run.config.model.vocab_size + 1;
  CHECK_THROWS_AS(generate(*run.model, {0}, o, g2), ValueError);

  // Too small: refused at the start of training, before anything is written.
  TempDir tmp;
  nlohmann::json j = tiny_config(tmp.path.string(), write_corpus(tmp.path.string()));
  j["model"]["vocab_size"] = 20;
  TrainConfig small = TrainConfig::from_json(j);
  CHECK_THROWS_WITH_AS(LMTrainer(small, false, r.log),
                       doctest::Contains("model.vocab_size is 20 but the char tokenizer has 36"), ValueError);
  CHECK_FALSE(fs::exists(small.out_dir));
}

TEST_CASE("run dir: draw names the file and line of a metrics row with a wrong type") {
  TempDir tmp;
  write_file(tmp.file("m.jsonl"), "{\"step\": 1, \"train_loss\": 2.0}\n{\"step\": 2, \"train_loss\": \"1.5\"}\n");
  CHECK_THROWS_WITH_AS(draw_metrics(tmp.file("m.jsonl"), 400, 300), doctest::Contains("m.jsonl:2: \"train_loss\""),
                       ValueError);
  write_file(tmp.file("m.jsonl"), "{\"step\": 1, \"train_loss\": 2.0}\n[1, 2]\n");
  CHECK_THROWS_WITH_AS(draw_metrics(tmp.file("m.jsonl"), 400, 300), doctest::Contains("m.jsonl:2: a row must be"),
                       ValueError);
}

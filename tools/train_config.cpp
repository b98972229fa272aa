#include "tools/train_config.h"

#include <fstream>

#include "core/json_fields.h"

namespace attnlab {

namespace {
void check_keys(const nlohmann::json& j, const char* where, std::initializer_list<const char*> known) {
  if (!j.is_object()) fail<ValueError>("train config", "'", where, "' must be a JSON object");
  for (auto& [key, value] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (!ok) fail<ValueError>("train config", "unknown key '", key, "' in '", where, "'");
  }
}
}  // namespace

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  c.source = j;
  check_keys(j, "top level",
             {"model", "data", "optim", "steps", "eval_interval", "eval_tokens", "checkpoint_interval", "log_interval",
              "time_limit_s", "seed", "out_dir", "comment"});
  require_integers(j, "train config",
                   {"steps", "eval_interval", "eval_tokens", "checkpoint_interval", "log_interval", "seed"});
  if (j.contains("model") && !j["model"].is_object())
    fail<ValueError>("train config", "'model' must be a JSON object, got ", j["model"].dump());
  try {
    c.steps = j.value("steps", c.steps);
    c.eval_interval = j.value("eval_interval", c.eval_interval);
    c.eval_tokens = j.value("eval_tokens", c.eval_tokens);
    c.checkpoint_interval = j.value("checkpoint_interval", c.checkpoint_interval);
    c.log_interval = j.value("log_interval", c.log_interval);
    c.time_limit_s = j.value("time_limit_s", c.time_limit_s);
    c.seed = j.value("seed", c.seed);
    c.out_dir = j.value("out_dir", c.out_dir);
    if (j.contains("data")) {
      const auto& d = j["data"];
      check_keys(d, "data", {"corpus", "tokenizer", "seq_len", "batch_size"});
      require_integers(d, "train config: data", {"seq_len", "batch_size"});
      c.data.corpus = d.value("corpus", c.data.corpus);
      c.data.tokenizer = d.value("tokenizer", c.data.tokenizer);
      c.data.seq_len = d.value("seq_len", c.data.seq_len);
      c.data.batch_size = d.value("batch_size", c.data.batch_size);
    }
    if (j.contains("optim")) {
      const auto& o = j["optim"];
      check_keys(o, "optim", {"name", "lr", "weight_decay", "beta1", "beta2", "eps", "momentum", "clip", "schedule"});
      c.optim.name = o.value("name", c.optim.name);
      c.optim.lr = o.value("lr", c.optim.lr);
      c.optim.weight_decay = o.value("weight_decay", c.optim.weight_decay);
      c.optim.beta1 = o.value("beta1", c.optim.beta1);
      c.optim.beta2 = o.value("beta2", c.optim.beta2);
      c.optim.eps = o.value("eps", c.optim.eps);
      c.optim.momentum = o.value("momentum", c.optim.momentum);
      c.optim.clip = o.value("clip", c.optim.clip);
      if (o.contains("schedule")) c.optim.schedule = o["schedule"];
    }
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("train config", "wrong value type: ", e.what());
  }
  nlohmann::json model = j.value("model", nlohmann::json::object());
  if (!model.contains("seed")) model["seed"] = c.seed;
  c.model = ModelConfig::from_json(model);
  if (c.data.tokenizer != "char" && c.data.tokenizer != "byte")
    fail<ValueError>("train config", "data.tokenizer must be 'char' or 'byte', got '", c.data.tokenizer, "'");
  if (c.data.seq_len <= 0 || c.data.batch_size <= 0)
    fail<ValueError>("train config", "data.seq_len and data.batch_size must be positive");
  if (c.data.seq_len > c.model.max_len)
    fail<ValueError>("train config", "data.seq_len ", c.data.seq_len, " exceeds model.max_len ", c.model.max_len);
  if (c.optim.name != "adamw" && c.optim.name != "adam" && c.optim.name != "sgd")
    fail<ValueError>("train config", "optim.name must be adamw, adam or sgd, got '", c.optim.name, "'");
  if (!(c.optim.clip >= 0)) fail<ValueError>("train config", "optim.clip must be >= 0");
  if (c.steps <= 0 || c.eval_interval <= 0 || c.checkpoint_interval <= 0 || c.log_interval <= 0 || c.eval_tokens < 0)
    fail<ValueError>("train config", "steps and the intervals must be positive");
  return c;
}

TrainConfig TrainConfig::from_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail<IOError>("train config", "cannot open '", path, "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("train config", "'", path, "' is not valid JSON: ", e.what());
  }
  return from_json(j);
}

}  // namespace attnlab

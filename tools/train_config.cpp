#include "tools/train_config.h"

#include <fstream>

#include "core/config.h"
#include "optim/schedule.h"

namespace attnlab {

namespace {

DataConfig data_from(ConfigSection s) {
  DataConfig d;
  d.dataset = s.choice("dataset", d.dataset, {"text", "fashion_mnist", "synthetic_images", "sort"});
  d.corpus = s.string("corpus", d.corpus);
  d.tokenizer = s.choice("tokenizer", d.tokenizer, {"char", "byte"});
  d.seq_len = s.integer("seq_len", d.seq_len, 1, kMaxLen);
  d.batch_size = s.integer("batch_size", d.batch_size, 1, kMaxBatch);
  d.dir = s.string("dir", d.dir);
  d.train_size = s.integer("train_size", d.train_size, 0, kMaxTokens);
  d.val_size = s.integer("val_size", d.val_size, 1, kMaxTokens);
  d.test_size = s.integer("test_size", d.test_size, 0, kMaxTokens);
  d.num_symbols = s.integer("num_symbols", d.num_symbols, 1, 1 << 20);
  d.min_len = s.integer("min_len", d.min_len, 1, kMaxLen);
  d.max_len = s.integer("max_len", d.max_len, d.min_len, kMaxLen);
  if (d.sort()) {
    if (s.has("seq_len") && d.seq_len != 2 * d.max_len + 1)
      s.fail("seq_len", "the sort task's sequences are 2 max_len + 1 = ", 2 * d.max_len + 1, " long, got ", d.seq_len);
    d.seq_len = 2 * d.max_len + 1;
  }
  s.finish();
  return d;
}

OptimConfig optim_from(ConfigSection s) {
  OptimConfig o;
  o.name = s.choice("name", o.name, {"adamw", "adam", "sgd"});
  o.lr = s.number("lr", o.lr, NumberRange::at_least(0));
  o.weight_decay = s.number("weight_decay", o.weight_decay, NumberRange::at_least(0));
  o.beta1 = s.number("beta1", o.beta1, NumberRange::half_open(0, 1));
  o.beta2 = s.number("beta2", o.beta2, NumberRange::half_open(0, 1));
  o.eps = s.number("eps", o.eps, NumberRange::above(0));
  o.momentum = s.number("momentum", o.momentum, NumberRange::half_open(0, 1));
  o.clip = s.number("clip", o.clip, NumberRange::at_least(0));
  if (const nlohmann::json* schedule = s.value("schedule")) o.schedule = *schedule;
  if (const nlohmann::json* nd = s.value("no_decay")) {
    // A list of name globs, or a boolean: true for the defaults, false to decay every parameter.
    if (nd->is_boolean()) {
      o.no_decay = nd->get<bool>() ? OptimConfig::default_no_decay() : std::vector<std::string>{};
    } else {
      if (!nd->is_array()) s.fail("no_decay", "must be a boolean or a list of name patterns, got ", nd->dump());
      o.no_decay.clear();
      for (const auto& p : *nd) {
        if (!p.is_string() || p.get<std::string>().empty())
          s.fail("no_decay", "every pattern must be a non-empty string, got ", p.dump());
        o.no_decay.push_back(p.get<std::string>());
      }
    }
  }
  s.finish();
  return o;
}

// What training needs at the least: parameters, their gradients and two Adam moments (f32), and
// the logits of one batch with their gradient. Refused before anything is allocated.
void check_training_memory(const TrainConfig& c) {
  const double params = double(c.model.parameter_count()) * 4 * 4;
  const double logits = c.data.images()
                            ? double(c.data.batch_size) * double(c.model.num_classes) * 4 * 2
                            : double(c.data.batch_size) * double(c.data.seq_len) * double(c.model.vocab_size) * 4 * 2;
  const double have = double(machine_memory_bytes());
  if (params + logits > have)
    fail<ValueError>("config", "training needs at least ", format_bytes(params + logits), " (", format_bytes(params),
                     " for ", c.model.parameter_count(), " parameters with gradients and optimizer moments, ",
                     format_bytes(logits), " for one batch's logits): more than this machine's memory (",
                     format_bytes(have), ")");
}

}  // namespace

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  c.source = j;
  ConfigSection s(j, "");
  c.steps = s.integer("steps", c.steps, 1, kMaxSteps);
  c.eval_interval = s.integer("eval_interval", c.eval_interval, 1, kMaxSteps);
  c.eval_tokens = s.integer("eval_tokens", c.eval_tokens, 0, kMaxTokens);
  c.checkpoint_interval = s.integer("checkpoint_interval", c.checkpoint_interval, 1, kMaxSteps);
  c.log_interval = s.integer("log_interval", c.log_interval, 1, kMaxSteps);
  c.time_limit_s = s.number("time_limit_s", c.time_limit_s, NumberRange::at_least(0));
  c.seed = s.seed("seed", c.seed);
  c.out_dir = s.string("out_dir", c.out_dir);
  s.string("comment", "");
  c.data = data_from(ConfigSection(s.object("data"), "data"));
  c.optim = optim_from(ConfigSection(s.object("optim"), "optim"));
  nlohmann::json model = s.object("model");
  s.finish();
  if (!model.contains("seed")) model["seed"] = c.seed;
  c.model = ModelConfig::from_json(model, "model");
  LRSchedule::from_json(c.optim.schedule, c.optim.lr, c.steps, "optim.schedule");  // validated up front
  if (c.data.images()) {
    if (c.model.image_size == 0 || c.model.num_classes == 0)
      fail<ValueError>("config", "data.dataset: \"", c.data.dataset,
                       "\" is an image classification set: the model needs image_size, patch_size and num_classes");
    if (c.data.dataset == "fashion_mnist" && (c.model.image_size != 28 || c.model.num_classes != 10))
      fail<ValueError>("config", "model: Fashion-MNIST has 28 x 28 images in 10 classes, the model has image_size ",
                       c.model.image_size, " and num_classes ", c.model.num_classes);
  } else {
    if (c.model.num_classes > 0 || c.model.image_size > 0)
      fail<ValueError>("config", "data.dataset: a classifier (model.num_classes > 0) needs an image dataset ",
                       "(fashion_mnist or synthetic_images); \"text\" trains causal LMs");
    if (c.data.seq_len > c.model.max_len)
      fail<ValueError>("config", "data.seq_len: ", c.data.seq_len, " exceeds model.max_len ", c.model.max_len);
    if (c.data.sort() && c.model.vocab_size < c.data.num_symbols + 2)
      fail<ValueError>("config",
                       "model.vocab_size: the sort task needs num_symbols + 2 (PAD, EOS) = ", c.data.num_symbols + 2,
                       ", got ", c.model.vocab_size);
  }
  check_training_memory(c);
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
  try {
    return from_json(j);
  } catch (const ValueError& e) {
    throw ValueError(cat(path, ": ", e.what()));
  }
}

}  // namespace attnlab

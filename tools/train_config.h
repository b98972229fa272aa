// The training configuration read by `attnlab train --config X.json` (see configs/*.json), validated
// up front so a typo fails before any work is done.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "layers/transformer.h"

namespace attnlab {

// Bounds on a config's counts besides the model's (layers/transformer.h), for the same reasons.
inline constexpr int64_t kMaxBatch = int64_t(1) << 20;
inline constexpr int64_t kMaxSteps = int64_t(1) << 40;
inline constexpr int64_t kMaxTokens = int64_t(1) << 50;

struct DataConfig {
  // "text" (a causal LM's corpus), or an image classification set for a ViT (model.image_size):
  // "fashion_mnist" (from dir) or "synthetic_images" (class-dependent stripes in noise, for tests).
  std::string dataset = "text";
  std::string corpus = "kjv";      // text: "kjv" or a path to a plain text file
  std::string tokenizer = "char";  // text: char | byte
  int64_t seq_len = 256;           // text
  int64_t batch_size = 16;
  // Images: val holds the last val_size examples of the training file, train the first train_size of
  // the rest (0: all of it), test the first test_size of the test file (0: all).
  std::string dir;  // fashion_mnist: the directory of the .gz files (default: the package's)
  int64_t train_size = 0, val_size = 5000, test_size = 0;
  // "sort" (the Sparse Sinkhorn sort task, tools/sort_trainer.h): symbols and lengths; seq_len is then
  // 2 max_len + 1 (the input with its EOS, then the sorted part shifted right).
  int64_t num_symbols = 16, min_len = 1, max_len = 32;

  bool images() const { return dataset == "fashion_mnist" || dataset == "synthetic_images"; }
  bool sort() const { return dataset == "sort"; }
};

struct OptimConfig {
  std::string name = "adamw";  // adamw | adam | sgd
  double lr = 3e-3;
  double weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.99, eps = 1e-8;
  double momentum = 0.9;  // sgd only
  double clip = 1.0;      // global-norm clipping; 0 disables
  nlohmann::json schedule = {{"kind", "cosine"}, {"warmup_steps", 100}};
  // Parameters left out of weight decay, by name glob (optim/optimizer.h no_decay_mask): by default
  // biases, norms, embeddings, the class token and attention methods' own parameters (entmax α, temperature).
  std::vector<std::string> no_decay = default_no_decay();
  static std::vector<std::string> default_no_decay() {
    return {"*.bias", "*.ln*", "*.tok.*", "*.pos.*", "cls.*", "*.method.*"};
  }
};

struct TrainConfig {
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  int64_t steps = 1000;
  int64_t eval_interval = 200;
  int64_t eval_tokens = 65536;  // validation tokens per periodic evaluation (0: the whole split)
  int64_t checkpoint_interval = 500;
  int64_t log_interval = 10;
  double time_limit_s = 0;      // > 0: stop (and checkpoint) when training time passes this
  uint64_t seed = 0;
  std::string out_dir = "runs/default";
  nlohmann::json source;        // the JSON it was read from

  // Every section strict (core/config.h); ValueError naming the field ("config: data.seq_len: ...").
  static TrainConfig from_json(const nlohmann::json& j);
  static TrainConfig from_file(const std::string& path);  // errors also name the file
};

}  // namespace attnlab

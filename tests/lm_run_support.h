// A tiny language-model training run for the trainer and run-directory suites: a corpus with structure
// a small model picks up, and a config that trains it in a fraction of a second.
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace attnlab::testing {

// Writes dir/corpus.txt (about 19 KB, 36 distinct bytes) and returns its path.
inline std::string write_corpus(const std::string& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "the quick brown fox " + std::to_string(i % 7) + " jumps over the lazy dog.\n";
  std::string path = dir + "/corpus.txt";
  std::ofstream(path) << text;
  return path;
}

// 12 steps; logs every 3, evaluates every 5, checkpoints every 6; out_dir = dir/run.
inline nlohmann::json tiny_config(const std::string& dir, const std::string& corpus) {
  return {{"model",
           {{"d_model", 16},
            {"n_layers", 1},
            {"n_heads", 2},
            {"d_ff", 32},
            {"max_len", 32},
            {"vocab_size", 64},
            {"dropout", 0.1}}},
          {"data", {{"corpus", corpus}, {"tokenizer", "char"}, {"seq_len", 16}, {"batch_size", 4}}},
          {"optim",
           {{"name", "adamw"}, {"lr", 0.01}, {"clip", 1.0}, {"schedule", {{"kind", "cosine"}, {"warmup_steps", 3}}}}},
          {"steps", 12},
          {"eval_interval", 5},
          {"eval_tokens", 200},
          {"checkpoint_interval", 6},
          {"log_interval", 3},
          {"seed", 4},
          {"out_dir", dir + "/run"}};
}

}  // namespace attnlab::testing

// The Sparsefinder experiment at small scale (methods.md §5), from one config, on a trained 1.5-entmax
// char-LM run (configs/kjv-char-entmax15.json):
//   1. teacher graphs: each layer's q, k on windows of the train and validation splits, and the exact
//      entmax support of every head;
//   2. projections (rank r per head) trained with the margin hinge loss, the teacher frozen;
//   3. predictors swept on the validation windows — distance, equal-size buckets, k-means (each with a
//      local window and global tokens OR-ed in), and the baselines window-only, strided, random —
//      giving sparsity, recall and exact fraction at token level and at block level;
//   4. pareto.json and pareto.png (recall against sparsity), and the model's validation bpc with
//      attention computed on each predictor's graph at a few operating points (bpc.json).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace attnlab {

struct SparsefinderConfig {
  std::string run;  // the teacher's run directory
  std::string out;  // where pareto.json, pareto.png and bpc.json go
  int64_t train_tokens = 32768, eval_tokens = 8192;  // tokens of the train / val splits, in model windows
  int64_t rank = 4, steps = 300, batch = 8;
  double lr = 1e-2, margin = 1.0;
  uint64_t seed = 666;
  int64_t window = 3, n_global = 1;  // OR-ed into every learned predictor's graph
  int64_t block = 16;                // block-level metrics: tiles of block × block
  int64_t kmeans_iterations = 25;
  std::vector<double> distances = {0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 10};
  std::vector<int64_t> buckets = {2, 4, 8, 12, 16, 20, 32};
  std::vector<int64_t> clusters = {2, 4, 8, 12, 16, 20};
  std::vector<int64_t> top_clusters = {1, 2};
  std::vector<int64_t> windows = {1, 3, 5, 7, 9, 11, 15, 19, 23, 27, 41, 61};
  std::vector<int64_t> strides = {4, 8, 16, 32};
  std::vector<double> densities = {0.05, 0.1, 0.2, 0.4};
  std::vector<double> bpc_recalls = {0.9, 0.99};  // per predictor, the sparsest point reaching each
  int64_t bpc_tokens = 16384;
};

// Reads and validates a config (every key checked, unknown keys refused with the known ones).
SparsefinderConfig parse_sparsefinder_config(const nlohmann::json& j);
// Runs the experiment, printing progress; returns {"pareto": [...], "bpc": [...]} (also written to out).
nlohmann::json run_sparsefinder_experiment(const SparsefinderConfig& cfg);

}  // namespace attnlab

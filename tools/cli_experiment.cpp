// attnlab experiment sparsefinder --config FILE.json [--out DIR]
#include <fstream>
#include <iostream>

#include "tools/cli_common.h"
#include "tools/sparsefinder_experiment.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab experiment", "usage: attnlab experiment sparsefinder --config FILE.json [--out DIR]\n",
      "  Runs a paper's experiment at small scale from a config.\n"
      "  sparsefinder: on a trained 1.5-entmax char-LM run (configs/kjv-char-entmax15.json), extracts each\n"
      "  layer's teacher graphs (the exact entmax supports), trains the Sparsefinder projections with the\n"
      "  hinge loss, sweeps the predictors (distance, equal-size buckets, k-means, and the window, strided\n"
      "  and random baselines), writes recall against sparsity at token and block level (OUT/pareto.json,\n"
      "  OUT/pareto.png) and the model's validation bpc with attention computed on each predictor's graph.");
  std::string which, config, out;
  cmd.choice("experiment", which, {"sparsefinder"}, "the experiment")->required();
  cmd.text("--config", config, "the experiment config (JSON, e.g. configs/experiments/sparsefinder-kjv.json)")
      ->type_name("FILE.json")
      ->required();
  cmd.text("--out", out, "override the config's out directory")->type_name("DIR");
  return cmd.run(argc, argv, [&] {
    std::ifstream f(config);
    if (!f) fail<IOError>("experiment", "cannot open '", config, "'");
    nlohmann::json j;
    try {
      f >> j;
    } catch (const nlohmann::json::exception& e) {
      fail<ValueError>("experiment", "'", config, "' is not valid JSON: ", e.what());
    }
    SparsefinderConfig cfg;
    try {
      cfg = parse_sparsefinder_config(j);
    } catch (const ValueError& e) {
      throw ValueError(cat(config, ": ", e.what()));
    }
    if (!out.empty()) cfg.out = out;
    run_sparsefinder_experiment(cfg);
    return 0;
  });
}

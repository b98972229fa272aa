// attnlab eval --run DIR [--split val|test] [--tokens N]
#include <iomanip>
#include <iostream>

#include "tools/classifier_trainer.h"
#include "tools/cli_common.h"
#include "tools/run_dir.h"
#include "tools/sort_trainer.h"

using namespace attnlab;

namespace {
// The column-sum deviation of every layer and head (trainer_core.h) on the first few items of a split.
void print_colsum(const nlohmann::json& dev) {
  for (auto& [key, per_layer] : dev.items()) {
    std::cout << key << " (layer: per head):" << std::fixed << std::setprecision(3);
    for (size_t l = 0; l < per_layer.size(); ++l) {
      if (!per_layer[l].is_array()) continue;
      std::cout << "  L" << l << " ";
      for (size_t h = 0; h < per_layer[l].size(); ++h) std::cout << (h ? "/" : "") << per_layer[l][h].get<double>();
    }
    std::cout << "\n";
  }
}
}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("attnlab eval", "usage: attnlab eval --run DIR [--split val|test] [--tokens N]\n",
                   "  Loads DIR's checkpoint and reports loss (nats/token) and bits per character on a split\n"
                   "  (all of it unless --tokens limits it); for an image classifier run, loss and accuracy\n"
                   "  (--tokens then counts images); for a sort-task run, exact match and edit distance of greedy\n"
                   "  decodes (--tokens counts sequences, default 512). Also prints each layer's column-sum\n"
                   "  deviation per head (how far its attention is from doubly stochastic) on the split's first\n"
                   "  16 items.");
  std::string run_dir, split = "test";
  int64_t tokens = 0;
  cmd.text("--run", run_dir, "the run directory")->type_name("DIR")->required();
  cmd.choice("--split", split, {"val", "test"}, "the split to evaluate (default test)");
  cmd.integer("--tokens", tokens, 0, kMaxTokens, "evaluate the first N tokens of the split (default 0: all)");
  return cmd.run(argc, argv, [&] {
    LoadedRun run = load_run(run_dir);
    if (run.classifier) {
      ImageSplits data = load_image_splits(run.config);
      const ImageClassificationSet& set = split == "val" ? data.val : data.test;
      ClassifierEval r = evaluate_classifier(*run.classifier, set, 256, tokens);
      std::cout << split << ": " << describe(r) << " (step " << run.step << ")\n";
      print_colsum(attention_colsum_deviation(
          run.trunk(), [&] { run.classifier->forward(set.images.narrow(0, 0, std::min<int64_t>(16, set.size()))); }));
      return 0;
    }
    if (run.config.data.sort()) {  // --tokens counts sequences here
      std::cout << split << ": " << evaluate_sort(*run.model, run.config, split, tokens).summary() << " (step "
                << run.step << ")\n";
      return 0;
    }
    EvalResult r = evaluate_run(run, split, tokens);
    std::cout << split << ": loss " << r.loss << " nats/token, " << r.bpc << " bpc over " << r.tokens
              << " tokens (step " << run.step << ")\n";
    return 0;
  });
}

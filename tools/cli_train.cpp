// attnlab train --config configs/X.json [--resume | --overwrite] [--steps N] [--out DIR] [--time-limit S]
// [--detect-anomaly]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/lm_trainer.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab train",
      "usage: attnlab train --config FILE.json [--resume | --overwrite] [--steps N] [--out DIR] [--time-limit S]\n",
      "  Trains the causal language model the config describes (see configs/*.json), printing step,\n"
      "  loss, tokens/s and ETA, evaluating on the validation split every eval_interval steps, and\n"
      "  writing DIR/metrics.jsonl, DIR/checkpoint.{json,safetensors} and DIR/tokenizer.json.");
  std::string config, out;
  int64_t steps = 0;
  double time_limit = 0;
  bool resume = false, overwrite = false;
  cmd.text("--config", config, "the training config (JSON)")->type_name("FILE.json")->required();
  cmd.flag("--resume", resume, "continue from DIR's checkpoint (same losses as an uninterrupted run)");
  cmd.flag("--overwrite", overwrite, "start afresh in a DIR that already holds a run, replacing it");
  cmd.integer("--steps", steps, 1, kMaxSteps, "override the config's total steps");
  cmd.text("--out", out, "override the config's out_dir")->type_name("DIR");
  cmd.number("--time-limit", time_limit, NumberRange::at_least(0),
             "stop (and checkpoint) after S seconds of training (0: no limit)")
      ->type_name("S");
  cmd.detect_anomaly_flag();
  return cmd.run(argc, argv, [&] {
    TrainConfig cfg = TrainConfig::from_file(config);
    if (cmd.given("--steps")) cfg.steps = steps;
    if (cmd.given("--out")) cfg.out_dir = out;
    if (cmd.given("--time-limit")) cfg.time_limit_s = time_limit;
    if (resume && overwrite) throw cli::UsageError("--resume and --overwrite exclude each other");
    LMTrainer trainer(cfg, resume, std::cout, overwrite);
    trainer.run();
    EvalResult r = trainer.evaluate("val", 0);
    std::cout << "final: step " << trainer.step() << ", validation bpc " << r.bpc << " over " << r.tokens
              << " tokens; checkpoint " << trainer.checkpoint_prefix() << ".{json,safetensors}\n";
    return 0;
  });
}

// attnlab train --config configs/X.json [--resume] [--steps N] [--out DIR]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/lm_trainer.h"

using namespace attnlab;

static const char* kUsage =
    "usage: attnlab train --config FILE.json [--resume] [--steps N] [--out DIR] [--time-limit S]\n"
    "  Trains the causal language model the config describes (see configs/*.json), printing step,\n"
    "  loss, tokens/s and ETA, evaluating on the validation split every eval_interval steps, and\n"
    "  writing DIR/metrics.jsonl, DIR/checkpoint.{json,safetensors} and DIR/tokenizer.json.\n"
    "  --resume   continue from DIR's checkpoint (same losses as an uninterrupted run)\n"
    "  --steps N  override the config's total steps;  --out DIR  override out_dir\n";

int main(int argc, char** argv) {
  return cli::run_cli("attnlab train", kUsage, [&] {
    cli::Args args(argc, argv, {"config", "steps", "out", "time-limit"}, {"resume"});
    if (args.flag("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (!args.has("config")) throw cli::UsageError("--config is required");
    TrainConfig cfg = TrainConfig::from_file(args.str("config"));
    if (args.has("steps")) cfg.steps = int64_t(args.num("steps", 0));
    if (args.has("out")) cfg.out_dir = args.str("out");
    if (args.has("time-limit")) cfg.time_limit_s = args.num("time-limit", 0);
    if (cfg.steps <= 0) throw cli::UsageError("--steps must be positive");
    LMTrainer trainer(cfg, args.flag("resume"), std::cout);
    trainer.run();
    EvalResult r = trainer.evaluate("val", 0);
    std::cout << "final: step " << trainer.step() << ", validation bpc " << r.bpc << " over " << r.tokens
              << " tokens; checkpoint " << trainer.checkpoint_prefix() << ".{json,safetensors}\n";
    return 0;
  });
}

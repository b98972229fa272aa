// attnlab train --config configs/X.json [--resume | --overwrite] [--steps N] [--out DIR] [--time-limit S]
// [--seed S] [--detect-anomaly]
#include <iostream>
#include <limits>

#include "tools/cli_common.h"
#include "tools/trainer_core.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab train",
      "usage: attnlab train --config FILE.json [--resume | --overwrite] [--steps N] [--out DIR] [--time-limit S]\n"
      "                     [--seed S]\n",
      "  Trains the causal language model or the image classifier (model.num_classes > 0) the config\n"
      "  describes (see configs/*.json), printing step, loss, throughput and ETA, evaluating on the\n"
      "  validation split every eval_interval steps (bits per character, or accuracy), and writing\n"
      "  DIR/metrics.jsonl, DIR/checkpoint.{json,safetensors} (and DIR/tokenizer.json for an LM).");
  std::string config, out;
  int64_t steps = 0;
  int64_t seed = 0;
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
  cmd.integer("--seed", seed, 0, std::numeric_limits<int64_t>::max(),
              "override the config's seed (and the model's): data order, initialisation, dropout")
      ->type_name("S");
  cmd.detect_anomaly_flag();
  return cmd.run(argc, argv, [&] {
    TrainConfig cfg = TrainConfig::from_file(config);
    if (cmd.given("--seed")) {
      nlohmann::json j = cfg.source;
      j["seed"] = seed;
      j["model"]["seed"] = seed;
      cfg = TrainConfig::from_json(j);
    }
    if (cmd.given("--steps")) cfg.steps = steps;
    if (cmd.given("--out")) cfg.out_dir = out;
    if (cmd.given("--time-limit")) cfg.time_limit_s = time_limit;
    if (resume && overwrite) throw cli::UsageError("--resume and --overwrite exclude each other");
    std::unique_ptr<TrainerCore> trainer = make_trainer(cfg, resume, std::cout, overwrite);
    trainer->run();
    Evaluation r = trainer->evaluate_split("val", 0);
    std::cout << "final: step " << trainer->step() << ", validation " << r.summary << "; checkpoint "
              << trainer->checkpoint_prefix() << ".{json,safetensors}\n";
    return 0;
  });
}

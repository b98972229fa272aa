// Character/byte-level language-model training as `attnlab train` runs it: data, model, optimizer,
// schedule, periodic validation, metrics JSONL, checkpoints and exact resume.
#pragma once
#include <iosfwd>
#include <memory>
#include <vector>

#include "datasets/corpus.h"
#include "datasets/tokenizer.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "tools/run_dir.h"
#include "tools/train_config.h"

namespace attnlab {

class LMTrainer {
 public:
  // resume: continue from out_dir's checkpoint (IOError when there is none); otherwise start afresh,
  // writing config.json, tokenizer.json and an empty metrics.jsonl (tools/run_dir.h). A fresh start
  // in a directory that already holds a run (a checkpoint, or metrics rows) is refused unless
  // overwrite is set: then the old run's commit record is removed first.
  LMTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite = false);
  ~LMTrainer();

  // Trains until cfg.steps (or until `stop_at` steps when >= 0, or the time limit); returns the
  // training losses of the steps run by this call, in order.
  std::vector<double> run(int64_t stop_at = -1);
  EvalResult evaluate(const std::string& split, int64_t max_tokens);
  void save();  // checkpoint now

  int64_t step() const { return step_; }
  CausalLM& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  std::string checkpoint_prefix() const;

 private:
  void log_metrics(const nlohmann::json& row);
  std::string run_file(const char* name) const { return cfg_.out_dir + "/" + name; }
  TrainConfig cfg_;
  std::ostream& log_;
  TextCorpus corpus_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int64_t> val_tokens_, test_tokens_;
  std::unique_ptr<LMBatcher> batcher_;
  std::unique_ptr<CausalLM> model_;
  std::unique_ptr<Optimizer> opt_;
  LRSchedule schedule_;
  int64_t step_ = 0;
  double train_seconds_ = 0;  // accumulated over resumes
  int64_t metrics_rows_ = 0;  // rows in metrics.jsonl, which the next checkpoint commits to
};

// Builds the optimizer a config names over `params`.
// The attention methods' per-head numbers of the last forward (AttentionMethod::stats), by key:
// {"attn.support": [[layer 0's heads], [layer 1's heads], ...], "attn.alpha": ...}; logged with the
// training rows of metrics.jsonl and printed at each evaluation.
nlohmann::json attention_stats(const CausalLM& model);

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const std::vector<Tensor>& params);

}  // namespace attnlab

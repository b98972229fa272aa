// What every `attnlab train` run shares, whatever the model: the run directory's rules (tools/run_dir.h:
// refuse to replace or lose a run, append-only metrics, crash-safe checkpoints, exact resume), the
// optimizer with its parameter groups and the schedule, the step loop with its non-finite stops, the
// progress line, and the attention numbers logged per layer and head. A task (the causal LM, the
// image classifier) supplies the data, the model and the evaluation through the hooks below.
#pragma once
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "tools/run_dir.h"
#include "tools/train_config.h"

namespace attnlab {

// One split's evaluation: the numbers for metrics.jsonl ({"loss", "bpc"} or {"loss", "acc"}; the
// trainer prefixes them with the split) and a line for people ("loss 1.23, bpc 1.77 (4096 tokens)").
struct Evaluation {
  nlohmann::json fields = nlohmann::json::object();
  std::string summary;
};

class TrainerCore {
 public:
  virtual ~TrainerCore();

  // Trains until cfg.steps (or until `stop_at` steps when >= 0, or the time limit); returns the
  // training losses of the steps run by this call, in order.
  std::vector<double> run(int64_t stop_at = -1);
  void save();  // checkpoint now
  virtual Evaluation evaluate_split(const std::string& split, int64_t max_items) = 0;

  int64_t step() const { return step_; }
  std::string checkpoint_prefix() const;
  const Optimizer& optimizer() const { return *opt_; }

 protected:
  // Checks the run directory against resume / overwrite (IOError when a resume has no checkpoint, or
  // a fresh start would replace a run); writes nothing.
  TrainerCore(const TrainConfig& cfg, std::ostream& log, bool resume, bool overwrite);
  // Called once the task has its data and model: the optimizer and the schedule; then either the
  // checkpoint's state (resume) or a fresh run directory (config.json, an empty metrics.jsonl and
  // the task's own `files` (name -> content), each written atomically). `attached`: role -> one of
  // those files, which every checkpoint commits to (size and CRC).
  void start(Module& model, const TransformerTrunk& trunk, Generator& dropout,
             const std::map<std::string, std::string>& files = {},
             const std::map<std::string, std::string>& attached = {});

  // ---- the task's hooks ----
  virtual Tensor train_loss() = 0;                // the next training batch's loss, the model in training mode
  // The training data stream's position, saved in the checkpoint (rng.batcher_offset) for exact resume.
  virtual uint64_t data_offset() const = 0;
  virtual void set_data_offset(uint64_t offset) = 0;
  // A forward pass without gradients on a small fixed batch, for the attention diagnostics.
  virtual void probe_forward() = 0;
  virtual int64_t items_per_step() const = 0;
  virtual const char* item_name() const = 0;  // "tok", "img"
  virtual nlohmann::json checkpoint_extra() const { return nlohmann::json::object(); }

  TrainConfig cfg_;
  std::ostream& log_;
  bool resume_, has_run_;

 private:
  void log_metrics(const nlohmann::json& row);
  std::string run_file(const char* name) const { return cfg_.out_dir + "/" + name; }
  nlohmann::json attention_numbers();  // stats() and the column-sum deviation of the probe batch

  Module* model_ = nullptr;
  const TransformerTrunk* trunk_ = nullptr;
  Generator* dropout_ = nullptr;
  std::map<std::string, std::string> attached_;
  std::unique_ptr<Optimizer> opt_;
  LRSchedule schedule_;
  int64_t step_ = 0;
  double train_seconds_ = 0;  // accumulated over resumes
  int64_t metrics_rows_ = 0;  // rows in metrics.jsonl, which the next checkpoint commits to
};

// The attention methods' per-head numbers of the last forward (AttentionMethod::stats), by key:
// {"attn.support": [[layer 0's heads], [layer 1's heads], ...], "attn.alpha": ...}.
nlohmann::json attention_stats(const TransformerTrunk& trunk);
// Runs `forward` with every layer recording its attention weights, and returns each layer's column-sum
// deviation (attention/sinkformer.h) per head, averaged over the batch: {"attn.colsum_dev": [[...], ...]}
// (null for a layer whose method records no "attn"). The internals are dropped again afterwards.
nlohmann::json attention_colsum_deviation(const TransformerTrunk& trunk, const std::function<void()>& forward);

// Builds the optimizer a config names over `params`; with names, optim.no_decay picks the parameters
// weight decay leaves out.
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const std::vector<Tensor>& params);
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c,
                                          const std::vector<std::pair<std::string, Tensor>>& named_params);

// The trainer for cfg's model: LMTrainer (causal LM) or ClassifierTrainer (num_classes > 0).
std::unique_ptr<TrainerCore> make_trainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite);

}  // namespace attnlab

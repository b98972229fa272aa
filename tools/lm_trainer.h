// Character/byte-level language-model training as `attnlab train` runs it: the corpus, tokenizer and
// causal LM; everything else (schedule, validation, metrics, checkpoints, resume) is tools/trainer_core.h.
#pragma once
#include <iosfwd>
#include <memory>
#include <vector>

#include "datasets/corpus.h"
#include "datasets/tokenizer.h"
#include "tools/trainer_core.h"

namespace attnlab {

class LMTrainer : public TrainerCore {
 public:
  // resume: continue from out_dir's checkpoint (IOError when there is none); otherwise start afresh,
  // writing config.json, tokenizer.json and an empty metrics.jsonl (tools/run_dir.h). A fresh start
  // in a directory that already holds a run (a checkpoint, or metrics rows) is refused unless
  // overwrite is set: then the old run's commit record is removed first.
  LMTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite = false);
  ~LMTrainer() override;

  EvalResult evaluate(const std::string& split, int64_t max_tokens);
  Evaluation evaluate_split(const std::string& split, int64_t max_tokens) override;

  CausalLM& model() { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 protected:
  Tensor train_loss() override;
  uint64_t data_offset() const override { return batcher_->offset(); }
  void set_data_offset(uint64_t offset) override { batcher_->set_offset(offset); }
  void probe_forward() override;
  int64_t items_per_step() const override { return cfg_.data.seq_len * cfg_.data.batch_size; }
  const char* item_name() const override { return "tok"; }
  nlohmann::json checkpoint_extra() const override { return {{"tokenizer", tokenizer_->name()}}; }

 private:
  TextCorpus corpus_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<int64_t> val_tokens_, test_tokens_;
  std::unique_ptr<LMBatcher> batcher_;
  std::unique_ptr<CausalLM> model_;
};

// The LM's attention stats (see trainer_core.h).
inline nlohmann::json attention_stats(const CausalLM& model) { return attention_stats(*model.trunk); }

}  // namespace attnlab

// The sort task of Sparse Sinkhorn Attention (Tay et al. 2020; datasets/sort_task.h) as a decoder-only
// run: each sequence is "symbols, EOS, PAD…" (width W = max_len + 1) followed by the sorted symbols,
// the model predicts the second half token by token (loss on the sorted part only, EOS included,
// PAD ignored), and evaluation decodes greedily and reports exact match and normalised edit distance.
#pragma once
#include <iosfwd>
#include <memory>
#include <string>

#include "datasets/sort_task.h"
#include "layers/transformer.h"
#include "tools/trainer_core.h"

namespace attnlab {

// ids i64 [B, 2W − 1] (input then the target shifted right) and the LM targets [B, 2W − 1] (−100 off
// the sorted part and on PAD) of a batch.
struct SortSequences {
  Tensor ids, targets;
};
SortSequences sort_sequences(const SortBatch& batch);

// One character per token for pictures: symbols as base-36 digits, PAD '.', EOS '|'.
char sort_token_char(int64_t id);

// Greedy decode of the sorted half: W forwards of the whole width (the model is causal, so later
// placeholders do not change earlier predictions). Returns i64 [B, W].
Tensor decode_sorted(const CausalLM& model, const Tensor& input);

// Teacher-forced loss (nats per target token), exact match and normalised edit distance of greedy
// decodes on n examples (0: 512) of a split's own generator stream (seed cfg.seed; "val" and "test"
// differ, and both differ from training's). Leaves the model in eval mode.
struct SortEval {
  double loss = 0, exact_match = 0, edit_distance = 0;
  int64_t count = 0;
  std::string summary() const;  // "loss …, exact match …, edit distance … (N sequences)"
};
SortEval evaluate_sort(CausalLM& model, const TrainConfig& cfg, const std::string& split, int64_t n);

class SortTrainer : public TrainerCore {
 public:
  SortTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite = false);
  ~SortTrainer() override;
  // {"loss" (teacher forced, nats), "em" (exact match), "edit" (normalised edit distance)} over
  // max_items examples (0: 512) of the split's own stream.
  Evaluation evaluate_split(const std::string& split, int64_t max_items) override;
  CausalLM& model() { return *model_; }

 protected:
  Tensor train_loss() override;
  uint64_t data_offset() const override { return gen_.offset(); }
  void set_data_offset(uint64_t offset) override { gen_.set_offset(offset); }
  void probe_forward() override;
  int64_t items_per_step() const override { return cfg_.data.seq_len * cfg_.data.batch_size; }
  const char* item_name() const override { return "tok"; }

 private:
  SortTaskConfig task_;
  Generator gen_;
  std::unique_ptr<CausalLM> model_;
};

}  // namespace attnlab

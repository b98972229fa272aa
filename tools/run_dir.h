// A training run's directory as `attnlab train` writes it, and the read-only loading that `eval`,
// `sample` and `draw` use (they never write to it):
//   config.json      the config as given, for the user; nothing reads it back
//   tokenizer.json   the tokenizer the token ids belong to (tokenizer_to_json), written atomically
//   metrics.jsonl    one JSON row per logged step; only ever appended to, or cut back on resume
//   checkpoint.*     the checkpoint (layers/checkpoint.h). Its sidecar is the commit record of the
//                    whole run: weights, optimizer state, tokenizer.json (attached: size + CRC), the
//                    config the model was trained with, and extra.metrics_rows, how many rows of
//                    metrics.jsonl belong to the checkpoint.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "datasets/tokenizer.h"
#include "layers/checkpoint.h"
#include "tools/train_config.h"

namespace attnlab {

inline constexpr const char* kRunTokenizerFile = "tokenizer.json";
inline constexpr const char* kRunMetricsFile = "metrics.jsonl";

std::string run_checkpoint_prefix(const std::string& dir);  // DIR/checkpoint

struct EvalResult {
  double loss = 0;  // nats per token
  double bpc = 0;   // bits per character (= per token for char/byte tokenizers)
  int64_t tokens = 0;
};

// A run loaded from its checkpoint alone: the config recorded in the sidecar (not DIR/config.json),
// its out_dir set to DIR; the tokenizer and the weights the sidecar commits to; the model in eval mode.
// A classifier run (model.num_classes > 0) has a classifier instead of the LM, and no tokenizer.
struct LoadedRun {
  TrainConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<SequenceClassifier> classifier;
  int64_t step = 0;
  const TransformerTrunk& trunk() const { return classifier ? *classifier->trunk : *model->trunk; }
};

// IOError naming the file when the checkpoint, its tokenizer or its config is missing or damaged.
LoadedRun load_run(const std::string& dir);

// Loss and bits per character of `model` on `tokens` (the first max_tokens + 1 when max_tokens > 0),
// in windows of data.seq_len, data.batch_size at a time. Leaves the model in eval mode.
EvalResult evaluate_lm(CausalLM& model, std::vector<int64_t> tokens, const DataConfig& data, int64_t max_tokens);
// The same on the run's corpus split ("val" or "test").
EvalResult evaluate_run(LoadedRun& run, const std::string& split, int64_t max_tokens);

// The tokenizer a checkpoint commits to (IOError when missing, changed or malformed).
std::unique_ptr<Tokenizer> load_checkpoint_tokenizer(const std::string& prefix);

// ValueError naming model.vocab_size when the model cannot emit every id of the tokenizer. A larger
// vocabulary is allowed: samplers restrict themselves to the tokenizer's ids.
void check_vocab_size(const Tokenizer& tok, const ModelConfig& model);

// Resuming: keeps the first `rows` rows of the metrics file byte for byte and cuts off what follows
// (the rows an interrupted run wrote after its checkpoint, a half-written last row included). IOError
// naming the file when it holds fewer complete rows: it was cut short or edited, and resuming would
// lose rows. Returns the rows kept: `rows`, or 0 for a missing file (there is nothing in it to lose).
int64_t cut_metrics_to_checkpoint(const std::string& path, int64_t rows, int64_t step);

// Flushes a file's data to disk, so a checkpoint committed after it can rely on its contents.
void sync_file(const std::string& path);

}  // namespace attnlab

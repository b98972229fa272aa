#include "tools/lm_trainer.h"

#include <algorithm>
#include <iostream>
#include <sstream>

#include "layers/checkpoint.h"

namespace attnlab {

LMTrainer::LMTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite)
    : TrainerCore(cfg, log, resume, overwrite) {
  // The data: a corpus split, a tokenizer (the checkpoint's when resuming: ids depend on it), token streams.
  corpus_ = load_corpus(cfg_.data.corpus);
  if (resume) {
    tokenizer_ = load_checkpoint_tokenizer(checkpoint_prefix());
  } else if (cfg_.data.tokenizer == "char") {
    auto tok = CharTokenizer::from_corpus(corpus_.train + corpus_.val + corpus_.test);
    tokenizer_ = std::make_unique<CharTokenizer>(std::move(tok));
  } else {
    tokenizer_ = std::make_unique<ByteTokenizer>();
  }
  check_vocab_size(*tokenizer_, cfg_.model);
  val_tokens_ = tokenizer_->encode(corpus_.val);
  test_tokens_ = tokenizer_->encode(corpus_.test);
  batcher_ = std::make_unique<LMBatcher>(tokenizer_->encode(corpus_.train), cfg_.data.seq_len, cfg_.data.batch_size,
                                         Generator(cfg_.seed, 7));
  model_ = std::make_unique<CausalLM>(cfg_.model);
  start(*model_, *model_->trunk, model_->dropout_generator(),
        {{kRunTokenizerFile, tokenizer_to_json(*tokenizer_).dump(1) + "\n"}}, {{"tokenizer", kRunTokenizerFile}});
  log_ << "model: causal LM, " << cfg_.model.n_layers << " layers, d=" << cfg_.model.d_model << ", "
       << cfg_.model.n_heads << " heads, attention " << cfg_.model.attention.dump() << ", " << model_->num_parameters()
       << " parameters\n"
       << "data: " << corpus_.name << " (" << corpus_.train.size() << " / " << corpus_.val.size() << " / "
       << corpus_.test.size() << " bytes train/val/test), " << tokenizer_->name() << " tokenizer, vocab "
       << tokenizer_->vocab_size() << ", seq " << cfg_.data.seq_len << " x batch " << cfg_.data.batch_size << "\n";
}

LMTrainer::~LMTrainer() = default;

Tensor LMTrainer::train_loss() {
  LMBatch batch = batcher_->next();
  return model_->loss(batch.input, batch.target);
}

void LMTrainer::probe_forward() {
  // The first few windows of the validation text: the same batch at every log.
  model_->eval();
  const int64_t T = std::min<int64_t>(cfg_.data.seq_len, int64_t(val_tokens_.size()) - 1);
  if (T < 1) return;
  const int64_t B = std::min<int64_t>({4, cfg_.data.batch_size, int64_t(val_tokens_.size() - 1) / T});
  std::vector<int64_t> ids(val_tokens_.begin(), val_tokens_.begin() + B * T);
  model_->forward(from_vector(ids, {B, T}));
}

EvalResult LMTrainer::evaluate(const std::string& split, int64_t max_tokens) {
  EvalResult r = evaluate_lm(*model_, split == "test" ? test_tokens_ : val_tokens_, cfg_.data, max_tokens);
  model_->train();
  return r;
}

Evaluation LMTrainer::evaluate_split(const std::string& split, int64_t max_tokens) {
  EvalResult r = evaluate(split, max_tokens);
  std::ostringstream line;
  line.precision(4);
  line << "loss " << r.loss << ", bpc " << r.bpc << " (" << r.tokens << " tokens)";
  return {{{"loss", r.loss}, {"bpc", r.bpc}}, line.str()};
}

}  // namespace attnlab

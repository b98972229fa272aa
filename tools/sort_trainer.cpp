#include "tools/sort_trainer.h"

#include <algorithm>
#include <iostream>
#include <sstream>

#include "autograd/grad_mode.h"
#include "layers/losses.h"

namespace attnlab {

SortSequences sort_sequences(const SortBatch& batch) {
  const int64_t B = batch.input.size(0), W = batch.input.size(1);
  const std::vector<int64_t> in = batch.input.contiguous().to_vector<int64_t>();
  const std::vector<int64_t> tg = batch.target.contiguous().to_vector<int64_t>();
  const int64_t T = 2 * W - 1;
  std::vector<int64_t> ids(size_t(B * T)), targets(size_t(B * T), -100);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p = 0; p < W; ++p) ids[size_t(b * T + p)] = in[size_t(b * W + p)];
    for (int64_t p = 0; p + 1 < W; ++p) ids[size_t(b * T + W + p)] = tg[size_t(b * W + p)];
    // Position W − 1 + p (the input's last slot, then the target so far) predicts target token p.
    for (int64_t p = 0; p < W; ++p) {
      const int64_t t = tg[size_t(b * W + p)];
      if (t != kSortPad) targets[size_t(b * T + W - 1 + p)] = t;
    }
  }
  return {from_vector(ids, {B, T}), from_vector(targets, {B, T})};
}

char sort_token_char(int64_t id) {
  if (id == kSortPad) return '.';
  if (id == kSortEos) return '|';
  return "0123456789abcdefghijklmnopqrstuvwxyz"[(id - kSortNumReserved) % 36];
}

Tensor decode_sorted(const CausalLM& model, const Tensor& input) {
  NoGradGuard ng;
  const int64_t B = input.size(0), W = input.size(1), T = 2 * W - 1;
  const std::vector<int64_t> in = input.contiguous().to_vector<int64_t>();
  std::vector<int64_t> ids(size_t(B * T), kSortPad), out(size_t(B * W), kSortPad);
  for (int64_t b = 0; b < B; ++b) std::copy(in.begin() + b * W, in.begin() + (b + 1) * W, ids.begin() + b * T);
  for (int64_t p = 0; p < W; ++p) {
    const Tensor logits = model.forward(from_vector(ids, {B, T}));  // [B, T, V]
    const std::vector<int64_t> pred = argmax(logits.select(1, W - 1 + p), -1).contiguous().to_vector<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      out[size_t(b * W + p)] = pred[size_t(b)];
      if (p + 1 < W) ids[size_t(b * T + W + p)] = pred[size_t(b)];
    }
  }
  return from_vector(out, {B, W});
}

SortTrainer::SortTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite)
    : TrainerCore(cfg, log, resume, overwrite),
      task_{cfg.data.num_symbols, cfg.data.min_len, cfg.data.max_len},
      gen_(cfg.seed, 7) {
  model_ = std::make_unique<CausalLM>(cfg_.model);
  start(*model_, *model_->trunk, model_->dropout_generator());
  log_ << "model: causal LM, " << cfg_.model.n_layers << " layers, d=" << cfg_.model.d_model << ", "
       << cfg_.model.n_heads << " heads, attention " << cfg_.model.attention.dump() << ", " << model_->num_parameters()
       << " parameters\n"
       << "data: sort task, " << task_.num_symbols << " symbols, lengths " << task_.min_len << ".." << task_.max_len
       << ", sequences of " << cfg_.data.seq_len << " x batch " << cfg_.data.batch_size << "\n";
}

SortTrainer::~SortTrainer() = default;

Tensor SortTrainer::train_loss() {
  const SortSequences s = sort_sequences(make_sort_batch(task_, cfg_.data.batch_size, gen_));
  return model_->loss(s.ids, s.targets);
}

void SortTrainer::probe_forward() {
  model_->eval();
  Generator g(cfg_.seed, 101);
  model_->forward(sort_sequences(make_sort_batch(task_, std::min<int64_t>(4, cfg_.data.batch_size), g)).ids);
}

Evaluation SortTrainer::evaluate_split(const std::string& split, int64_t max_items) {
  const SortEval r = evaluate_sort(*model_, cfg_, split, max_items);
  model_->train();
  return {{{"loss", r.loss}, {"em", r.exact_match}, {"edit", r.edit_distance}}, r.summary()};
}

std::string SortEval::summary() const {
  std::ostringstream line;
  line.precision(4);
  line << "loss " << loss << ", exact match " << exact_match << ", edit distance " << edit_distance << " (" << count
       << " sequences)";
  return line.str();
}

SortEval evaluate_sort(CausalLM& model, const TrainConfig& cfg, const std::string& split, int64_t n) {
  const SortTaskConfig task{cfg.data.num_symbols, cfg.data.min_len, cfg.data.max_len};
  Generator g(cfg.seed, split == "test" ? 102 : 101);  // training draws from stream 7
  SortEval r;
  r.count = n > 0 ? n : 512;
  const int64_t chunk = 128;
  model.eval();
  for (int64_t done = 0; done < r.count; done += chunk) {
    const int64_t B = std::min(chunk, r.count - done);
    const SortBatch batch = make_sort_batch(task, B, g);
    {
      NoGradGuard ng;
      const SortSequences s = sort_sequences(batch);
      r.loss += double(model.loss(s.ids, s.targets).item<float>()) * double(B);
    }
    const SortMetrics m = sort_metrics(decode_sorted(model, batch.input), batch.target);
    r.exact_match += m.exact_match * double(B);
    r.edit_distance += m.edit_distance * double(B);
  }
  r.loss /= double(r.count), r.exact_match /= double(r.count), r.edit_distance /= double(r.count);
  return r;
}

}  // namespace attnlab

#include "tools/lm_trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "autograd/grad_mode.h"
#include "layers/checkpoint.h"
#include "layers/functional.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace attnlab {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c, const std::vector<Tensor>& params) {
  if (c.name == "sgd") {
    SGDOptions o;
    o.lr = c.lr;
    o.momentum = c.momentum;
    o.weight_decay = c.weight_decay;
    return std::make_unique<SGD>(params, o);
  }
  AdamOptions o;
  o.lr = c.lr;
  o.beta1 = c.beta1;
  o.beta2 = c.beta2;
  o.eps = c.eps;
  o.weight_decay = c.weight_decay;
  o.decoupled = c.name == "adamw";
  return std::make_unique<Adam>(params, o);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& out_dir) {
  std::string path = out_dir + "/tokenizer.json";
  if (!fs::exists(path)) return std::make_unique<ByteTokenizer>();
  return std::make_unique<CharTokenizer>(CharTokenizer::load(path));
}

namespace {
std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  int64_t t = int64_t(s + 0.5);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << ":" << std::setw(2) << std::setfill('0') << (t / 60) % 60;
  else os << t / 60;
  os << ":" << std::setw(2) << std::setfill('0') << t % 60;
  return os.str();
}
}  // namespace

LMTrainer::LMTrainer(const TrainConfig& cfg, bool resume, std::ostream& log) : cfg_(cfg), log_(log) {
  fs::create_directories(cfg_.out_dir);
  bool resuming = resume && fs::exists(checkpoint_prefix() + ".json");
  // The data: a corpus split, a tokenizer (saved with the run: ids depend on it), token streams.
  corpus_ = load_corpus(cfg_.data.corpus);
  if (resuming) {
    tokenizer_ = load_tokenizer(cfg_.out_dir);
  } else if (cfg_.data.tokenizer == "char") {
    auto tok = CharTokenizer::from_corpus(corpus_.train + corpus_.val + corpus_.test);
    tok.save(cfg_.out_dir + "/tokenizer.json");
    tokenizer_ = std::make_unique<CharTokenizer>(std::move(tok));
  } else {
    fs::remove(cfg_.out_dir + "/tokenizer.json");
    tokenizer_ = std::make_unique<ByteTokenizer>();
  }
  if (tokenizer_->vocab_size() > cfg_.model.vocab_size)
    fail<ValueError>("train", "the ", tokenizer_->name(), " tokenizer has ", tokenizer_->vocab_size(),
                     " symbols but model.vocab_size is ", cfg_.model.vocab_size);
  val_tokens_ = tokenizer_->encode(corpus_.val);
  test_tokens_ = tokenizer_->encode(corpus_.test);
  batcher_ = std::make_unique<LMBatcher>(tokenizer_->encode(corpus_.train), cfg_.data.seq_len, cfg_.data.batch_size,
                                         Generator(cfg_.seed, 7));
  model_ = std::make_unique<CausalLM>(cfg_.model);
  opt_ = make_optimizer(cfg_.optim, model_->parameters());
  schedule_ = LRSchedule::from_json(cfg_.optim.schedule, cfg_.optim.lr, cfg_.steps);

  if (resuming) {
    CheckpointState st = load_checkpoint(checkpoint_prefix(), *model_, opt_.get());
    step_ = st.step;
    try {
      batcher_->set_offset(st.rng.at("batcher_offset").get<uint64_t>());
      model_->dropout_generator().set_offset(st.rng.at("dropout_offset").get<uint64_t>());
      train_seconds_ = st.extra.value("train_seconds", 0.0);
    } catch (const nlohmann::json::exception& e) {
      fail<IOError>("train", "checkpoint ", checkpoint_prefix(), ".json lacks the data/dropout RNG offsets needed to "
                    "resume exactly (", e.what(), ")");
    }
    log_ << "resumed from " << checkpoint_prefix() << " at step " << step_ << "\n";
    // Drop metrics rows from after the checkpoint: they belong to the interrupted run.
    std::ifstream in(cfg_.out_dir + "/metrics.jsonl");
    std::string line, kept;
    while (std::getline(in, line)) {
      auto row = nlohmann::json::parse(line, nullptr, false);
      if (!row.is_discarded() && row.value("step", int64_t(0)) <= step_) kept += line + "\n";
    }
    std::ofstream(cfg_.out_dir + "/metrics.jsonl", std::ios::trunc) << kept;
  } else {
    std::ofstream(cfg_.out_dir + "/metrics.jsonl", std::ios::trunc);
    std::ofstream(cfg_.out_dir + "/config.json") << cfg_.source.dump(2) << "\n";
  }
  log_ << "model: causal LM, " << cfg_.model.n_layers << " layers, d=" << cfg_.model.d_model << ", "
       << cfg_.model.n_heads << " heads, attention " << cfg_.model.attention.dump() << ", "
       << model_->num_parameters() << " parameters\n"
       << "data: " << corpus_.name << " (" << corpus_.train.size() << " / " << corpus_.val.size() << " / "
       << corpus_.test.size() << " bytes train/val/test), " << tokenizer_->name() << " tokenizer, vocab "
       << tokenizer_->vocab_size() << ", seq " << cfg_.data.seq_len << " x batch " << cfg_.data.batch_size << "\n";
}

LMTrainer::~LMTrainer() = default;

std::string LMTrainer::checkpoint_prefix() const { return cfg_.out_dir + "/checkpoint"; }

void LMTrainer::log_metrics(const nlohmann::json& row) {
  std::ofstream(cfg_.out_dir + "/metrics.jsonl", std::ios::app) << row.dump() << "\n";
}

void LMTrainer::save() {
  CheckpointState st;
  st.config = cfg_.source;
  st.config["model"] = cfg_.model.to_json();
  st.step = step_;
  st.rng = {{"batcher_offset", batcher_->offset()}, {"dropout_offset", model_->dropout_generator().offset()}};
  st.extra = {{"train_seconds", train_seconds_}, {"tokenizer", tokenizer_->name()}};
  save_checkpoint(checkpoint_prefix(), *model_, opt_.get(), st);
}

EvalResult LMTrainer::evaluate(const std::string& split, int64_t max_tokens) {
  const std::vector<int64_t>& all = split == "test" ? test_tokens_ : val_tokens_;
  std::vector<int64_t> toks = all;
  if (max_tokens > 0 && int64_t(toks.size()) > max_tokens + 1) toks.resize(size_t(max_tokens + 1));
  LMEvalBatches batches(toks, cfg_.data.seq_len, cfg_.data.batch_size);
  NoGradGuard ng;
  model_->eval();
  double total = 0;
  int64_t count = 0;
  LMBatch b;
  while (batches.next(b)) {
    int64_t n = b.target.numel();
    total += model_->loss(b.input, b.target).item<double>() * double(n);
    count += n;
  }
  model_->train();
  EvalResult r;
  r.tokens = count;
  r.loss = count ? total / double(count) : 0;
  r.bpc = bits_per_character(r.loss);
  return r;
}

std::vector<double> LMTrainer::run(int64_t stop_at) {
  const int64_t end = stop_at >= 0 ? std::min(stop_at, cfg_.steps) : cfg_.steps;
  const bool tty = isatty(fileno(stdout)) && &log_ == &std::cout;
  const int64_t tokens_per_step = cfg_.data.seq_len * cfg_.data.batch_size;
  std::vector<double> losses;
  model_->train();
  auto t_run = Clock::now();
  double window_s = 0, ema = NAN;
  int64_t window_tokens = 0;
  while (step_ < end) {
    if (cfg_.time_limit_s > 0 && train_seconds_ >= cfg_.time_limit_s) {
      log_ << "\ntime limit of " << cfg_.time_limit_s << " s reached at step " << step_ << "\n";
      break;
    }
    auto t0 = Clock::now();
    LMBatch batch = batcher_->next();
    opt_->set_lr(schedule_.at(step_));
    opt_->zero_grad();
    Tensor loss = model_->loss(batch.input, batch.target);
    const double lv = loss.item<double>();
    if (!std::isfinite(lv))
      fail<ValueError>("train", "the loss became ", lv, " at step ", step_,
                       "; lower optim.lr or enable optim.clip (the last checkpoint is intact)");
    loss.backward();
    if (cfg_.optim.clip > 0) {
      double norm = clip_grad_norm(opt_->params(), cfg_.optim.clip);
      if (!std::isfinite(norm)) fail<ValueError>("train", "the gradient norm became ", norm, " at step ", step_);
    }
    opt_->step();
    ++step_;
    losses.push_back(lv);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    train_seconds_ += dt;
    window_s += dt;
    window_tokens += tokens_per_step;
    ema = std::isnan(ema) ? lv : 0.9 * ema + 0.1 * lv;

    // Periodic work depends on the step only (not on where this call stops), so an interrupted and
    // resumed run logs and evaluates exactly where an uninterrupted one does.
    const bool eval_now = step_ % cfg_.eval_interval == 0 || step_ == cfg_.steps;
    if (step_ % cfg_.log_interval == 0 || eval_now) {
      double tps = window_s > 0 ? double(window_tokens) / window_s : 0;
      double eta = tps > 0 ? double((end - step_) * tokens_per_step) / tps : NAN;
      std::ostringstream line;
      line << "step " << std::setw(6) << step_ << "/" << end << "  loss " << std::fixed << std::setprecision(4) << ema
           << "  lr " << std::scientific << std::setprecision(2) << opt_->lr() << std::fixed << "  "
           << std::setprecision(0) << tps << " tok/s  ETA " << format_duration(eta);
      if (tty) {
        const int width = 24;
        int filled = int(double(width) * double(step_) / double(end));
        log_ << "\r[" << std::string(size_t(filled), '#') << std::string(size_t(width - filled), '.') << "] "
             << line.str() << std::flush;
      } else {
        log_ << line.str() << "\n" << std::flush;
      }
      log_metrics({{"step", step_}, {"train_loss", lv}, {"train_loss_ema", ema}, {"lr", opt_->lr()},
                   {"tokens_per_s", tps}, {"elapsed_s", train_seconds_}});
      window_s = 0;
      window_tokens = 0;
    }
    if (eval_now) {
      EvalResult r = evaluate("val", cfg_.eval_tokens);
      if (tty) log_ << "\n";
      log_ << "  eval step " << step_ << ": val loss " << std::setprecision(4) << r.loss << ", val bpc " << r.bpc
           << " (" << r.tokens << " tokens)\n" << std::flush;
      log_metrics({{"step", step_}, {"val_loss", r.loss}, {"val_bpc", r.bpc}, {"elapsed_s", train_seconds_}});
    }
    if (step_ % cfg_.checkpoint_interval == 0) save();
  }
  if (tty) log_ << "\n";
  save();
  (void)t_run;
  return losses;
}

}  // namespace attnlab

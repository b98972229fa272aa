#include "tools/lm_trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "core/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/functional.h"
#include "optim/adam.h"
#include "optim/sgd.h"

namespace attnlab {

// What the non-finite stops suggest: anomaly mode names the first op that made the value.
constexpr const char* kAnomalyHint =
    "To find the op that made it, rerun with --detect-anomaly (add --resume to start from the last checkpoint)";

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

LMTrainer::LMTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite) : cfg_(cfg), log_(log) {
  const std::string prefix = checkpoint_prefix();
  // A resume without a checkpoint must not fall back to a fresh start: that overwrites the run.
  if (resume && !fs::exists(prefix + ".json"))
    fail<IOError>("train --resume", "there is no checkpoint to resume from (", prefix,
                  ".json is missing); run without --resume to start a new run in ", cfg_.out_dir);
  // Nor may a fresh start silently replace a run that is there.
  const std::string metrics = run_file(kRunMetricsFile);
  const bool has_run = fs::exists(prefix + ".json") || (fs::exists(metrics) && fs::file_size(metrics) > 0);
  if (!resume && has_run && !overwrite)
    fail<IOError>("train", cfg_.out_dir, " already holds a run (", prefix, ".json or ", kRunMetricsFile,
                  "); continue it with --resume, choose another --out, or pass --overwrite to replace it");
  // The data: a corpus split, a tokenizer (the checkpoint's when resuming: ids depend on it), token streams.
  corpus_ = load_corpus(cfg_.data.corpus);
  if (resume) {
    tokenizer_ = load_checkpoint_tokenizer(prefix);
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
  opt_ = make_optimizer(cfg_.optim, model_->parameters());
  schedule_ = LRSchedule::from_json(cfg_.optim.schedule, cfg_.optim.lr, cfg_.steps);

  if (resume) {
    CheckpointState st = load_checkpoint(prefix, *model_, opt_.get());
    step_ = st.step;
    try {
      batcher_->set_offset(st.rng.at("batcher_offset").get<uint64_t>());
      model_->dropout_generator().set_offset(st.rng.at("dropout_offset").get<uint64_t>());
      train_seconds_ = st.extra.value("train_seconds", 0.0);
      metrics_rows_ = st.extra.at("metrics_rows").get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      fail<IOError>("train", "checkpoint ", prefix, ".json lacks the RNG offsets or the metrics row count needed ",
                    "to resume exactly (", e.what(), ")");
    }
    // Rows after the checkpoint belong to the interrupted run (this run logs them again).
    metrics_rows_ = cut_metrics_to_checkpoint(run_file(kRunMetricsFile), metrics_rows_, step_);
    log_ << "resumed from " << prefix << " at step " << step_ << "\n";
  } else {
    // Nothing is written before everything above has been validated. Replacing a run: its commit
    // record goes first, so the directory never pairs the old checkpoint with the new metrics.
    if (has_run) fs::remove(prefix + ".json");
    fs::create_directories(cfg_.out_dir);
    write_file_atomic(run_file(kRunTokenizerFile), tokenizer_to_json(*tokenizer_).dump(1) + "\n", "train");
    write_file_atomic(run_file(kRunMetricsFile), "", "train");
    write_file_atomic(run_file("config.json"), cfg_.source.dump(2) + "\n", "train");
  }
  log_ << "model: causal LM, " << cfg_.model.n_layers << " layers, d=" << cfg_.model.d_model << ", "
       << cfg_.model.n_heads << " heads, attention " << cfg_.model.attention.dump() << ", " << model_->num_parameters()
       << " parameters\n"
       << "data: " << corpus_.name << " (" << corpus_.train.size() << " / " << corpus_.val.size() << " / "
       << corpus_.test.size() << " bytes train/val/test), " << tokenizer_->name() << " tokenizer, vocab "
       << tokenizer_->vocab_size() << ", seq " << cfg_.data.seq_len << " x batch " << cfg_.data.batch_size << "\n";
}

LMTrainer::~LMTrainer() = default;

std::string LMTrainer::checkpoint_prefix() const { return run_checkpoint_prefix(cfg_.out_dir); }

void LMTrainer::log_metrics(const nlohmann::json& row) {
  const std::string path = run_file(kRunMetricsFile);
  std::ofstream out(path, std::ios::app | std::ios::binary);
  out << row.dump() << "\n";
  out.close();
  // A row the file lacks would make the next checkpoint's row count wrong.
  if (!out) fail<IOError>("train", "appending a row to ", path, " failed");
  ++metrics_rows_;
}

void LMTrainer::save() {
  CheckpointState st;
  st.config = cfg_.source;
  st.config["model"] = cfg_.model.to_json();
  st.step = step_;
  st.rng = {{"batcher_offset", batcher_->offset()}, {"dropout_offset", model_->dropout_generator().offset()}};
  st.extra = {{"train_seconds", train_seconds_}, {"tokenizer", tokenizer_->name()}, {"metrics_rows", metrics_rows_}};
  st.attached = {{"tokenizer", kRunTokenizerFile}};
  sync_file(run_file(kRunMetricsFile));  // the rows the checkpoint commits to are on disk before it
  save_checkpoint(checkpoint_prefix(), *model_, opt_.get(), st);
}

EvalResult LMTrainer::evaluate(const std::string& split, int64_t max_tokens) {
  EvalResult r = evaluate_lm(*model_, split == "test" ? test_tokens_ : val_tokens_, cfg_.data, max_tokens);
  model_->train();
  return r;
}

nlohmann::json attention_stats(const CausalLM& model) {
  nlohmann::json out = nlohmann::json::object();
  const auto& blocks = model.trunk->blocks;
  for (size_t l = 0; l < blocks.size(); ++l)
    for (auto& [key, values] : blocks[l]->attn->method->stats()) {
      nlohmann::json& rows = out["attn." + key];
      if (rows.is_null()) rows = nlohmann::json::array();
      while (rows.size() < l) rows.push_back(nullptr);  // a layer whose method reports nothing
      rows.push_back(values);
    }
  return out;
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
                       "; lower optim.lr or enable optim.clip (the last checkpoint is intact). ", kAnomalyHint);
    loss.backward();
    if (cfg_.optim.clip > 0) {
      double norm = clip_grad_norm(opt_->params(), cfg_.optim.clip);
      if (!std::isfinite(norm))
        fail<ValueError>("train", "the gradient norm became ", norm, " at step ", step_, ". ", kAnomalyHint);
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
      nlohmann::json row{{"step", step_},          {"train_loss", lv},         {"train_loss_ema", ema},
                         {"lr", opt_->lr()},       {"tokens_per_s", tps},     {"elapsed_s", train_seconds_}};
      const nlohmann::json attn = attention_stats(*model_);  // (items() of a temporary would dangle)
      for (auto& [key, per_layer] : attn.items()) row[key] = per_layer;
      log_metrics(row);
      window_s = 0;
      window_tokens = 0;
    }
    if (eval_now) {
      EvalResult r = evaluate("val", cfg_.eval_tokens);
      if (tty) log_ << "\n";
      log_ << "  eval step " << step_ << ": val loss " << std::setprecision(4) << r.loss << ", val bpc " << r.bpc
           << " (" << r.tokens << " tokens)\n";
      const nlohmann::json attn = attention_stats(*model_);
      for (auto& [key, per_layer] : attn.items()) {
        std::ostringstream line;  // (its own stream: the log's number format stays as it was)
        line << "    " << key << " (layer: per head):" << std::fixed << std::setprecision(2);
        for (size_t l = 0; l < per_layer.size(); ++l) {
          line << "  L" << l << " ";
          for (size_t h = 0; h < per_layer[l].size(); ++h) line << (h ? "/" : "") << per_layer[l][h].get<double>();
        }
        log_ << line.str() << "\n";
      }
      log_ << std::flush;
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

#include "tools/trainer_core.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "attention/sinkformer.h"
#include "autograd/grad_mode.h"
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

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& c,
                                          const std::vector<std::pair<std::string, Tensor>>& named_params) {
  std::vector<Tensor> params;
  for (const auto& [name, p] : named_params) params.push_back(p);
  std::unique_ptr<Optimizer> opt = make_optimizer(c, params);
  opt->set_decay_mask(no_decay_mask(named_params, c.no_decay));
  return opt;
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

TrainerCore::TrainerCore(const TrainConfig& cfg, std::ostream& log, bool resume, bool overwrite)
    : cfg_(cfg), log_(log), resume_(resume) {
  const std::string prefix = checkpoint_prefix();
  // A resume without a checkpoint must not fall back to a fresh start: that overwrites the run.
  if (resume && !fs::exists(prefix + ".json"))
    fail<IOError>("train --resume", "there is no checkpoint to resume from (", prefix,
                  ".json is missing); run without --resume to start a new run in ", cfg_.out_dir);
  // Nor may a fresh start silently replace a run that is there.
  const std::string metrics = run_file(kRunMetricsFile);
  has_run_ = fs::exists(prefix + ".json") || (fs::exists(metrics) && fs::file_size(metrics) > 0);
  if (!resume && has_run_ && !overwrite)
    fail<IOError>("train", cfg_.out_dir, " already holds a run (", prefix, ".json or ", kRunMetricsFile,
                  "); continue it with --resume, choose another --out, or pass --overwrite to replace it");
}

TrainerCore::~TrainerCore() = default;

std::string TrainerCore::checkpoint_prefix() const { return run_checkpoint_prefix(cfg_.out_dir); }

void TrainerCore::start(Module& model, const TransformerTrunk& trunk, Generator& dropout,
                        const std::map<std::string, std::string>& files,
                        const std::map<std::string, std::string>& attached) {
  model_ = &model;
  trunk_ = &trunk;
  dropout_ = &dropout;
  attached_ = attached;
  opt_ = make_optimizer(cfg_.optim, model.named_parameters());
  schedule_ = LRSchedule::from_json(cfg_.optim.schedule, cfg_.optim.lr, cfg_.steps);
  const std::string prefix = checkpoint_prefix();
  if (resume_) {
    CheckpointState st = load_checkpoint(prefix, model, opt_.get());
    step_ = st.step;
    try {
      set_data_offset(st.rng.at("batcher_offset").get<uint64_t>());
      dropout.set_offset(st.rng.at("dropout_offset").get<uint64_t>());
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
    if (has_run_) fs::remove(prefix + ".json");
    fs::create_directories(cfg_.out_dir);
    for (const auto& [name, content] : files) write_file_atomic(run_file(name.c_str()), content, "train");
    write_file_atomic(run_file(kRunMetricsFile), "", "train");
    write_file_atomic(run_file("config.json"), cfg_.source.dump(2) + "\n", "train");
  }
  int64_t no_decay = 0;
  for (size_t i = 0; i < opt_->params().size(); ++i) no_decay += !opt_->decays(i);
  if (cfg_.optim.weight_decay > 0)
    log_ << "optimizer: " << opt_->name() << ", weight decay " << cfg_.optim.weight_decay << " on "
         << opt_->params().size() - size_t(no_decay) << " of " << opt_->params().size() << " parameter tensors\n";
}

void TrainerCore::log_metrics(const nlohmann::json& row) {
  const std::string path = run_file(kRunMetricsFile);
  std::ofstream out(path, std::ios::app | std::ios::binary);
  out << row.dump() << "\n";
  out.close();
  // A row the file lacks would make the next checkpoint's row count wrong.
  if (!out) fail<IOError>("train", "appending a row to ", path, " failed");
  ++metrics_rows_;
}

void TrainerCore::save() {
  CheckpointState st;
  st.config = cfg_.source;
  st.config["model"] = cfg_.model.to_json();
  st.step = step_;
  st.rng = {{"batcher_offset", data_offset()}, {"dropout_offset", dropout_->offset()}};
  st.extra = checkpoint_extra();
  st.extra["train_seconds"] = train_seconds_;
  st.extra["metrics_rows"] = metrics_rows_;
  st.attached = attached_;
  sync_file(run_file(kRunMetricsFile));  // the rows the checkpoint commits to are on disk before it
  save_checkpoint(checkpoint_prefix(), *model_, opt_.get(), st);
}

nlohmann::json attention_stats(const TransformerTrunk& trunk) {
  nlohmann::json out = nlohmann::json::object();
  const auto& blocks = trunk.blocks;
  for (size_t l = 0; l < blocks.size(); ++l)
    for (auto& [key, values] : blocks[l]->attn->method->stats()) {
      nlohmann::json& rows = out["attn." + key];
      if (rows.is_null()) rows = nlohmann::json::array();
      while (rows.size() < l) rows.push_back(nullptr);  // a layer whose method reports nothing
      rows.push_back(values);
    }
  return out;
}

nlohmann::json attention_colsum_deviation(const TransformerTrunk& trunk, const std::function<void()>& forward) {
  const auto& blocks = trunk.blocks;
  for (const auto& b : blocks) {
    b->attn->method->record_internals = true;
    b->attn->method->internals.clear();
  }
  // The flags go back off whatever happens: training must not keep n×n weights per layer.
  struct Reset {
    const TransformerTrunk& t;
    ~Reset() {
      for (const auto& b : t.blocks) {
        b->attn->method->record_internals = false;
        b->attn->method->internals.clear();
      }
    }
  } reset{trunk};
  {
    NoGradGuard ng;
    forward();
  }
  nlohmann::json rows = nlohmann::json::array();
  bool any = false;
  for (const auto& b : blocks) {
    const auto& internals = b->attn->method->internals;
    auto it = internals.find("attn");
    if (it == internals.end() || it->second.dim() != 4) {
      rows.push_back(nullptr);
      continue;
    }
    Tensor dev = mean(column_sum_deviation(it->second).to(DType::f64), 0);  // [H]
    std::vector<double> heads(size_t(dev.numel()));
    for (int64_t h = 0; h < dev.numel(); ++h) heads[size_t(h)] = dev.data<double>()[h];
    rows.push_back(heads);
    any = true;
  }
  nlohmann::json out = nlohmann::json::object();
  if (any) out["attn.colsum_dev"] = rows;
  return out;
}

nlohmann::json TrainerCore::attention_numbers() {
  nlohmann::json out = attention_stats(*trunk_);  // before the probe, which replaces the last forward's stats
  const nlohmann::json dev = attention_colsum_deviation(*trunk_, [&] { probe_forward(); });
  for (auto& [key, per_layer] : dev.items()) out[key] = per_layer;
  model_->train();
  return out;
}

std::vector<double> TrainerCore::run(int64_t stop_at) {
  const int64_t end = stop_at >= 0 ? std::min(stop_at, cfg_.steps) : cfg_.steps;
  const bool tty = isatty(fileno(stdout)) && &log_ == &std::cout;
  const int64_t items = items_per_step();
  std::vector<double> losses;
  model_->train();
  double window_s = 0, ema = NAN;
  int64_t window_items = 0;
  while (step_ < end) {
    if (cfg_.time_limit_s > 0 && train_seconds_ >= cfg_.time_limit_s) {
      log_ << "\ntime limit of " << cfg_.time_limit_s << " s reached at step " << step_ << "\n";
      break;
    }
    auto t0 = Clock::now();
    opt_->set_lr(schedule_.at(step_));
    opt_->zero_grad();
    Tensor loss = train_loss();
    const double lv = loss.item<double>();
    if (!std::isfinite(lv))
      fail<ValueError>("train", "the loss became ", lv, " at step ", step_,
                       "; lower optim.lr or enable optim.clip (the last checkpoint is intact). ", kAnomalyHint);
    // The attention methods' auxiliary losses (Routing's commitment loss) join the gradient; the
    // logged loss stays the task's, comparable across methods, and the auxiliary one is logged apart.
    const Tensor aux = trunk_->aux_loss();
    const double av = aux.defined() ? aux.item<double>() : 0.0;
    if (aux.defined()) loss = add(loss, aux);
    loss.backward();
    if (cfg_.optim.clip > 0) {
      double norm = clip_grad_norm(opt_->params(), cfg_.optim.clip);
      if (!std::isfinite(norm))
        fail<ValueError>("train", "the gradient norm became ", norm, " at step ", step_, ". ", kAnomalyHint);
    }
    opt_->step();
    trunk_->after_step();  // non-gradient updates (Routing's EMA centroids): once per step, never in eval
    ++step_;
    losses.push_back(lv);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    train_seconds_ += dt;
    window_s += dt;
    window_items += items;
    ema = std::isnan(ema) ? lv : 0.9 * ema + 0.1 * lv;

    // Periodic work depends on the step only (not on where this call stops), so an interrupted and
    // resumed run logs and evaluates exactly where an uninterrupted one does.
    const bool eval_now = step_ % cfg_.eval_interval == 0 || step_ == cfg_.steps;
    if (step_ % cfg_.log_interval == 0 || eval_now) {
      double rate = window_s > 0 ? double(window_items) / window_s : 0;
      double eta = rate > 0 ? double((end - step_) * items) / rate : NAN;
      std::ostringstream line;
      line << "step " << std::setw(6) << step_ << "/" << end << "  loss " << std::fixed << std::setprecision(4) << ema
           << "  lr " << std::scientific << std::setprecision(2) << opt_->lr() << std::fixed << "  "
           << std::setprecision(0) << rate << " " << item_name() << "/s  ETA " << format_duration(eta);
      if (aux.defined()) line << "  aux " << std::scientific << std::setprecision(2) << av;
      if (tty) {
        const int width = 24;
        int filled = int(double(width) * double(step_) / double(end));
        log_ << "\r[" << std::string(size_t(filled), '#') << std::string(size_t(width - filled), '.') << "] "
             << line.str() << std::flush;
      } else {
        log_ << line.str() << "\n" << std::flush;
      }
      const std::string rate_key = item_name() == std::string("tok") ? "tokens_per_s" : "images_per_s";
      nlohmann::json row{{"step", step_},    {"train_loss", lv}, {"train_loss_ema", ema},
                         {"lr", opt_->lr()}, {rate_key, rate},   {"elapsed_s", train_seconds_}};
      if (aux.defined()) row["train_aux_loss"] = av;
      const nlohmann::json attn = attention_numbers();  // (items() of a temporary would dangle)
      for (auto& [key, per_layer] : attn.items()) row[key] = per_layer;
      log_metrics(row);
      window_s = 0;
      window_items = 0;
    }
    if (eval_now) {
      Evaluation r = evaluate_split("val", cfg_.eval_tokens);
      model_->train();
      if (tty) log_ << "\n";
      log_ << "  eval step " << step_ << ": val " << r.summary << "\n";
      const nlohmann::json attn = attention_numbers();
      for (auto& [key, per_layer] : attn.items()) {
        std::ostringstream line;  // (its own stream: the log's number format stays as it was)
        line << "    " << key << " (layer: per head):" << std::fixed << std::setprecision(2);
        for (size_t l = 0; l < per_layer.size(); ++l) {
          if (!per_layer[l].is_array()) continue;
          line << "  L" << l << " ";
          for (size_t h = 0; h < per_layer[l].size(); ++h) line << (h ? "/" : "") << per_layer[l][h].get<double>();
        }
        log_ << line.str() << "\n";
      }
      log_ << std::flush;
      nlohmann::json row{{"step", step_}};
      for (auto& [key, v] : r.fields.items()) row["val_" + key] = v;
      row["elapsed_s"] = train_seconds_;
      log_metrics(row);
    }
    if (step_ % cfg_.checkpoint_interval == 0) save();
  }
  if (tty) log_ << "\n";
  save();
  return losses;
}

}  // namespace attnlab

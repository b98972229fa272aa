// The optimizer interface: one update per step() over a fixed list of parameters, a learning rate
// that schedules can set, and a state (per-parameter slot tensors + step count + hyper-parameters)
// that checkpoints save and restore so a resumed run continues exactly.
#pragma once
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace attnlab {

// Step counts beyond 2^53 are absurd for training, are no longer exact as the double exponent of
// Adam's bias correction, and near INT64_MAX would overflow on the next step: a saved step outside
// [0, 2^53] is corrupt, and step() refuses to count past the bound.
inline constexpr int64_t kMaxOptimizerStep = int64_t(1) << 53;

// The "step" of an optimizer's saved scalars, validated (ValueError naming op otherwise).
inline int64_t saved_step(const nlohmann::json& scalars, const char* op) {
  const nlohmann::json& s = scalars.at("step");
  if (!s.is_number_integer() || (s.is_number_unsigned() && s.get<uint64_t>() > uint64_t(kMaxOptimizerStep)) ||
      s.get<int64_t>() < 0 || s.get<int64_t>() > kMaxOptimizerStep)
    fail<ValueError>(op, "step must be an integer in [0, 2^53], got ", s.dump());
  return s.get<int64_t>();
}

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step() = 0;
  virtual std::string name() const = 0;
  virtual double lr() const = 0;
  virtual void set_lr(double lr) = 0;
  void zero_grad() {
    for (Tensor& p : params_) p.zero_grad();
  }
  const std::vector<Tensor>& params() const { return params_; }

  // Parameter groups: which parameters weight decay applies to (all by default). Biases, norms and
  // embeddings usually go without (see no_decay_mask). Saved and restored with the state.
  void set_decay_mask(std::vector<bool> decays);
  bool decays(size_t i) const { return decay_.empty() || decay_[i]; }

  // Slot tensors named "<param index>.<slot>" (e.g. "3.exp_avg"), and the scalars as JSON
  // ({"name": "adamw", "step": 120, "lr": ..., ...}).
  virtual StateDict state_tensors() const = 0;
  virtual nlohmann::json state_json() const = 0;
  // Restores both; throws ValueError if they do not fit these parameters (count, shapes, name).
  virtual void load_state(const StateDict& tensors, const nlohmann::json& scalars) = 0;

 protected:
  explicit Optimizer(std::vector<Tensor> params) : params_(std::move(params)) {}

  // The state records which parameters have slot tensors ("stateful_params": their indices), so that
  // load_state can refuse a state that lost a tensor instead of silently restarting its moments.
  static nlohmann::json stateful_params_json(const std::vector<Tensor>& first_slot);
  // Which parameters the saved state has slots for, after checking that `tensors` holds exactly
  // "<i>.<slot>" for each of them and every slot name: ValueError naming the missing or unexpected tensor.
  std::vector<bool> stateful_params(const char* op, const StateDict& tensors, const nlohmann::json& scalars,
                                    std::initializer_list<const char*> slots) const;
  // The mask as saved ("no_decay": indices of the parameters without decay; absent when none), and
  // read back (validated; absent: every parameter decays).
  void add_decay_mask_json(nlohmann::json& scalars) const;
  std::vector<bool> decay_mask_from(const char* op, const nlohmann::json& scalars) const;

  std::vector<Tensor> params_;
  std::vector<bool> decay_;  // empty: all decay
};

// The mask that leaves out of weight decay every parameter whose name matches one of the glob
// patterns ('*' matches any run of characters, the whole name must match).
std::vector<bool> no_decay_mask(const std::vector<std::pair<std::string, Tensor>>& named,
                                const std::vector<std::string>& patterns);
bool glob_match(const std::string& pattern, const std::string& name);

}  // namespace attnlab

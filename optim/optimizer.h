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

  std::vector<Tensor> params_;
};

}  // namespace attnlab

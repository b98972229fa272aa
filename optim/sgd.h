// Stochastic gradient descent with optional heavy-ball or Nesterov momentum and L2 weight decay.
//
// Per parameter p with gradient g, each step() does (PyTorch's torch.optim.SGD, dampening 0):
//   g   <- g + weight_decay * p                 (L2 penalty folded into the gradient)
//   buf <- g                        on the first step,
//   buf <- momentum * buf + g       afterwards  (only when momentum > 0)
//   d   <- g + momentum * buf       if nesterov, else buf (or g when momentum == 0)
//   p   <- p - lr * d
// Parameters whose gradient is undefined are skipped, and their momentum buffer is left as is.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "optim/optimizer.h"

namespace attnlab {

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;      // in [0, 1)
  bool nesterov = false;      // needs momentum > 0
  double weight_decay = 0.0;  // >= 0
};

class SGD : public Optimizer {
 public:
  // Throws ValueError on bad hyper-parameters or parameters (empty list, undefined, non-floating,
  // non-leaf, or the same tensor twice).
  SGD(std::vector<Tensor> params, SGDOptions options);

  // One update of every parameter that has a gradient; records nothing on the tape.
  // zero_grad() (from Optimizer) drops every gradient, so the next backward starts fresh ones.
  void step() override;
  std::string name() const override { return "sgd"; }

  double lr() const override { return options_.lr; }
  void set_lr(double lr) override;  // for learning-rate schedules; validated like the constructor's
  const SGDOptions& options() const { return options_; }
  int64_t steps() const { return steps_; }

  // Slots "<i>.momentum_buffer" for the parameters that have one (the live buffers, not copies:
  // serialise or clone them before the next step); scalars
  // {"name": "sgd", "step", "lr", "momentum", "nesterov", "weight_decay"}.
  StateDict state_tensors() const override;
  nlohmann::json state_json() const override;
  void load_state(const StateDict& tensors, const nlohmann::json& scalars) override;

 private:
  std::vector<Tensor> momentum_buffers_;  // one per parameter, undefined until its first update
  SGDOptions options_;
  int64_t steps_ = 0;
};

}  // namespace attnlab

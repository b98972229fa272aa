// Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), PyTorch's semantics:
//   t <- t + 1
//   g <- g + wd p                       (Adam: L2 penalty folded into the gradient)
//   p <- p - lr wd p                    (AdamW: decoupled decay, applied instead of the line above)
//   m <- β1 m + (1 - β1) g;   v <- β2 v + (1 - β2) g²
//   p <- p - lr (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)
#pragma once
#include "optim/optimizer.h"

namespace attnlab {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = false;  // true: AdamW
};

class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options);
  void step() override;
  std::string name() const override { return options_.decoupled ? "adamw" : "adam"; }
  double lr() const override { return options_.lr; }
  void set_lr(double lr) override;
  int64_t steps() const { return t_; }
  const AdamOptions& options() const { return options_; }

  StateDict state_tensors() const override;
  nlohmann::json state_json() const override;
  void load_state(const StateDict& tensors, const nlohmann::json& scalars) override;

 private:
  AdamOptions options_;
  std::vector<Tensor> m_, v_;  // first and second moments, allocated with the first step
  int64_t t_ = 0;
};

inline AdamOptions adamw_options(double lr, double weight_decay = 0.01) {
  AdamOptions o;
  o.lr = lr;
  o.weight_decay = weight_decay;
  o.decoupled = true;
  return o;
}

}  // namespace attnlab

// Learning-rate schedules and global-norm gradient clipping.
#pragma once
#include <nlohmann/json.hpp>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

struct LRSchedule {
  std::string kind = "constant";  // constant | cosine (linear warmup, then cosine decay to min_lr)
  double base_lr = 1e-3;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double at(int64_t step) const;  // the rate for 0-based step `step`
  // j: null (constant), "constant" | "cosine", or {"kind", "warmup_steps", "min_lr"}; every key
  // checked (core/config.h), path naming the section in errors.
  static LRSchedule from_json(const nlohmann::json& j, double base_lr, int64_t total_steps,
                              const std::string& path = "optim.schedule");
};

// Scales every gradient by max_norm / norm when the global L2 norm exceeds max_norm; returns the
// norm before clipping (non-finite when a gradient is: the caller decides what to do).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);
double grad_norm(const std::vector<Tensor>& params);

}  // namespace attnlab

#include "optim/schedule.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "core/json_fields.h"

namespace attnlab {

double LRSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return base_lr * double(step + 1) / double(warmup_steps);
  if (kind == "constant") return base_lr;
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, double(step - warmup_steps) / span);
  return min_lr + 0.5 * (base_lr - min_lr) * (1 + std::cos(M_PI * progress));
}

LRSchedule LRSchedule::from_json(const nlohmann::json& j, double base_lr, int64_t total_steps) {
  LRSchedule s;
  s.base_lr = base_lr;
  s.total_steps = total_steps;
  if (j.is_null()) return s;
  if (j.is_string()) {
    s.kind = j.get<std::string>();
  } else {
    require_integers(j, "schedule", {"warmup_steps"});
    try {
      s.kind = j.value("kind", s.kind);
      s.warmup_steps = j.value("warmup_steps", s.warmup_steps);
      s.min_lr = j.value("min_lr", s.min_lr);
    } catch (const nlohmann::json::exception& e) {
      fail<ValueError>("schedule", "wrong value type: ", e.what());
    }
  }
  if (s.kind != "constant" && s.kind != "cosine")
    fail<ValueError>("schedule", "kind must be 'constant' or 'cosine', got '", s.kind, "'");
  if (s.warmup_steps < 0 || s.min_lr < 0 || s.min_lr > base_lr)
    fail<ValueError>("schedule", "needs warmup_steps >= 0 and 0 <= min_lr <= lr, got warmup ", s.warmup_steps,
                     ", min_lr ", s.min_lr);
  return s;
}

double grad_norm(const std::vector<Tensor>& params) {
  double sq = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor gc = g.contiguous();
    const int64_t n = gc.numel();
    dispatch_floating(gc.dtype(), "grad_norm", [&]<class T>() {
      const T* d = gc.data<T>();
      double local = 0;
#pragma omp parallel for reduction(+ : local) if (n >= (1 << 15)) schedule(static)
      for (int64_t i = 0; i < n; ++i) local += double(d[i]) * double(d[i]);
      sq += local;
    });
  }
  return std::sqrt(sq);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  if (!(max_norm > 0)) fail<ValueError>("clip_grad_norm", "max_norm must be positive, got ", max_norm);
  const double norm = grad_norm(params);
  if (std::isfinite(norm) && norm > max_norm) {
    NoGradGuard ng;
    const double scale = max_norm / (norm + 1e-6);
    for (const Tensor& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

}  // namespace attnlab

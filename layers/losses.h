// Fenchel–Young losses of the entmax family (Blondel, Martins & Niculae 2020) and a classifier's loss
// chosen by config. For logits z, target y and p = α-entmax(z):
//
//   L(z, y) = H_α(p) + ⟨p − e_y, z⟩,   H_α(p) = (1 − Σ p^α) / (α(α − 1))   (Tsallis entropy),
//
// which is ≥ 0, 0 exactly when p = e_y, and has the gradient ∂L/∂z = p − e_y (no Jacobian of entmax
// is needed). α = 2 is the sparsemax loss; α → 1 would be cross-entropy. Derivation: docs/entmax.md.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"

namespace attnlab {

enum class Reduction { mean, sum, none };

struct FenchelYoungOptions {
  int64_t ignore_index = -100;            // targets equal to this contribute 0 (and no gradient)
  Reduction reduction = Reduction::mean;  // mean over the rows not ignored, sum, or one loss per row [N]
  int max_iter = 50;                      // entmax_bisect_loss: root-finder iterations at most
};

// logits [N, C] (f32/f64; −inf entries are masked classes), targets i64 [N].
Tensor sparsemax_loss(const Tensor& logits, const Tensor& targets, const FenchelYoungOptions& opts = {});
Tensor entmax15_loss(const Tensor& logits, const Tensor& targets, const FenchelYoungOptions& opts = {});
Tensor entmax_bisect_loss(const Tensor& logits, const Tensor& targets, double alpha,
                          const FenchelYoungOptions& opts = {});

// A classifier's loss as configured: "cross_entropy" (the default), "sparsemax", "entmax15", or an
// object {"type": ..., "alpha": α} where "entmax_bisect" needs α > 1 (any type may be an object).
struct ClassifierLoss {
  std::string type = "cross_entropy";
  double alpha = 1.5;  // entmax_bisect only

  static ClassifierLoss from_json(const nlohmann::json& j);  // validates; unknown types and keys are errors
  nlohmann::json to_json() const;
  // The mean loss over rows whose target is not ignore_index.
  Tensor operator()(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100) const;
};

}  // namespace attnlab

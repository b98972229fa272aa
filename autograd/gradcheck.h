// Float64 finite-difference gradient check. The function's output is projected on a fixed
// random direction r, and for every entry x_i of every floating input the analytic
// d<r, f>/dx_i from backward is compared with the central difference
// (<r, f(x + eps e_i)> - <r, f(x - eps e_i)>) / (2 eps).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
  uint64_t seed = 1234;  // seeds the projection direction
};

struct InputReport {
  int input = 0;
  bool checked = false;      // false for i64/b8 inputs
  int64_t worst_entry = -1;  // flat index of the entry with the largest error
  double analytic = 0, numeric = 0, abs_err = 0, rel_err = 0;
  bool ok = true;
};

struct GradcheckResult {
  bool ok = true;
  std::vector<InputReport> inputs;
  std::string report() const;  // one line per input
};

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn, std::vector<Tensor> inputs,
                          const GradcheckOptions& opts = {});

// The same check for a closure over existing f64 leaves that require grad (e.g. a module's
// parameters and its input): analytic gradients are read from their .grad, and each leaf is
// perturbed in place. Existing .grad values are cleared first.
GradcheckResult gradcheck_leaves(const std::function<Tensor()>& fn, const std::vector<Tensor>& leaves,
                                 const GradcheckOptions& opts = {});

}  // namespace attnlab

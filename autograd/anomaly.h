// Anomaly mode: what a user turns on when the loss turns NaN. While it is on, every op recorded on
// the tape checks its output right after its forward, and every node checks the input gradients its
// backward returns; the first non-finite value throws AnomalyError naming the op, forward or
// backward, the shapes, and the module path where the op was recorded ("blocks.1.attn.qkv").
// Forward: NaN anywhere, or ±Inf made from finite inputs (an -inf that came in, such as a mask's fill
// value, may flow on). Backward: any NaN or ±Inf. Off (the default) it costs record() and each
// backward step one relaxed atomic load.
#pragma once
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace attnlab {

class Node;

class AnomalyError : public Error {
 public:
  using Error::Error;
};

void set_anomaly_mode(bool on);
bool anomaly_mode();

// Turns anomaly mode on (or off) for a scope, restoring the previous setting after.
class AnomalyModeGuard {
 public:
  explicit AnomalyModeGuard(bool on = true);
  ~AnomalyModeGuard();
  AnomalyModeGuard(const AnomalyModeGuard&) = delete;
  AnomalyModeGuard& operator=(const AnomalyModeGuard&) = delete;

 private:
  bool saved_;
};

// Marks the module whose forward is running on this thread (layers call it on entry); ops recorded
// meanwhile remember its path. Pushes only while anomaly mode is on.
class ModuleScope {
 public:
  explicit ModuleScope(const std::string& path);
  ~ModuleScope();
  ModuleScope(const ModuleScope&) = delete;
  ModuleScope& operator=(const ModuleScope&) = delete;

 private:
  bool pushed_;
};
// The innermost running module's path, "" outside every module.
const std::string& current_module_path();

// Flat index of the first NaN or ±Inf of a floating tensor (any strides), or -1.
int64_t first_nonfinite(const Tensor& t);

// The checks themselves, called by record() and the engine while anomaly mode is on.
void check_forward_anomaly(const Node& node, const Tensor& out, const std::vector<Tensor>& inputs);
void check_backward_anomaly(const Node& node, const Tensor& grad_out, const std::vector<Tensor>& grads);

}  // namespace attnlab

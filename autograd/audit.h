// Gradient audit: walks the tape of a scalar float64 loss node by node in backward order and, for
// every node, compares the gradient its backward produced for each input with a central finite
// difference of the LOSS with respect to that input, as that node consumes it. The first node whose
// backward disagrees is the broken one (its upstream gradient was verified by the nodes before it).
// Method and output: docs/audit.md.
//
// The loss function must be re-runnable and deterministic (dropout off, no fresh noise), and close
// over the same leaves (parameters, inputs) on every call: nodes are identified by their creation
// index within one run, and a perturbed run swaps the perturbed tensor's storage through the
// RecordHook in autograd/node.h.
#pragma once
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

struct AuditOptions {
  int64_t entries = 6;  // entries checked per input tensor (half the largest |analytic|, half seeded-random); 0: all
  double eps = 1e-6;    // central-difference step
  double atol = 1e-6;   // an entry passes when |analytic - numeric| <= atol + rtol |numeric|
  double rtol = 1e-4;
  bool all = false;   // keep checking after the first disagreeing node
  uint64_t seed = 0;  // picks the random entries
};

// Forward value of a node's output: min/max over every element (±inf included), mean and norm
// over the finite ones.
struct ValueSummary {
  int64_t numel = 0;
  double min = 0, max = 0, mean = 0, norm = 0;
  int64_t nonfinite = 0;
};

struct AuditEntry {
  int64_t index = 0;  // flat row-major index into the input tensor
  double analytic = 0, numeric = 0, abs_err = 0, rel_err = 0;
  bool ok = true;
};

// One tensor a node reads: usually one input slot, two or more when the node reads the same tensor
// twice (mul(x, x)); then the analytic value is the sum over those slots.
struct AuditInput {
  std::vector<int> slots;
  std::string source;        // "#12 reshape" (the producing node) or "leaf trunk.tok.weight"
  int64_t source_node = -1;  // creation index of the producer; -1 for a leaf
  Shape shape;
  DType dtype = DType::f64;
  bool checked = false;
  std::string note;      // why not checked, or a remark (e.g. the backward returned no gradient)
  double grad_norm = 0;  // norm of the analytic gradient this node's backward produced
  std::vector<AuditEntry> entries;
  AuditEntry worst;  // the entry furthest past its tolerance
  bool ok = true;
};

struct AuditNode {
  int64_t index = 0;  // creation index within one forward run ("#index")
  int64_t step = 0;   // 1-based position in backward order
  std::string op, formula;
  std::vector<Shape> input_shapes;
  std::vector<DType> input_dtypes;
  Shape out_shape;
  DType out_dtype = DType::f64;
  ValueSummary value;              // of the forward output
  double grad_out_norm = 0;        // of the gradient the node received
  std::vector<AuditInput> inputs;  // one per distinct tensor read (non-differentiable ones included)
  std::string error;               // the backward threw, or returned the wrong number, shape or dtype of gradients
  bool ok = true;
};

struct AuditReport {
  std::string target;  // free text: what was audited
  AuditOptions options;
  double loss = 0;
  int64_t recorded = 0;          // nodes one forward run records
  int64_t reachable = 0;         // nodes in backward order
  int64_t executed = 0;          // nodes whose backward ran (the rest received no gradient)
  bool backward_failed = false;  // the backward stopped at a node (malformed gradient, or it threw)
  int64_t forward_runs = 0;      // forward evaluations spent on finite differences
  int64_t entries_checked = 0;
  double seconds = 0;
  std::vector<AuditNode> nodes;  // backward order; ends at the first failure unless options.all
  int64_t first_failure = -1;    // position in nodes, -1 when every node agrees
  int64_t failures = 0;
  int64_t unchecked = 0;  // nodes left out after the first failure
  bool ok() const { return failures == 0; }
  // Aligned, one line per node plus one per input; ansi: bold for the first failure.
  std::string text(bool ansi = false) const;
  nlohmann::json to_json() const;  // non-finite numbers are written as strings ("inf", "-inf", "nan")
};

// Audits the backward of `loss_fn` (see above). leaf_names labels leaves (parameters, inputs) in the
// report; unnamed leaves use their tensor's name(), else "leaf". Throws AutogradError when the loss
// is not a float64 scalar that requires grad, or the function does not record the same ops on
// every run.
AuditReport audit_gradients(const std::function<Tensor()>& loss_fn, const AuditOptions& opts = {},
                            const std::map<const TensorImpl*, std::string>& leaf_names = {},
                            const std::string& target = "");

}  // namespace attnlab

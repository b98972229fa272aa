// The one registry of differentiable ops. Every node on the tape points at an OpDef, and every
// OpDef carries its backward formula and gradcheck cases; tests/test_gradcheck_registry walks it.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

class Generator;

struct GradcheckCase {
  std::string label;  // e.g. "broadcast [3,1] x [1,4]", "non-contiguous (transposed) input"
  // Builds f64 inputs; floating inputs are checked, i64/b8 inputs are passed through.
  std::function<std::vector<Tensor>(Generator&)> make_inputs;
  std::function<Tensor(const std::vector<Tensor>&)> fn;
};

struct OpDef {
  std::string name;
  std::string formula;  // the backward in one line, as in a derivatives table
  std::vector<GradcheckCase> cases;
  // Unlisted OpDefs stay out of op_registry(): for test fixtures such as deliberately broken backwards.
  enum class Listing { listed, unlisted };
  OpDef(std::string op_name, std::string backward_formula, std::vector<GradcheckCase> gradcheck_cases,
        Listing listing = Listing::listed);
  OpDef(const OpDef&) = delete;
  OpDef& operator=(const OpDef&) = delete;
};

// All OpDefs linked into the program, in registration order.
const std::vector<const OpDef*>& op_registry();
const OpDef* find_op(const std::string& name);

}  // namespace attnlab

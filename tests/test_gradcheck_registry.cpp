// Walks the registry of differentiable ops: every op must have gradcheck cases, every case must
// pass a float64 finite-difference check, and must actually exercise its op.
#include <doctest/doctest.h>

#include <set>

#include "autograd/engine.h"
#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "autograd/registry.h"
#include "core/rng.h"

using namespace attnlab;

namespace {
bool graph_uses(const Tensor& out, const OpDef& op) {
  for (const auto& node : backward_order(out))
    if (&node->op() == &op) return true;
  return false;
}
}  // namespace

TEST_CASE("every registered op has a passing float64 gradcheck") {
  const auto& ops = op_registry();
  REQUIRE(ops.size() >= 30);
  std::set<std::string> names;
  int checked = 0;
  for (const OpDef* op : ops) {
    INFO("op ", op->name);
    CHECK_MESSAGE(names.insert(op->name).second, "op registered twice: ", op->name);
    CHECK_MESSAGE(!op->cases.empty(), "op '", op->name, "' has no gradcheck case");
    CHECK_MESSAGE(!op->formula.empty(), "op '", op->name, "' has no backward formula");
    for (size_t c = 0; c < op->cases.size(); ++c) {
      const GradcheckCase& gc = op->cases[c];
      INFO("case ", gc.label);
      Generator gen(100 + c, 3);
      std::vector<Tensor> inputs = gc.make_inputs(gen);
      // The case must really run through this op.
      std::vector<Tensor> probe;
      for (const Tensor& t : inputs) {
        Tensor d = t.detach();
        if (is_floating(d.dtype())) d.set_requires_grad(true);
        probe.push_back(d);
      }
      CHECK_MESSAGE(graph_uses(gc.fn(probe), *op), "case '", gc.label, "' does not exercise op '", op->name, "'");
      GradcheckResult r = gradcheck(gc.fn, inputs);
      CHECK_MESSAGE(r.ok, op->name, " / ", gc.label, ":\n", r.report());
      ++checked;
    }
  }
  MESSAGE(ops.size(), " ops, ", checked, " gradcheck cases");
}

TEST_CASE("gradcheck catches a wrong backward") {
  static const OpDef broken("test_broken_square", "dx = g x (deliberately missing the factor 2)",
                            {{"fixture", [](Generator& g) { return std::vector<Tensor>{randn({3}, DType::f64, &g)}; },
                              nullptr}},
                            OpDef::Listing::unlisted);
  auto fn = [](const std::vector<Tensor>& in) {
    Tensor x = in[0];
    Tensor out = x * x;
    Tensor y = out.detach();
    if (x.requires_grad())
      record(y, broken, {x}, [x](const Tensor& g, const std::vector<bool>&) { return std::vector<Tensor>{g * x}; });
    return y;
  };
  Generator gen(5);
  GradcheckResult r = gradcheck(fn, {randn({3}, DType::f64, &gen)});
  CHECK_FALSE(r.ok);
  CHECK(r.inputs[0].checked);
  CHECK(r.inputs[0].abs_err > 1e-3);
}

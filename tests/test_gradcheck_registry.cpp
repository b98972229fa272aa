// Walks the registry of differentiable ops: every op must have gradcheck cases, every case must
// pass a float64 finite-difference check, and must actually exercise its op.
#include <doctest/doctest.h>

#include <omp.h>

#include <map>
#include <set>

#include "autograd/engine.h"
#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "autograd/registry.h"
#include "core/cpu/loops.h"
#include "layers/transformer.h"
#include "core/rng.h"

using namespace attnlab;

namespace {
struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

// Every registered op and its number of gradcheck cases: removing an op, or one of its cases, must
// be a visible change to this list.
const std::map<std::string, size_t> kPinnedOps = {
    {"abs", 1},
    {"add", 4},
    {"block_sparse_attention", 3},
    {"clamp", 1},
    {"concat", 2},
    {"copy", 2},
    {"cross_entropy", 2},
    {"div", 4},
    {"dropout", 1},
    {"embedding", 1},
    {"entmax15", 4},
    {"entmax_attention", 6},
    {"entmax15_loss", 3},
    {"entmax_bisect", 8},
    {"entmax_bisect_loss", 3},
    {"exp", 3},
    {"expand", 1},
    {"flash_attention", 6},
    {"gather", 2},
    {"gelu", 2},
    {"graph_entmax_attention", 3},
    {"index_add", 1},
    {"index_select", 2},
    {"layer_norm", 2},
    {"linear", 3},
    {"local_attention", 3},
    {"log", 3},
    {"log_softmax", 2},
    {"logsumexp", 2},
    {"matmul", 4},
    {"max", 3},
    {"maximum", 1},
    {"min", 2},
    {"minimum", 1},
    {"mul", 4},
    {"neg", 3},
    {"permute", 2},
    {"pow", 4},
    {"pow_scalar", 2},
    {"relu", 2},
    {"reshape", 3},
    {"routing_attention", 3},
    {"routing_sort", 1},
    {"routing_unsort", 1},
    {"rsqrt", 3},
    {"scatter_add", 1},
    {"sigmoid", 3},
    {"sinkformer_attention", 6},
    {"sinkhorn_attention", 3},
    {"sinkhorn_balance", 3},
    {"slice", 3},
    {"softmax", 2},
    {"sparsemax", 4},
    {"sparsemax_loss", 3},
    {"sparsefinder_hinge", 2},
    {"sqrt", 3},
    {"sub", 4},
    {"sum", 4},
    {"tanh", 3},
    {"var", 2},
    {"where", 2}
};

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
      // Again through every parallel branch (grain 0), on three threads so that splits are uneven.
      {
        cpu::ScopedParallelGrain forced(0);
        ThreadCount three(3);
        GradcheckResult rp = gradcheck(gc.fn, inputs);
        CHECK_MESSAGE(rp.ok, op->name, " / ", gc.label, " (parallel branches forced):\n", rp.report());
      }
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

TEST_CASE("the registry holds exactly the pinned ops, each with its pinned number of cases") {
  std::map<std::string, size_t> actual;
  for (const OpDef* op : op_registry()) actual[op->name] = op->cases.size();
  std::string table;
  for (const auto& [name, n] : actual) table += "    {\"" + name + "\", " + std::to_string(n) + "},\n";
  CHECK_MESSAGE(actual == kPinnedOps, "the registry is now:\n", table);
}

TEST_CASE("a training step's tape holds registered ops only") {
  for (const char* type : {"softmax", "local", "routing", "sinkhorn"})
    for (const char* impl : {"fused", "composite"}) {
      INFO("attention ", type, " ", impl);
      ModelConfig c{.vocab_size = 13, .d_model = 8, .n_layers = 2, .n_heads = 2, .d_ff = 16, .max_len = 8,
                    .dropout = 0.1, .attention = {{"type", type}, {"impl", impl}}};
      if (std::string(type) == "local") c.attention["block"] = 3;
      if (std::string(type) == "routing") c.attention.update({{"clusters", 2}, {"local_heads", 1}, {"local_block", 3}});
      if (std::string(type) == "sinkhorn") c.attention.update({{"block", 3}, {"max_blocks", 3}});
      CausalLM lm(c);
      std::vector<double> v;
      for (int i = 0; i < 16; ++i) v.push_back(double((i * 5) % 13));
      Tensor ids = from_vector(v, {2, 8}, DType::i64);
      Tensor loss = lm.loss(ids, ids);
      if (Tensor aux = lm.trunk->aux_loss(); aux.defined()) loss = add(loss, aux);  // Routing's commitment loss
      std::set<std::string> seen;
      for (const auto& node : backward_order(loss)) {
        CHECK_MESSAGE(find_op(node->name()) == &node->op(), "op '", node->name(), "' on the tape is not registered");
        seen.insert(node->name());
      }
      CHECK(seen.count("cross_entropy") == 1);
      CHECK(seen.count("linear") == 1);
      if (std::string(type) == "sinkhorn" && std::string(impl) == "fused") {
        CHECK(seen.count("sinkhorn_balance") == 1);
        CHECK(seen.count("sinkhorn_attention") == 1);
      }
    }
}

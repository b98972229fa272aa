// The gradient audit (autograd/audit.h) and `attnlab audit` (tools/audit_targets.h): deliberately
// broken backwards placed in the middle of a graph must be named as the first disagreement, and
// every layer and model must pass.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "attention/attention.h"
#include "autograd/audit.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/rng.h"
#include "tools/audit_targets.h"

using namespace attnlab;
using nlohmann::json;

namespace {

// ---- deliberately broken ops (unlisted: they stay out of the registry) ---------------------------

// y = forward(x) with a hand-written (broken) backward(g, y) recorded under `def`.
using UnaryBackward = std::function<std::vector<Tensor>(const Tensor& g, const Tensor& y)>;
Tensor unary_fixture(const OpDef& def, const Tensor& x, Tensor (*forward)(const Tensor&),
                     const UnaryBackward& backward) {
  Tensor y;
  {
    NoGradGuard ng;
    y = forward(x);
  }
  if (needs_grad({x}))
    record(y, def, {x},
           [y0 = y.detach(), backward](const Tensor& g, const std::vector<bool>&) { return backward(g, y0); });
  return y;
}
Tensor softmax_last(const Tensor& x) { return softmax(x, -1); }
Tensor exp_op(const Tensor& x) { return exp(x); }
Tensor tanh_op(const Tensor& x) { return tanh(x); }

// tanh whose backward is off by a factor of 2.
const OpDef kHalfTanh("test_tanh_half_grad", "dx = g (1 - y^2) / 2 (deliberately wrong by a factor of 2)", {},
                      OpDef::Listing::unlisted);
Tensor tanh_half_grad(const Tensor& x) {
  return unary_fixture(kHalfTanh, x, tanh_op,
                       [](const Tensor& g, const Tensor& y) { return std::vector<Tensor>{g * (1.0 - y * y) * 0.5}; });
}

// softmax over the last dim whose backward drops the -Σ g y term.
const OpDef kSoftmaxNoSum("test_softmax_dropped_term", "dx = y g (deliberately missing - y sum(g y))", {},
                          OpDef::Listing::unlisted);
Tensor softmax_dropped_term(const Tensor& x) {
  return unary_fixture(kSoftmaxNoSum, x, softmax_last,
                       [](const Tensor& g, const Tensor& y) { return std::vector<Tensor>{g * y}; });
}

// a @ b for square matrices whose backward forgets a transpose: dA = g b instead of g bᵀ.
const OpDef kMatmulNoTranspose("test_matmul_missing_transpose", "dA = g B (deliberately not g Bᵀ), dB = Aᵀ g", {},
                               OpDef::Listing::unlisted);
Tensor matmul_missing_transpose(const Tensor& a, const Tensor& b) {
  Tensor y;
  {
    NoGradGuard ng;
    y = matmul(a, b);
  }
  if (needs_grad({a, b}))
    record(y, kMatmulNoTranspose, {a, b},
           [a0 = a.detach(), b0 = b.detach()](const Tensor& g, const std::vector<bool>&) {
             return std::vector<Tensor>{matmul(g, b0), matmul(a0.t(), g)};
           });
  return y;
}

// exp whose backward returns a gradient of the wrong shape.
const OpDef kBadShape("test_exp_bad_shape", "dx = (g y) summed over rows (deliberately the wrong shape)", {},
                      OpDef::Listing::unlisted);
Tensor exp_bad_shape(const Tensor& x) {
  return unary_fixture(kBadShape, x, exp_op,
                       [](const Tensor& g, const Tensor& y) { return std::vector<Tensor>{sum(g * y, 0)}; });
}

// A backward that throws, and one that returns one gradient too many.
const OpDef kThrows("test_exp_throws", "dx = g y @ g (deliberately fails: inner dimensions differ)", {},
                    OpDef::Listing::unlisted);
Tensor exp_throws(const Tensor& x) {
  return unary_fixture(kThrows, x, exp_op,
                       [](const Tensor& g, const Tensor& y) { return std::vector<Tensor>{matmul(g * y, g)}; });
}
const OpDef kTooMany("test_exp_too_many", "dx = g y, plus a stray gradient (deliberately wrong)", {},
                     OpDef::Listing::unlisted);
Tensor exp_too_many(const Tensor& x) {
  return unary_fixture(kTooMany, x, exp_op, [](const Tensor& g, const Tensor& y) {
    return std::vector<Tensor>{g * y, g};
  });
}

// A small graph with `middle` in the middle: h = x W1 + b; m = middle(h); out = tanh(m W2 + h).
// h feeds both the middle op and the residual add, so the audit must tell the two reads apart.
struct Graph {
  Tensor x, w1, b, w2, r;
  std::map<const TensorImpl*, std::string> names;
  std::function<Tensor(const Tensor&)> middle;
  explicit Graph(std::function<Tensor(const Tensor&)> mid) : middle(std::move(mid)) {
    Generator g(7);
    auto leaf = [&](const Shape& s, const char* name) {
      Tensor t = randn(s, DType::f64, &g).set_requires_grad(true);
      names[t.impl_ptr().get()] = name;
      return t;
    };
    x = leaf({3, 4}, "x");
    w1 = leaf({4, 4}, "w1");
    b = leaf({4}, "b");
    w2 = leaf({4, 4}, "w2");
    r = randn({3, 4}, DType::f64, &g);
  }
  Tensor loss() const {
    Tensor h = add(matmul(x, w1), b);                 // #0 matmul, #1 add
    Tensor m = middle(h);                             // #2 (one node for the fixtures)
    return sum(mul(tanh(add(matmul(m, w2), h)), r));  // #3 matmul, #4 add (h again), #5 tanh, #6 mul, #7 #8 sum
  }
};

const AuditNode* first_failure(const AuditReport& r) {
  return r.first_failure >= 0 ? &r.nodes[size_t(r.first_failure)] : nullptr;
}

void check_names_broken_node(const AuditReport& rep, const std::string& op, int64_t index) {
  INFO(rep.text());
  REQUIRE_FALSE(rep.ok());
  const AuditNode* f = first_failure(rep);
  REQUIRE(f != nullptr);
  CHECK(f->op == op);
  CHECK(f->index == index);
  for (int64_t k = 0; k < rep.first_failure; ++k) CHECK_MESSAGE(rep.nodes[size_t(k)].ok, "step ", k + 1);
  // The report names it, in words and in JSON.
  CHECK(rep.text().find(cat("node #", index, " ", op)) != std::string::npos);
  json j = rep.to_json();
  CHECK(j["first_failure"]["op"] == op);
  CHECK(j["first_failure"]["node"] == index);
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("attnlab_test_audit_" + name)).string();
}

std::string write_temp(const std::string& name, const json& j) {
  std::string path = temp_path(name);
  std::ofstream(path) << j.dump();
  return path;
}

int run_cli(const std::vector<std::string>& args, std::string& out, std::string& err) {
  std::ostringstream o, e;
  int rc = audit_main(args, o, e, false);
  out = o.str();
  err = e.str();
  return rc;
}

}  // namespace

// ---- broken fixtures ---------------------------------------------------------------------------

TEST_CASE("the audit passes the fixture graph with a correct middle op") {
  Graph g([](const Tensor& h) { return tanh(h); });
  AuditReport rep = audit_gradients([&] { return g.loss(); }, {}, g.names);
  INFO(rep.text());
  CHECK(rep.ok());
  CHECK(rep.first_failure == -1);
  CHECK(rep.recorded == 9);
  CHECK(int64_t(rep.nodes.size()) == rep.reachable);
  CHECK(rep.entries_checked > 0);
}

TEST_CASE("the audit names a backward that is wrong by a factor") {
  Graph g(tanh_half_grad);
  AuditReport rep = audit_gradients([&] { return g.loss(); }, {}, g.names);
  check_names_broken_node(rep, "test_tanh_half_grad", 2);
  const AuditNode& f = *first_failure(rep);
  REQUIRE(f.inputs.size() == 1);
  CHECK(f.inputs[0].source == "#1 add");
  // Wrong by a factor of 2: analytic is half the numeric value.
  CHECK(f.inputs[0].worst.analytic == doctest::Approx(f.inputs[0].worst.numeric / 2).epsilon(1e-4));
  // The residual add (#4), a later consumer of the same tensor h, passed before it.
  bool add_seen = false;
  for (int64_t k = 0; k < rep.first_failure; ++k) add_seen |= rep.nodes[size_t(k)].index == 4;
  CHECK(add_seen);
  CHECK(rep.unchecked > 0);  // stopped there
}

TEST_CASE("the audit names a backward that drops a term") {
  Graph g(softmax_dropped_term);
  AuditReport rep = audit_gradients([&] { return g.loss(); }, {}, g.names);
  check_names_broken_node(rep, "test_softmax_dropped_term", 2);
}

TEST_CASE("the audit names a backward with a missing transpose") {
  Tensor w3 = randn({4, 4}, DType::f64).set_requires_grad(true);  // not symmetric: g w3 != g w3ᵀ
  Graph g([&](const Tensor& h) { return matmul_missing_transpose(h, w3); });
  g.names[w3.impl_ptr().get()] = "w3";
  AuditReport rep = audit_gradients([&] { return g.loss(); }, {}, g.names);
  check_names_broken_node(rep, "test_matmul_missing_transpose", 2);
  const AuditNode& f = *first_failure(rep);
  REQUIRE(f.inputs.size() == 2);
  CHECK_FALSE(f.inputs[0].ok);  // dA is the wrong one
  CHECK(f.inputs[1].ok);        // dB is right
}

TEST_CASE("the audit names a backward that returns the wrong shape") {
  Graph g(exp_bad_shape);
  AuditReport rep = audit_gradients([&] { return g.loss(); }, {}, g.names);
  check_names_broken_node(rep, "test_exp_bad_shape", 2);
  CHECK(first_failure(rep)->error.find("f64[4]") != std::string::npos);
}

TEST_CASE("the audit names a backward that throws or returns too many gradients") {
  Graph g1(exp_throws);
  AuditReport r1 = audit_gradients([&] { return g1.loss(); }, {}, g1.names);
  check_names_broken_node(r1, "test_exp_throws", 2);
  CHECK(first_failure(r1)->error.find("inner dimensions") != std::string::npos);
  CHECK(r1.backward_failed);
  Graph g2(exp_too_many);
  AuditReport r2 = audit_gradients([&] { return g2.loss(); }, {}, g2.names);
  check_names_broken_node(r2, "test_exp_too_many", 2);
  CHECK(first_failure(r2)->error.find("2 gradients for 1 inputs") != std::string::npos);
}

TEST_CASE("with all, the audit keeps going and still reports the broken node first") {
  Graph g(tanh_half_grad);
  AuditOptions opts;
  opts.all = true;
  AuditReport rep = audit_gradients([&] { return g.loss(); }, opts, g.names);
  check_names_broken_node(rep, "test_tanh_half_grad", 2);
  CHECK(int64_t(rep.nodes.size()) == rep.executed);
  CHECK(rep.unchecked == 0);
  CHECK(rep.failures >= 2);  // the nodes before it in the forward receive its wrong gradient
  CHECK(rep.text().find("receive its wrong gradient") != std::string::npos);
}

TEST_CASE("a broken op reading a leaf first, and every entry checked") {
  Generator gen(3);
  Tensor x = randn({2, 3}, DType::f64, &gen).set_requires_grad(true);
  Tensor r = randn({2, 3}, DType::f64, &gen);
  AuditOptions opts;
  opts.entries = 0;
  AuditReport rep = audit_gradients([&] { return sum(mul(tanh_half_grad(x), r)); }, opts, {{x.impl_ptr().get(), "x"}});
  check_names_broken_node(rep, "test_tanh_half_grad", 0);
  const AuditNode& f = *first_failure(rep);
  CHECK(f.inputs[0].source == "leaf x");
  CHECK(f.inputs[0].entries.size() == 6);
}

// ---- the method's corner cases -------------------------------------------------------------------

TEST_CASE("one tensor read twice by a node, through views and by several consumers") {
  Generator gen(11);
  Tensor x = randn({3, 3}, DType::f64, &gen).set_requires_grad(true);
  Tensor r = randn({3, 3}, DType::f64, &gen);
  auto loss = [&] {
    Tensor sq = mul(x, x);                                          // both slots read x
    Tensor xt = x.t();                                              // a view sharing x's storage
    Tensor y = add(matmul(sq, xt), x);                              // x read again, after the view was made
    Tensor z = mul(y.narrow(0, 0, 2).sum(), y.select(1, 2).sum());  // two views of y
    return add(sum(mul(y, r)), z);
  };
  AuditOptions opts;
  opts.entries = 0;
  AuditReport rep = audit_gradients(loss, opts);
  INFO(rep.text());
  CHECK(rep.ok());
  bool twice = false;
  for (const AuditNode& n : rep.nodes)
    for (const AuditInput& in : n.inputs) twice |= in.slots.size() == 2;
  CHECK(twice);
  CHECK(x.grad().defined() == false);  // the caller's .grad is left alone

  Tensor before = full({3, 3}, 0.5, DType::f64);
  x.set_grad(before);
  audit_gradients(loss);
  CHECK(x.grad().to_vector<double>() == std::vector<double>(9, 0.5));
}

TEST_CASE("the audit refuses a function that is not deterministic or not an f64 scalar") {
  Tensor x = randn({4}, DType::f64).set_requires_grad(true);
  CHECK_THROWS_AS(audit_gradients([&] { return sum(mul(x, randn({4}, DType::f64))); }), AutogradError);
  CHECK_THROWS_AS(audit_gradients([&] { return mul(x, x); }), AutogradError);
  Tensor y = randn({4}, DType::f64);
  CHECK_THROWS_AS(audit_gradients([&] { return sum(y); }), AutogradError);
}

TEST_CASE("the record hook sees every node and is off by default") {
  struct Counter : RecordHook {
    int n = 0;
    void on_record(Tensor&) override { ++n; }
  } counter;
  Tensor x = randn({3}, DType::f64).set_requires_grad(true);
  RecordHook* prev = set_record_hook(&counter);
  Tensor y = sum(exp(x) * 2.0);
  CHECK(set_record_hook(prev) == &counter);
  CHECK(counter.n == 3);
  Tensor z = sum(exp(x));
  CHECK(counter.n == 3);
}

// ---- every layer and the models --------------------------------------------------------------------

namespace {
AuditReport audit_spec(const json& config) {
  AuditSpec spec = AuditSpec::from_json(config);
  AuditTarget t = make_audit_target(spec);
  return audit_gradients(t.loss, spec.options, t.leaf_names, t.description);
}
}  // namespace

TEST_CASE("audit passes on every layer kind") {
  for (const std::string& layer : audit_layer_names()) {
    for (bool padding : {false, true}) {
      json cfg = {{"layer", layer}, {"padding", padding}};
      INFO(cfg.dump());
      AuditReport rep = audit_spec(cfg);
      INFO(rep.text());
      CHECK(rep.ok());
      CHECK(rep.nodes.size() > 1);
      CHECK(int64_t(rep.nodes.size()) == rep.executed);
    }
  }
}

TEST_CASE("audit passes on every registered attention type, causal or not, padded or not") {
  for (const std::string& type : attention_types()) {
    for (const char* impl : {"fused", "composite"}) {
      json att = {{"type", type}};
      if (type == "softmax" || type == "local" || type == "sinkformer") att["impl"] = impl;
      else if (std::string(impl) == "composite") continue;
      if (type == "local") att["block"] = 2;
      if (type == "routing") att.update({{"clusters", 2}, {"local_heads", 1}, {"local_block", 2}});
      for (bool causal : {false, true})
        for (bool padding : {false, true})
          for (const char* layer : {"attention", "mha"}) {
            json a = att;
            if (type == "sinkformer" && causal) a["iterations"] = 1;  // causal Sinkformer: softmax only
            json cfg = {{"layer", layer}, {"attention", a}, {"causal", causal}, {"padding", padding}, {"seq_len", 6}};
            INFO(cfg.dump());
            AuditReport rep = audit_spec(cfg);
            INFO(rep.text());
            CHECK(rep.ok());
          }
    }
  }
}

TEST_CASE("audit passes on a tiny causal LM and on model variants") {
  AuditReport rep = audit_spec({{"layer", "causal_lm"}});
  INFO(rep.text());
  CHECK(rep.ok());
  CHECK(rep.recorded >= 30);  // every node of a 1-layer LM (linear records no view nodes of its own)
  bool ce = false, emb = false;
  for (const AuditNode& n : rep.nodes) {
    ce |= n.op == "cross_entropy";
    emb |= n.op == "embedding";
  }
  CHECK(ce);
  CHECK(emb);

  for (json model : {json{{"n_layers", 2}, {"positions", "sinusoidal"}, {"activation", "relu"}},
                     json{{"attention", {{"type", "softmax"}, {"impl", "composite"}}}, {"n_heads", 4}}}) {
    INFO(model.dump());
    AuditReport r2 = audit_spec({{"model", model}});  // no layer: a causal LM
    INFO(r2.text());
    CHECK(r2.ok());
  }
  AuditReport r3 = audit_spec({{"model", {{"num_classes", 4}}}, {"padding", true}});
  CHECK(r3.target.find("classifier") == 0);
  INFO(r3.text());
  CHECK(r3.ok());
}

TEST_CASE("audit configs: training configs, shorthand keys and errors") {
  json train = {{"model", {{"d_model", 8}, {"n_heads", 2}, {"n_layers", 1}, {"vocab_size", 7}, {"max_len", 8}}},
                {"data", {{"seq_len", 8}}},
                {"steps", 10}};
  AuditSpec s = AuditSpec::from_json(train);
  CHECK(s.training_config);
  CHECK(s.layer == "causal_lm");
  CHECK(s.model.vocab_size == 7);
  CHECK(AuditSpec::from_json(train, "block").layer == "block");
  AuditSpec flat = AuditSpec::from_json({{"layer", "mlp"}, {"d_model", 6}, {"n_heads", 3}});
  CHECK(flat.model.d_model == 6);
  CHECK(flat.model.d_ff == 24);
  CHECK_THROWS_AS(AuditSpec::from_json({{"layer", "mlp"}, {"bogus", 1}}), ValueError);
  CHECK_THROWS_AS(AuditSpec::from_json({{"layer", "nope"}}), ValueError);
  CHECK_THROWS_AS(AuditSpec::from_json(json::object()), ValueError);
  CHECK_THROWS_AS(AuditSpec::from_json({{"layer", "mlp"}, {"d_model", 6}, {"model", {{"d_model", 6}}}}), ValueError);
  CHECK_THROWS_AS(AuditSpec::from_json({{"layer", "block"}, {"seq_len", 99}}), ValueError);
}

// ---- the command, through its library entry point ---------------------------------------------------

TEST_CASE("attnlab audit: text, JSON trace and exit codes") {
  const std::string cfg = write_temp("lm.json", {{"layer", "causal_lm"}, {"seed", 1}});
  const std::string trace = temp_path("trace.json");
  std::string out, err;

  CHECK(run_cli({"--config", cfg, "--json", trace}, out, err) == 0);
  CHECK(out.find("PASS: all") != std::string::npos);
  CHECK(out.find("cross_entropy") != std::string::npos);
  CHECK(out.find("\033[") == std::string::npos);  // no ANSI unless asked
  std::ifstream f(trace);
  REQUIRE(f);
  json j = json::parse(f);
  CHECK(j["ok"] == true);
  CHECK(j["layer"] == "causal_lm");
  REQUIRE(j["nodes"].is_array());
  CHECK(j["nodes"].size() == j["reachable"].get<size_t>());
  const json& first = j["nodes"][0];
  CHECK(first["op"] == "cross_entropy");
  CHECK(first["step"] == 1);
  CHECK(first.contains("output"));
  CHECK(first["output"].contains("norm"));
  CHECK(first["inputs"][0]["checked"] == true);
  CHECK(first["inputs"][0]["entries"].size() == 6);
  CHECK(first["inputs"][1]["checked"] == false);  // the i64 targets
  std::remove(trace.c_str());

  // --layer overrides, --entries 0 checks every entry.
  CHECK(run_cli({"--config", cfg, "--layer", "layer_norm", "--entries", "0"}, out, err) == 0);
  CHECK(out.find("layer_norm") != std::string::npos);

  // Impossible tolerances make the first node with any rounding error fail: exit 1, highlighted.
  CHECK(run_cli({"--config", cfg, "--layer", "linear", "--atol", "0", "--rtol", "0"}, out, err) == 1);
  CHECK(out.find("<== first disagreement") != std::string::npos);
  CHECK(out.find("FAIL: node #") != std::string::npos);
  {
    std::ostringstream o, e;
    CHECK(audit_main({"--config", cfg, "--layer", "linear", "--atol", "0", "--rtol", "0"}, o, e, true) == 1);
    CHECK(o.str().find("\033[1") != std::string::npos);
  }

  // Usage errors: 2.
  CHECK(run_cli({"--help"}, out, err) == 0);
  CHECK(out.find("usage: attnlab audit") != std::string::npos);
  CHECK(run_cli({}, out, err) == 2);
  CHECK(err.find("--config is required") != std::string::npos);
  CHECK(run_cli({"--config", cfg, "--layer", "nope"}, out, err) == 2);
  CHECK(run_cli({"--config", cfg, "--bogus", "1"}, out, err) == 2);
  CHECK(run_cli({"--config", cfg, "--entries", "2.5"}, out, err) == 2);
  CHECK(run_cli({"--config", cfg, "--eps", "0"}, out, err) == 2);
  // A missing config file is an error, not a usage error.
  CHECK(run_cli({"--config", temp_path("missing.json")}, out, err) == 1);
  std::remove(cfg.c_str());
}

TEST_CASE("the example configs in configs/audit all pass") {
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(ATTNLAB_SOURCE_DIR) + "/configs/audit")) {
    if (entry.path().extension() != ".json") continue;
    ++seen;
    INFO(entry.path().string());
    std::string out, err;
    const int rc = run_cli({"--config", entry.path().string()}, out, err);
    INFO(out, err);
    CHECK(rc == 0);
  }
  CHECK(seen >= 3);
}

// Layers and models: float64 gradcheck of every layer (input and every parameter), state dicts,
// configs, masks.
#include <doctest/doctest.h>

#include <cmath>

#include "attention/softmax.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "layers/transformer.h"
#include "tests/support.h"

using namespace attnlab;

namespace {
// Checks d<r, fn()>/d(leaf) for the input and every parameter of `m`.
void check_module(Module& m, const Tensor& x, const std::function<Tensor(const Tensor&)>& fn, const char* what) {
  std::vector<Tensor> leaves;
  Tensor xin = x;
  if (is_floating(x.dtype())) {
    xin = x.detach();
    xin.set_requires_grad(true);
    leaves.push_back(xin);
  }
  for (auto& p : m.parameters()) leaves.push_back(p);
  GradcheckOptions opts;
  opts.atol = 1e-6;
  opts.rtol = 1e-4;
  GradcheckResult r = gradcheck_leaves([&] { return fn(xin); }, leaves, opts);
  INFO(what);
  CHECK_MESSAGE(r.ok, what, "\n", r.report());
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 7;
  c.d_model = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.d_ff = 12;
  c.max_len = 6;
  c.seed = 3;
  return c;
}
}  // namespace

TEST_CASE("Linear, Embedding, LayerNorm, MLP pass a float64 gradcheck of input and parameters") {
  Generator g(1);
  Linear lin(4, 3, true, g, DType::f64);
  check_module(lin, randn({2, 5, 4}, DType::f64, &g), [&](const Tensor& x) { return lin.forward(x); }, "Linear");
  Linear nobias(4, 3, false, g, DType::f64);
  CHECK(nobias.parameters().size() == 1);
  check_module(nobias, randn({3, 4}, DType::f64, &g), [&](const Tensor& x) { return nobias.forward(x); },
               "Linear without bias");
  Embedding emb(6, 3, g, DType::f64, 1.0);
  check_module(emb, from_vector(std::vector<int64_t>{0, 5, 5, 2}, {2, 2}),
               [&](const Tensor& ids) { return emb.forward(ids); }, "Embedding");
  LayerNorm ln(5, 1e-5, DType::f64);
  {
    NoGradGuard ng;
    ln.weight.copy_(randn({5}, DType::f64, &g));
    ln.bias.copy_(randn({5}, DType::f64, &g));
  }
  check_module(ln, randn({3, 5}, DType::f64, &g), [&](const Tensor& x) { return ln.forward(x); }, "LayerNorm");
  auto gen = std::make_shared<Generator>(4);
  MLP mlp(4, 6, Activation::gelu, 0.0, gen, g, DType::f64);
  check_module(mlp, randn({2, 4}, DType::f64, &g), [&](const Tensor& x) { return mlp.forward(x); }, "MLP");
}

TEST_CASE("multi-head attention, Transformer block and both models pass a float64 gradcheck") {
  ModelConfig c = tiny_config();
  auto gen = std::make_shared<Generator>(5);
  Generator init(6);
  MultiHeadAttention mha(8, 2, {{"type", "softmax"}}, 0.0, gen, init, DType::f64);
  AttentionMask causal;
  causal.causal = true;
  check_module(mha, randn({2, 4, 8}, DType::f64, &init), [&](const Tensor& x) { return mha.forward(x, causal); },
               "MultiHeadAttention causal");
  AttentionMask pad;
  pad.key_padding = from_vector(std::vector<double>{0, 0, 0, 1, 0, 0, 1, 1}, {2, 4}, DType::b8);
  check_module(mha, randn({2, 4, 8}, DType::f64, &init), [&](const Tensor& x) { return mha.forward(x, pad); },
               "MultiHeadAttention key padding");

  TransformerBlock block(c, gen, init, DType::f64);
  check_module(block, randn({1, 5, 8}, DType::f64, &init), [&](const Tensor& x) { return block.forward(x, causal); },
               "TransformerBlock");

  CausalLM lm(c, DType::f64);
  Tensor ids = from_vector(std::vector<int64_t>{1, 2, 3, 6, 0, 4, 4, 5}, {2, 4});
  Tensor targets = from_vector(std::vector<int64_t>{2, 3, 6, 0, 4, 4, 5, 1}, {2, 4});
  check_module(lm, ids, [&](const Tensor& x) { return lm.loss(x, targets); }, "CausalLM loss");

  ModelConfig cc = c;
  cc.num_classes = 3;
  cc.positions = "sinusoidal";
  SequenceClassifier clf(cc, DType::f64);
  Tensor padding = from_vector(std::vector<double>{0, 0, 0, 1, 0, 0, 0, 0}, {2, 4}, DType::b8);
  check_module(clf, ids, [&](const Tensor& x) { return clf.forward(x, padding); }, "SequenceClassifier");
}

TEST_CASE("causal LM: later tokens do not influence earlier logits") {
  ModelConfig c = tiny_config();
  CausalLM lm(c, DType::f64);
  Tensor a = from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4});
  Tensor b = from_vector(std::vector<int64_t>{1, 2, 5, 6}, {1, 4});
  Tensor la = lm.forward(a).narrow(1, 0, 2), lb = lm.forward(b).narrow(1, 0, 2);
  CHECK(allclose(la, lb, 1e-12, 1e-12));
  CHECK_FALSE(allclose(lm.forward(a).narrow(1, 2, 1), lm.forward(b).narrow(1, 2, 1)));
}

TEST_CASE("state_dict uses dotted names and round-trips into a differently seeded model") {
  ModelConfig c = tiny_config();
  CausalLM a(c);
  ModelConfig c2 = c;
  c2.seed = 99;
  CausalLM b(c2);
  StateDict sd = a.state_dict();
  CHECK(sd.count("trunk.tok.weight"));
  CHECK(sd.count("trunk.blocks.0.attn.qkv.weight"));
  CHECK(sd.count("trunk.blocks.0.mlp.fc1.bias"));
  CHECK(sd.count("head.weight"));
  CHECK_FALSE(sd.count("head.bias"));
  Tensor ids = from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4});
  CHECK_FALSE(equal(a.forward(ids), b.forward(ids)));
  b.load_state_dict(sd);
  CHECK(equal(a.forward(ids), b.forward(ids)));

  StateDict missing = sd;
  missing.erase("head.weight");
  CHECK_THROWS_AS(b.load_state_dict(missing), ValueError);
  StateDict extra = sd;
  extra["bogus"] = zeros({1});
  CHECK_THROWS_AS(b.load_state_dict(extra), ValueError);
  StateDict wrong = sd;
  wrong["head.weight"] = zeros({2, 2});
  CHECK_THROWS_AS(b.load_state_dict(wrong), ShapeError);
}

TEST_CASE("model configs are validated") {
  CHECK_THROWS_AS(ModelConfig::from_json({{"d_model", 10}, {"n_heads", 3}}), ValueError);
  CHECK_THROWS_AS(ModelConfig::from_json({{"d_modle", 10}}), ValueError);
  CHECK_THROWS_AS(ModelConfig::from_json({{"dropout", 1.5}}), ValueError);
  CHECK_THROWS_AS(ModelConfig::from_json({{"d_model", "big"}}), ValueError);
  CHECK_THROWS_AS(ModelConfig::from_json({{"positions", "rotary"}}), ValueError);
  // A non-string type let a raw JSON-library exception out (found by fuzz/, model_config target).
  CHECK_THROWS_AS(ModelConfig::from_json({{"attention", {{"type", 2}}}}), ValueError);
  CHECK_THROWS_AS(make_attention({{"type", 2}}, AttentionContext{4, 2, nullptr}), ValueError);
  CHECK_THROWS_AS(make_attention(3, AttentionContext{4, 2, nullptr}), ValueError);
  ModelConfig c = ModelConfig::from_json({{"d_model", 64}, {"n_heads", 4}});
  CHECK(c.d_ff == 256);
  CHECK(ModelConfig::from_json(c.to_json()).to_json() == c.to_json());
  AttentionContext ctx{16, 4, std::make_shared<Generator>(0)};
  CHECK_THROWS_AS(make_attention({{"type", "nonexistent"}}, ctx), ValueError);
}

TEST_CASE("the default d_ff = 4 * d_model never wraps: d_model is bounded before the default is formed") {
  // 4 * d_model was computed even with d_ff given (signed overflow, UBSan), and without d_ff
  // d_model = 2^62 + 1 wrapped to d_ff = 4 and was accepted.
  const int64_t huge = (int64_t(1) << 62) + 1;
  for (const nlohmann::json& j : {nlohmann::json{{"d_model", huge}, {"n_heads", 1}},
                                  nlohmann::json{{"d_model", huge}, {"n_heads", 1}, {"d_ff", 64}}}) {
    const std::string msg = testing::message_of<ValueError>([&] { ModelConfig::from_json(j); });
    CHECK(testing::contains(msg, "model.d_model: must be an integer in [1, "));
  }
  CHECK(ModelConfig::from_json({{"d_model", 24}, {"n_heads", 2}}).d_ff == 96);
  CHECK(ModelConfig::from_json({{"d_model", 24}, {"n_heads", 2}, {"d_ff", 10}}).d_ff == 10);
}

TEST_CASE("softmax attention: fully masked rows give zeros and zero gradients") {
  Generator g(2);
  Tensor q = randn({1, 1, 3, 4}, DType::f64, &g).set_requires_grad(true);
  Tensor k = randn({1, 1, 3, 4}, DType::f64, &g).set_requires_grad(true);
  Tensor v = randn({1, 1, 3, 4}, DType::f64, &g).set_requires_grad(true);
  AttentionMask m;
  m.key_padding = from_vector(std::vector<double>{1, 1, 1}, {1, 3}, DType::b8);
  Tensor out = softmax_attention_composite(q, k, v, m, 0.5);
  for (double x : out.to_vector<double>()) CHECK(x == 0.0);
  out.sum().backward();
  for (double x : q.grad().to_vector<double>()) CHECK(std::isfinite(x));
  for (double x : v.grad().to_vector<double>()) CHECK(x == 0.0);
}

TEST_CASE("a failed load_state_dict leaves the model untouched") {
  ModelConfig c = tiny_config();
  CausalLM a(c), b(c);
  {
    NoGradGuard ng;
    for (auto& p : b.parameters()) p.mul_(2.0);
  }
  Tensor ids = from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4});
  Tensor before = b.forward(ids);
  StateDict sd = a.state_dict();
  sd["head.weight"] = zeros({1});
  CHECK_THROWS_AS(b.load_state_dict(sd), ShapeError);
  CHECK(equal(before, b.forward(ids)));
}

TEST_CASE("layer_norm with strided weight and bias reads their values, not freed copies") {
  // Strided parameters are copied to contiguous memory; the copies must live through the loop that
  // reads them (a pointer into a temporary was a use after free that the caching allocator hid: the
  // bias copy reused the weight copy's block, so y came out as x̂ b + b).
  Generator g(11);
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(std::string(dtype_name(dt)));
    Tensor x = randn({3, 4}, dt, &g);
    Tensor w2 = randn({4, 2}, dt, &g), b2 = randn({4, 2}, dt, &g);
    Tensor w = w2.select(1, 0), b = b2.select(1, 1);  // stride 2
    REQUIRE_FALSE(w.is_contiguous());
    REQUIRE_FALSE(b.is_contiguous());
    Tensor want = layer_norm(x, w.contiguous(), b.contiguous());
    CHECK(allclose(layer_norm(x, w, b), want, 1e-6, 1e-6));
  }
}

// `attnlab layer` (tools/layer_io.h): inputs written to a safetensors file, the layer run through
// run_layer_io, the outputs read back and compared bit for bit with the same forward/backward run
// here in-process; parameters initialised from the seed; re-running an outputs file; error messages.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "attention/attention.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "layers/transformer.h"
#include "tests/support.h"
#include "tools/layer_io.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {

// Writes the config and inputs to files, runs the layer through the file API, reads the result back.
SafetensorsFile run_through_files(const TempDir& dir, const std::string& layer, const nlohmann::json& cfg,
                                  const TensorMap& inputs) {
  { std::ofstream(dir.file("cfg.json")) << cfg.dump(); }
  save_safetensors(dir.file("in.safetensors"), inputs);
  run_layer_io(layer, LayerConfig::from_file(dir.file("cfg.json")), dir.file("in.safetensors"),
               dir.file("out.safetensors"));
  return load_safetensors(dir.file("out.safetensors"));
}

Tensor leaf(const Tensor& t) {
  Tensor l = t.detach().clone();
  l.set_requires_grad(true);
  return l;
}

Tensor padding_mask(int64_t B, int64_t T) {  // pads the last key of batch 0 and the last two of batch 1
  Tensor kp = zeros({B, T}, DType::b8);
  uint8_t* p = kp.data<uint8_t>();
  p[T - 1] = 1;
  if (B > 1) p[T + T - 1] = p[T + T - 2] = 1;
  return kp;
}

// The reference: the same method built and run here, without the tool.
TensorMap reference_attention(const nlohmann::json& cfg, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& key_padding, const Tensor& grad_out) {
  auto method =
      make_attention(cfg.value("attention", nlohmann::json{{"type", "softmax"}}),
                     AttentionContext{q.size(3), q.size(1), std::make_shared<Generator>(cfg.value("seed", 0), 1)});
  method->to(q.dtype());  // the method's own parameters (entmax α), as the tool does
  method->train(false);
  method->record_internals = true;
  AttentionMask mask;
  mask.causal = cfg.value("causal", false);
  mask.key_padding = key_padding;
  Tensor ql = leaf(q), kl = leaf(k), vl = leaf(v);
  Tensor out = method->forward(ql, kl, vl, mask);
  out.backward(grad_out.defined() ? grad_out : ones_like(out));
  TensorMap r{{"out", out.detach()}, {"grad.q", ql.grad()}, {"grad.k", kl.grad()}, {"grad.v", vl.grad()}};
  for (auto& [name, p] : method->named_parameters()) r["grad." + name] = p.grad();
  for (auto& [key, t] : method->internals) r["internals." + key] = t;
  return r;
}

TensorMap reference_mha(const nlohmann::json& cfg, const Tensor& x, const TensorMap& params, const Tensor& key_padding,
                        const Tensor& grad_out) {
  const uint64_t seed = cfg.value("seed", 0);
  Generator init_gen(seed, 0);
  MultiHeadAttention mha(x.size(2), cfg.at("n_heads").get<int64_t>(),
                         cfg.value("attention", nlohmann::json{{"type", "softmax"}}), 0.0,
                         std::make_shared<Generator>(seed, 1), init_gen, x.dtype());
  if (!params.empty()) mha.load_state_dict(params, false);
  mha.eval();
  mha.method->record_internals = true;
  AttentionMask mask;
  mask.causal = cfg.value("causal", false);
  mask.key_padding = key_padding;
  Tensor xl = leaf(x);
  Tensor out = mha.forward(xl, mask);
  out.backward(grad_out.defined() ? grad_out : ones_like(out));
  TensorMap r{{"out", out.detach()}, {"grad.x", xl.grad()}};
  for (auto& [name, p] : mha.named_parameters()) {
    r["grad." + name] = p.grad();
    r[name] = p.detach();
  }
  for (auto& [key, t] : mha.method->internals) r["internals." + key] = t;
  return r;
}

void check_bitwise(const TensorMap& got, const TensorMap& want) {
  for (const auto& [name, w] : want) {
    CAPTURE(name);
    auto it = got.find(name);
    REQUIRE(it != got.end());
    CHECK(it->second.dtype() == w.dtype());
    CHECK(it->second.shape() == w.shape());
    CHECK(equal(it->second, w));
  }
}

}  // namespace

TEST_CASE("layer attention: outputs, gradients and internals match the in-process run bit for bit") {
  for (DType dt : {DType::f32, DType::f64}) {
    for (bool causal : {true, false}) {
      for (bool padded : {false, true}) {
        CAPTURE(dtype_name(dt));
        CAPTURE(causal);
        CAPTURE(padded);
        TempDir dir;
        Generator g(42);
        const int64_t B = 2, H = 3, Tq = 4, Tk = causal ? 4 : 6, dh = 5;
        Tensor q = randn({B, H, Tq, dh}, dt, &g), k = randn({B, H, Tk, dh}, dt, &g), v = randn({B, H, Tk, dh}, dt, &g);
        TensorMap in{{"q", q}, {"k", k}, {"v", v}};
        Tensor kp, grad_out;
        if (padded) {
          kp = padding_mask(B, Tk);
          in["key_padding"] = kp;
          grad_out = randn({B, H, Tq, dh}, dt, &g);  // an explicit upstream gradient too
          in["grad_out"] = grad_out;
        }
        nlohmann::json cfg = {{"attention", {{"type", "softmax"}}}, {"causal", causal}};
        SafetensorsFile out = run_through_files(dir, "attention", cfg, in);
        TensorMap want = reference_attention(cfg, q, k, v, kp, grad_out);
        REQUIRE(want.count("internals.attn"));
        CHECK(want["internals.attn"].shape() == Shape{B, H, Tq, Tk});
        check_bitwise(out.tensors, want);
        // The inputs as used come back too, grad_out defaulting to ones.
        CHECK(equal(out.tensors.at("q"), q));
        CHECK(equal(out.tensors.at("v"), v));
        CHECK(equal(out.tensors.at("grad_out"), padded ? grad_out : ones({B, H, Tq, dh}, dt)));
        if (padded) CHECK(equal(out.tensors.at("key_padding"), kp));
        CHECK(out.metadata.at("attnlab.layer") == "attention");
        CHECK(nlohmann::json::parse(out.metadata.at("attnlab.config")).at("causal") == causal);
        // Blocked positions get exactly zero weight.
        Tensor attn = out.tensors.at("internals.attn");
        if (causal) CHECK(attn.at({0, 0, 0, 1}) == 0.0);
        if (padded) CHECK(attn.at({1, 2, 3, Tk - 1}) == 0.0);
      }
    }
  }
}

TEST_CASE("layer attention: entmax with learned α — weights with exact zeros, support, tile bitmask, α and ∂α") {
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dt));
    TempDir dir;
    Generator g(7);
    const int64_t B = 2, H = 2, T = 9, dh = 4;
    Tensor q = randn({B, H, T, dh}, dt, &g), k = randn({B, H, T, dh}, dt, &g), v = randn({B, H, T, dh}, dt, &g);
    nlohmann::json cfg = {{"attention", {{"type", "entmax"}, {"alpha", 1.6}, {"learn_alpha", true}}}, {"causal", true}};
    SafetensorsFile out = run_through_files(dir, "attention", cfg, {{"q", q}, {"k", k}, {"v", v}});
    TensorMap want = reference_attention(cfg, q, k, v, Tensor(), Tensor());
    for (const char* name :
         {"internals.attn", "internals.support", "internals.tiles", "internals.alpha", "grad.alpha_logit"})
      REQUIRE(want.count(name));
    check_bitwise(out.tensors, want);
    const Tensor attn = out.tensors.at("internals.attn");
    CHECK(attn.at({0, 0, 0, 1}) == 0.0);  // causal
    CHECK(out.tensors.at("internals.support").dtype() == DType::i64);
    CHECK(out.tensors.at("internals.tiles").dtype() == DType::b8);
    CHECK(out.tensors.at("internals.alpha").at({1}) == doctest::Approx(1.6).epsilon(1e-6));
  }
}

TEST_CASE("layer mha: given and seeded parameters, gradients of x and of every parameter, bit for bit") {
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dt));
    TempDir dir;
    Generator g(7);
    const int64_t B = 2, T = 5, D = 8;
    Tensor x = randn({B, T, D}, dt, &g);
    Tensor qkv_w = randn({3 * D, D}, dt, &g) * 0.3;
    Tensor kp = padding_mask(B, T);
    nlohmann::json cfg = {{"n_heads", 2}, {"causal", true}, {"seed", 11}};
    TensorMap in{{"x", x}, {"qkv.weight", qkv_w}, {"key_padding", kp}};
    SafetensorsFile out = run_through_files(dir, "mha", cfg, in);
    TensorMap want = reference_mha(cfg, x, {{"qkv.weight", qkv_w}}, kp, Tensor());
    check_bitwise(out.tensors, want);
    // The given weight is used as is; the others come from the seed, as a fresh module draws them.
    CHECK(equal(out.tensors.at("qkv.weight"), qkv_w));
    Generator init_gen(11, 0);
    MultiHeadAttention fresh(D, 2, nlohmann::json{{"type", "softmax"}}, 0.0, std::make_shared<Generator>(11, 1),
                             init_gen, dt);
    CHECK(equal(out.tensors.at("out.weight"), fresh.out->weight));
    CHECK(equal(out.tensors.at("qkv.bias"), fresh.qkv->bias));
    for (const char* name : {"out", "grad.x", "grad.qkv.weight", "grad.qkv.bias", "grad.out.weight", "grad.out.bias",
                             "internals.attn", "x", "grad_out", "qkv.weight", "qkv.bias", "out.weight", "out.bias"})
      CHECK_MESSAGE(out.tensors.count(name), name);
    CHECK(out.tensors.at("internals.attn").shape() == Shape{B, 2, T, T});
    CHECK(out.tensors.at("grad.qkv.weight").dtype() == dt);
  }
}

TEST_CASE("layer: an outputs file re-runs to the same outputs") {
  TempDir dir;
  Generator g(3);
  nlohmann::json cfg = {{"n_heads", 2}, {"seed", 5}};
  SafetensorsFile first = run_through_files(dir, "mha", cfg, {{"x", randn({1, 4, 6}, DType::f64, &g)}});
  run_layer_io("mha", LayerConfig::from_json(cfg), dir.file("out.safetensors"), dir.file("again.safetensors"));
  SafetensorsFile again = load_safetensors(dir.file("again.safetensors"));
  REQUIRE(again.tensors.size() == first.tensors.size());
  check_bitwise(again.tensors, first.tensors);
}

TEST_CASE("layer: in-memory run_layer leaves the caller's tensors untouched") {
  Generator g(1);
  Tensor q = randn({1, 1, 3, 2}, DType::f64, &g), k = randn({1, 1, 3, 2}, DType::f64, &g),
         v = randn({1, 1, 3, 2}, DType::f64, &g);
  TensorMap r = run_layer("attention", LayerConfig{}, {{"q", q}, {"k", k}, {"v", v}});
  CHECK_FALSE(q.requires_grad());
  CHECK_FALSE(q.grad().defined());
  // Non-causal softmax attention with these shapes: rows of the weights sum to one.
  Tensor rows = sum(r.at("internals.attn"), -1);
  for (int64_t i = 0; i < 3; ++i) CHECK(rows.at({0, 0, i}) == doctest::Approx(1.0).epsilon(1e-12));
}

TEST_CASE("layer: clear errors") {
  Generator g(2);
  auto t = [&](const Shape& s, DType dt = DType::f32) { return randn(s, dt, &g); };
  const LayerConfig plain;
  const TensorMap qkv{{"q", t({1, 2, 3, 4})}, {"k", t({1, 2, 3, 4})}, {"v", t({1, 2, 3, 4})}};
  auto with = [&](TensorMap m, const std::string& name, const Tensor& x) {
    m[name] = x;
    return m;
  };
  auto without = [&](TensorMap m, const std::string& name) {
    m.erase(name);
    return m;
  };

  std::string e = message_of<ValueError>([&] { run_layer("attention", plain, without(qkv, "q"), "in.safetensors"); });
  CHECK(contains(e, "missing tensor 'q'"));
  CHECK(contains(e, "in.safetensors"));
  e = message_of<ShapeError>([&] { run_layer("attention", plain, with(qkv, "k", t({1, 2, 3, 5}))); });
  CHECK(contains(e, "'k'"));
  CHECK(contains(e, "[1, 2, 3, 5]"));
  e = message_of<ShapeError>([&] { run_layer("attention", plain, with(qkv, "q", t({2, 3, 4}))); });
  CHECK(contains(e, "'q' must be [B, H, Tq, dh]"));
  e = message_of<ShapeError>([&] { run_layer("attention", plain, with(qkv, "v", t({1, 2, 4, 4}))); });
  CHECK(contains(e, "'v'"));
  e = message_of<DTypeError>([&] { run_layer("attention", plain, with(qkv, "k", t({1, 2, 3, 4}, DType::f64))); });
  CHECK(contains(e, "'k'"));
  e = message_of<ValueError>([&] { run_layer("transformer", plain, qkv); });
  CHECK(contains(e, "unknown layer 'transformer'"));
  CHECK(contains(e, "attention, mha"));
  e = message_of<ValueError>([&] { run_layer("attention", plain, with(qkv, "qq", t({1}))); });
  CHECK(contains(e, "unexpected tensor 'qq'"));
  e = message_of<DTypeError>([&] { run_layer("attention", plain, with(qkv, "key_padding", t({1, 3}))); });
  CHECK(contains(e, "'key_padding' must be b8"));
  e = message_of<ShapeError>([&] {
    run_layer("attention", plain, with(qkv, "key_padding", zeros({1, 4}, DType::b8)));
  });
  CHECK(contains(e, "'key_padding' must be [B, Tk] = [1, 3]"));
  e = message_of<ShapeError>([&] { run_layer("attention", plain, with(qkv, "grad_out", t({1, 2, 3, 3}))); });
  CHECK(contains(e, "'grad_out' must match the output"));

  const LayerConfig mha_cfg = LayerConfig::from_json({{"n_heads", 2}});
  e = message_of<ValueError>([&] { run_layer("mha", plain, {{"x", t({1, 3, 4})}}); });
  CHECK(contains(e, "n_heads"));
  e = message_of<ShapeError>([&] { run_layer("mha", mha_cfg, {{"x", t({1, 3, 5})}}); });
  CHECK(contains(e, "not divisible by n_heads 2"));
  e = message_of<ShapeError>([&] { run_layer("mha", mha_cfg, {{"x", t({1, 3, 4})}, {"qkv.weight", t({12, 5})}}); });
  CHECK(contains(e, "parameter 'qkv.weight'"));
  CHECK(contains(e, "[12, 4]"));
  e = message_of<DTypeError>([&] {
    run_layer("mha", mha_cfg, {{"x", t({1, 3, 4}, DType::f64)}, {"out.bias", t({4})}});
  });
  CHECK(contains(e, "parameter 'out.bias'"));
  CHECK(contains(e, "runs in f64"));
  e = message_of<ValueError>([&] { run_layer("mha", mha_cfg, {{"x", t({1, 3, 4})}, {"qkv.weights", t({12, 4})}}); });
  CHECK(contains(e, "unexpected tensor 'qkv.weights'"));
  CHECK(contains(e, "qkv.weight"));  // the list of parameter names it does take

  e = message_of<ValueError>([&] { LayerConfig::from_json({{"casual", true}}); });
  CHECK(contains(e, "casual: unknown key"));
  e = message_of<ValueError>([&] { LayerConfig::from_json({{"attention", {{"type", "nope"}}}}); });
  CHECK(contains(e, "unknown attention type 'nope'"));
  e = message_of<IOError>(
      [&] { run_layer_io("attention", plain, "/nonexistent/in.safetensors", "/tmp/x.safetensors"); });
  CHECK(contains(e, "/nonexistent/in.safetensors"));
  // An unknown layer fails before the inputs file is opened.
  e = message_of<ValueError>([&] { run_layer_io("mlp", plain, "/nonexistent/in.safetensors", "/tmp/x.safetensors"); });
  CHECK(contains(e, "unknown layer 'mlp'"));
}

// Anomaly mode: the first op that makes a NaN (or an infinity from finite inputs) in its forward, or a
// non-finite gradient in its backward, throws an error naming it, the shapes and the module path.
#include <doctest/doctest.h>

#include <limits>

#include "autograd/anomaly.h"
#include "autograd/node.h"
#include "core/rng.h"
#include "layers/transformer.h"
#include "support.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;

namespace {
ModelConfig tiny(const char* attention_impl) {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 16;
  c.max_len = 8;
  c.attention = {{"type", "softmax"}, {"impl", attention_impl}};
  return c;
}

Tensor ids_for(int64_t B, int64_t T) {
  std::vector<double> v;
  for (int64_t i = 0; i < B * T; ++i) v.push_back(double((i * 7) % 11));
  return from_vector(v, {B, T}, DType::i64);
}

// Sets one element of a parameter (a leaf) without autograd seeing a write.
void plant(const Tensor& param, int64_t flat, double value) {
  std::vector<double> v = param.to(DType::f64).to_vector<double>();
  v[size_t(flat)] = value;
  Tensor replacement = from_vector(v, param.shape()).to(param.dtype());
  std::memcpy(param.raw_data(), replacement.raw_data(), size_t(param.numel()) * dtype_size(param.dtype()));
}

// A handle on a named parameter (it shares the parameter's storage).
Tensor param(const Module& m, const std::string& name) {
  for (const auto& [n, p] : m.named_parameters())
    if (n == name) return p;
  FAIL("no parameter ", name);
  return Tensor();
}

// Forward with a backward that returns NaN: stands for a broken hand-written backward.
const OpDef kNanBackward("test_nan_backward", "dx = NaN (a deliberately broken backward)", {},
                         OpDef::Listing::unlisted);
Tensor nan_backward(const Tensor& x) {
  Tensor y = x.detach().clone();
  if (x.requires_grad())
    record(y, kNanBackward, {x}, [](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{full(g.shape(), std::numeric_limits<double>::quiet_NaN(), g.dtype())};
    });
  return y;
}
}  // namespace

TEST_CASE("anomaly mode names the op and the module for a NaN planted in a forward") {
  for (const char* impl : {"fused", "composite"}) {
    INFO("attention impl ", std::string(impl));
    CausalLM lm(tiny(impl));
    Tensor ids = ids_for(2, 6);
    plant(param(lm, "trunk.blocks.1.mlp.fc1.weight"), 3, std::numeric_limits<double>::quiet_NaN());
    {
      AnomalyModeGuard on;
      const std::string msg = message_of<AnomalyError>([&] { lm.loss(ids, ids); });
      CHECK(contains(msg, "anomaly in forward"));
      CHECK(contains(msg, "'linear'"));
      CHECK(contains(msg, "'trunk.blocks.1.mlp.fc1'"));
      CHECK(contains(msg, "a leaf"));
      CHECK(contains(msg, "f32[2, 6, 8]"));  // the input shapes
    }
    // Off: no check, the NaN flows to the loss.
    CHECK(std::isnan(lm.loss(ids, ids).item<double>()));
  }
}

TEST_CASE("anomaly mode names an op that makes an infinity out of finite inputs") {
  AnomalyModeGuard on;
  Tensor x = from_vector(std::vector<double>{1.0, 200.0}, {2}).set_requires_grad(true);
  const std::string msg = message_of<AnomalyError>([&] { exp(mul(x, scalar_tensor(10.0, DType::f64))); });
  CHECK(contains(msg, "'exp'"));
  CHECK(contains(msg, "inf"));
  CHECK(contains(msg, "(all finite)"));
  CHECK(contains(msg, "outside any module"));
}

TEST_CASE("anomaly mode names the op for a NaN planted in a backward") {
  AnomalyModeGuard on;
  Tensor x = from_vector(std::vector<double>{0.5, 2.0, 3.0}, {3}).set_requires_grad(true);
  Tensor y;
  {
    ModuleScope scope("blocks.1.attn");
    y = nan_backward(exp(x));
  }
  Tensor loss = sum(mul(y, y));
  const std::string msg = message_of<AnomalyError>([&] { loss.backward(); });
  CHECK(contains(msg, "anomaly in backward"));
  CHECK(contains(msg, "'test_nan_backward'"));
  CHECK(contains(msg, "'blocks.1.attn'"));
  CHECK(contains(msg, "upstream gradient f64[3] (finite)"));
  CHECK(contains(msg, "deliberately broken"));

  // A registered op whose backward overflows on a valid input: sqrt at 0.
  Tensor z = zeros({2}, DType::f64).set_requires_grad(true);
  Tensor s = sum(sqrt(z));
  const std::string msg2 = message_of<AnomalyError>([&] { s.backward(); });
  CHECK(contains(msg2, "'sqrt'"));
  CHECK(contains(msg2, "backward"));
}

TEST_CASE("masks' -inf and fully masked rows are not anomalies; a clean training step passes") {
  for (const char* impl : {"fused", "composite"}) {
    INFO("attention impl ", std::string(impl));
    ModelConfig c = tiny(impl);
    c.num_classes = 3;
    SequenceClassifier clf(c);
    Tensor ids = ids_for(2, 5);
    // Batch 1 pads its last three positions: masked scores are -inf in the composite path.
    Tensor pad = from_vector(std::vector<double>{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, {2, 5}, DType::b8);
    AnomalyModeGuard on;
    Tensor logits = clf.forward(ids, pad);
    CHECK_NOTHROW(sum(logits).backward());
    CausalLM lm(tiny(impl));
    CHECK_NOTHROW(lm.loss(ids, ids).backward());
  }
}

TEST_CASE("anomaly mode is off by default and the guard restores it") {
  CHECK_FALSE(anomaly_mode());
  {
    AnomalyModeGuard on;
    CHECK(anomaly_mode());
    AnomalyModeGuard off(false);
    CHECK_FALSE(anomaly_mode());
  }
  CHECK_FALSE(anomaly_mode());
  CHECK(first_nonfinite(from_vector(std::vector<double>{1.0, 2.0}, {2})) == -1);
  CHECK(first_nonfinite(from_vector(std::vector<double>{1.0, std::numeric_limits<double>::infinity()}, {2})) == 1);
}

// Strict config sections (core/config.h) and every parser built on them: unknown keys, fractions,
// negative seeds, out-of-range and huge sizes fail before anything runs, naming the field.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "attention/local.h"
#include "core/config.h"
#include "optim/schedule.h"
#include "support.h"
#include "tools/audit_targets.h"
#include "tools/layer_io.h"
#include "tools/train_config.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;
using json = nlohmann::json;

namespace {

json train_config() {
  return {{"model", {{"d_model", 16}, {"n_layers", 1}, {"n_heads", 2}, {"max_len", 32}, {"vocab_size", 64}}},
          {"data", {{"seq_len", 16}, {"batch_size", 4}}},
          {"optim", {{"name", "adamw"}, {"lr", 0.01}, {"schedule", {{"kind", "cosine"}, {"warmup_steps", 3}}}}},
          {"steps", 12},
          {"seed", 4}};
}

// The message TrainConfig::from_json gives for the default config with one change.
template <class Edit>
std::string train_error(Edit edit) {
  json j = train_config();
  edit(j);
  return message_of<ValueError>([&] { TrainConfig::from_json(j); });
}

}  // namespace

TEST_CASE("ConfigSection: types, ranges and unknown keys, each naming the field") {
  json j = {{"n", 16.5}, {"m", 64.0},    {"s", -1},  {"x", 2},
            {"b", 1},    {"big", 1e300}, {"c", "z"}, {"u", 18446744073709551615u}};
  ConfigSection s(j, "model");
  CHECK(contains(message_of<ValueError>([&] { s.integer("n", 0, 1, 100); }),
                 "config: model.n: must be an integer in [1, 100], got 16.5"));
  CHECK(s.integer("m", 0, 1, 100) == 64);  // 64.0 is an integer
  CHECK(s.integer("absent", 7, 1, 100) == 7);
  CHECK(contains(message_of<ValueError>([&] { s.seed("s", 0); }), "model.s: must be an integer in [0, "));
  CHECK(s.seed("u", 0) == 18446744073709551615u);
  CHECK(contains(message_of<ValueError>([&] { s.integer("big", 0, 0, std::numeric_limits<int64_t>::max()); }),
                 "model.big: must be an integer >= 0"));
  CHECK(contains(message_of<ValueError>([&] { s.number("x", 0, NumberRange::half_open(0, 1)); }),
                 "model.x: must be a finite number in [0, 1), got 2"));
  CHECK(contains(message_of<ValueError>([&] { s.boolean("b", false); }), "model.b: must be true or false, got 1"));
  CHECK(contains(message_of<ValueError>([&] {
                   s.choice("c", "a", {"a", "b"});
                 }),
                 "model.c: must be one of a, b, got 'z'"));
  ConfigSection t(json{{"kind", 1}, {"blok", 2}}, "optim.schedule");
  t.value("kind");
  t.value("block");
  CHECK(contains(message_of<ValueError>([&] { t.finish(); }),
                 "config: optim.schedule.blok: unknown key (known: kind, block)"));
  CHECK(contains(message_of<ValueError>([&] { ConfigSection(json::array(), "data"); }),
                 "config: data: must be a JSON object"));
  CHECK(!NumberRange::at_least(0).contains(std::nan("")));
  CHECK(!NumberRange::at_least(0).contains(INFINITY));
}

TEST_CASE("attention methods declare their keys: a typo is an error, not the default") {
  // The case: {"type": "local", "blok": 2} trained with block 64.
  std::string e = train_error([](json& j) { j["model"]["attention"] = {{"type", "local"}, {"blok", 2}}; });
  CHECK(contains(e, "config: model.attention.blok: unknown key (known: type, block, scale, impl)"));
  e = message_of<ValueError>([] { parse_attention({{"type", "softmax"}, {"block", 2}}); });
  CHECK(contains(e, "attention.block: unknown key (known: type, scale, impl)"));
  e = message_of<ValueError>([] { parse_attention({{"type", "local"}, {"block", 2.5}}); });
  CHECK(contains(e, "attention.block: must be an integer in [1, "));
  e = message_of<ValueError>([] { parse_attention({{"type", "softmax"}, {"scale", "big"}}); });
  CHECK(contains(e, "attention.scale: must be a finite number > 0"));
  e = message_of<ValueError>([] { parse_attention({{"type", "softmax"}, {"impl", "fast"}}); });
  CHECK(contains(e, "attention.impl: must be one of fused, composite"));
  e = message_of<ValueError>([] { parse_attention({{"type", "no_such_method"}}); });
  CHECK(contains(e,
                 "attention.type: unknown attention type 'no_such_method' (known: entmax, local, routing, sinkformer, "
                 "sinkhorn, softmax)"));
  CHECK_NOTHROW(parse_attention("local"));
  // The layer and audit configs check the method the same way.
  e = message_of<ValueError>([] { LayerConfig::from_json({{"attention", {{"type", "local"}, {"blok", 2}}}}); });
  CHECK(contains(e, "attention.blok: unknown key"));
  e = message_of<ValueError>([] {
    AuditSpec::from_json({{"layer", "attention"}, {"attention", {{"type", "local"}, {"blok", 2}}}});
  });
  CHECK(contains(e, "attention.blok: unknown key"));
}

TEST_CASE("train config: schedule keys, fractions, negative seeds and types name the field") {
  CHECK(contains(train_error([](json& j) { j["optim"]["schedule"]["warmup"] = 5; }),
                 "config: optim.schedule.warmup: unknown key (known: kind, warmup_steps, min_lr)"));
  CHECK(contains(train_error([](json& j) { j["optim"]["schedule"]["warmup_steps"] = 2.5; }),
                 "optim.schedule.warmup_steps: must be an integer"));
  CHECK(contains(train_error([](json& j) { j["model"]["d_model"] = 16.5; }), "model.d_model: must be an integer"));
  CHECK(contains(train_error([](json& j) { j["steps"] = 2.7; }), "config: steps: must be an integer in [1, "));
  CHECK(contains(train_error([](json& j) { j["seed"] = -1; }), "config: seed: must be an integer in [0, "));
  CHECK(contains(train_error([](json& j) { j["model"]["seed"] = -3; }), "model.seed: must be an integer in [0, "));
  CHECK(contains(train_error([](json& j) { j["data"]["batch_size"] = -4; }), "data.batch_size: must be an integer"));
  CHECK(contains(train_error([](json& j) { j["optim"]["lr"] = "fast"; }), "optim.lr: must be a finite number >= 0"));
  CHECK(contains(train_error([](json& j) { j["optim"]["beta2"] = 1.0; }),
                 "optim.beta2: must be a finite number in [0, 1)"));
  CHECK(contains(train_error([](json& j) { j["time_limit_s"] = -1; }), "time_limit_s: must be a finite number >= 0"));
  CHECK(contains(train_error([](json& j) { j["data"]["seq_len"] = 64; }), "data.seq_len: 64 exceeds model.max_len 32"));
  CHECK(
      contains(train_error([](json& j) { j["model"]["n_heads"] = 3; }), "model.n_heads: d_model 16 is not divisible"));
  CHECK(contains(train_error([](json& j) { j["model"]["positions"] = "rotary"; }), "model.positions: must be one of"));
  CHECK(contains(train_error([](json& j) { j["data"] = 3; }), "config: data: must be a JSON object"));
  // Seeds take the whole unsigned 64-bit range.
  json j = train_config();
  j["seed"] = 18446744073709551615u;
  CHECK(TrainConfig::from_json(j).seed == 18446744073709551615u);
  CHECK(TrainConfig::from_json(j).model.seed == 18446744073709551615u);
}

TEST_CASE("layer and audit configs: fractions and negative values name the field") {
  CHECK(contains(message_of<ValueError>([] {
                   LayerConfig::from_json({{"n_heads", 2.5}});
                 }),
                 "config: n_heads: must be an integer in [1, "));
  CHECK(contains(message_of<ValueError>([] { LayerConfig::from_json({{"seed", -1}}); }), "config: seed: must be"));
  CHECK(contains(message_of<ValueError>([] {
                   LayerConfig::from_json({{"casual", true}});
                 }),
                 "config: casual: unknown key (known: attention, causal, n_heads"));
  CHECK(contains(message_of<ValueError>([] {
                   AuditSpec::from_json({{"layer", "mlp"}, {"batch", 1.5}});
                 }),
                 "config: batch: must be an integer"));
  CHECK(contains(message_of<ValueError>([] {
                   AuditSpec::from_json({{"layer", "mlp"}, {"d_model", 7.5}});
                 }),
                 "config: d_model: must be an integer"));
  CHECK(contains(message_of<ValueError>([] {
                   AuditSpec::from_json({{"layer", "mlp"}, {"model", {{"d_ff", 0}}}});
                 }),
                 "config: model.d_ff: must be an integer in [1, "));
  CHECK(contains(message_of<ValueError>([] {
                   AuditSpec::from_json({{"layer", "mlp"}, {"seed", -2}});
                 }),
                 "config: seed: must be"));
  CHECK(contains(message_of<ValueError>([] {
                   LRSchedule::from_json({{"kind", "cosine"}, {"min_lr", 1.0}}, 0.1, 5);
                 }),
                 "optim.schedule.min_lr: must be a finite number in [0, 0.1]"));
}

TEST_CASE("model sizes are bounded, and a model too big for the machine is refused before allocation") {
  // The case: n_layers 1e9 ran until the allocator gave up.
  CHECK(contains(train_error([](json& j) { j["model"]["n_layers"] = 1e9; }),
                 "model.n_layers: must be an integer in [1, 1024], got 1000000000.0"));
  CHECK(contains(train_error([](json& j) { j["model"]["d_model"] = 4611686018427387904; }),
                 "model.d_model: must be an integer in [1, 65536]"));
  CHECK(contains(train_error([](json& j) { j["model"]["vocab_size"] = 4294967297; }), "model.vocab_size: must be"));
  CHECK(contains(train_error([](json& j) { j["data"]["batch_size"] = 1e12; }), "data.batch_size: must be"));
  // Within every bound, yet terabytes of parameters: the message says how much.
  std::string e = message_of<ValueError>([] {
    ModelConfig::from_json({{"vocab_size", kMaxVocab}, {"d_model", kMaxDModel}, {"n_heads", 1}});
  });
  CHECK(contains(e, "config: model: the model has 2302137860096 parameters, 8.4 TiB as f32: more than this machine's"));
  // Training needs more than the weights: a batch's logits of a huge vocabulary alone.
  e = train_error([](json& j) {
    j["model"]["vocab_size"] = kMaxVocab;
    j["model"]["d_model"] = 8;
    j["model"]["max_len"] = 65536;
    j["data"]["seq_len"] = 65536;
    j["data"]["batch_size"] = 4096;
  });
  CHECK(contains(e, "config: training needs at least"));
  CHECK(contains(e, "for one batch's logits"));
}

TEST_CASE("parameter_count matches the parameters the models allocate") {
  for (json j :
       {json{{"vocab_size", 13}, {"d_model", 8}, {"n_layers", 2}, {"n_heads", 2}, {"d_ff", 12}, {"max_len", 9}},
        json{{"vocab_size", 5}, {"d_model", 6}, {"n_heads", 3}, {"positions", "sinusoidal"}, {"num_classes", 4}}}) {
    ModelConfig c = ModelConfig::from_json(j);
    int64_t n = 0;
    if (c.num_classes > 0) {
      for (auto& [name, p] : SequenceClassifier(c).named_parameters()) n += p.numel();
    } else {
      for (auto& [name, p] : CausalLM(c).named_parameters()) n += p.numel();
    }
    CHECK(c.parameter_count() == n);
  }
}

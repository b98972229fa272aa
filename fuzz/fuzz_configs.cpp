// Every JSON config parser through its public entry point, with what its CLI does next that is cheap
// (the optimizer and schedule `train` builds, the attention method a model or layer builds, on tiny
// shapes): model (layers/transformer.h), train (tools/train_config.h), audit (tools/audit_targets.h)
// and layer (tools/layer_io.h) configs, and the experiment configs (tools/sparsefinder_experiment.h).
// An accepted config must survive its own to_json round trip.
#include <cmath>
#include <memory>

#include "attention/attention.h"
#include "fuzz/harness.h"
#include "optim/schedule.h"
#include "tools/audit_targets.h"
#include "tools/layer_io.h"
#include "tools/lm_trainer.h"
#include "tools/sparsefinder_experiment.h"
#include "tools/train_config.h"

using namespace attnlab;

namespace {
// The method a config names, built for 2 heads of width 4 (its keys are parsed; its sizes are not ours).
void build_attention(const nlohmann::json& cfg) {
  make_attention(cfg, AttentionContext{4, 2, std::make_shared<Generator>(0), DType::f32});
}
}  // namespace

ATTNLAB_FUZZ_TARGET(model_config) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return;  // JSON syntax is the JSON library's business; the other targets read files
  ModelConfig c = ModelConfig::from_json(j);
  fuzz::check(ModelConfig::from_json(c.to_json()).to_json() == c.to_json(), "to_json round-trips");
  build_attention(c.attention);
}

ATTNLAB_FUZZ_TARGET(train_config) {
  TrainConfig c = TrainConfig::from_file(fuzz::write_input("train.json", data, size));
  Tensor p = zeros({2}).set_requires_grad(true);
  make_optimizer(c.optim, {p});
  LRSchedule s = LRSchedule::from_json(c.optim.schedule, c.optim.lr, c.steps);
  for (int64_t step : {int64_t(0), s.warmup_steps, c.steps - 1}) (void)s.at(step);
  build_attention(c.model.attention);
}

ATTNLAB_FUZZ_TARGET(audit_config) {
  AuditSpec s = AuditSpec::from_file(fuzz::write_input("audit.json", data, size));
  build_attention(s.model.attention);
}

ATTNLAB_FUZZ_TARGET(layer_config) {
  LayerConfig c = LayerConfig::from_file(fuzz::write_input("layer.json", data, size));
  fuzz::check(LayerConfig::from_json(c.to_json()).to_json() == c.to_json(), "to_json round-trips");
  build_attention(c.attention);
}

ATTNLAB_FUZZ_TARGET(experiment_config) {
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return;
  SparsefinderConfig c = parse_sparsefinder_config(j);
  fuzz::check(!c.run.empty() && c.rank >= 1 && c.batch >= 1 && c.block >= 1, "accepted values are in range");
  for (int64_t top : c.top_clusters)
    for (int64_t k : c.clusters) fuzz::check(top <= k, "top clusters never exceed the clusters");
}

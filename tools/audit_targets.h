// What `attnlab audit` audits, built from a JSON config: one layer or a whole model, in float64, on
// a tiny seeded input, as a re-runnable loss function for audit_gradients (autograd/audit.h).
//
// Config (every key optional; configs/audit/*.json):
//   {"layer": "block",                      linear | layer_norm | mlp | attention | mha | block |
//                                           causal_lm | classifier
//    "model": {"d_model": 8, "n_heads": 2, ...},   a ModelConfig (layers/transformer.h); its keys may
//                                           also sit at the top level. Tiny defaults: vocab_size 11,
//                                           d_model 8, n_layers 1, n_heads 2, max_len 16 (d_ff 4 d_model)
//    "batch": 2, "seq_len": 5,              the input's shape
//    "causal": true, "padding": false,      masks for attention / mha / block (padding: the last
//                                           third of the last sequence is padded; classifier too)
//    "seed": 0,                             inputs, targets and the loss projection; parameters use
//                                           the model's seed, as CausalLM does
//    "entries": 6, "eps": 1e-6, "atol": 1e-6, "rtol": 1e-4,   audit settings (flags override)
//    "comment": "..."}
// A training config (one with "data", "optim" or "steps") is accepted too: its "model" section is
// audited as given (ModelConfig defaults, not the tiny ones), as a causal LM unless it has
// num_classes, and the rest is ignored.
//
// Layers are audited with loss = Σ out ⊙ r for a fixed seeded r ~ N(0, 1); the models with their
// own loss (mean cross-entropy against seeded targets). Modules run in eval mode (no dropout).
// Parameters are initialised as the modules do, from the model's seed; parameters that start
// constant (LayerNorm's weight 1 and bias 0) are then jittered by N(0, 0.1²), so the audit does not
// run at a special point where a wrong formula could still give the right number.
#pragma once
#include <functional>
#include <iosfwd>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/audit.h"
#include "layers/transformer.h"

namespace attnlab {

struct AuditSpec {
  std::string layer;
  ModelConfig model;
  int64_t batch = 2, seq_len = 5;
  bool causal = true, padding = false;
  uint64_t seed = 0;
  AuditOptions options;
  bool training_config = false;  // read from a training config's "model" section
  nlohmann::json source;

  // layer (when not empty) overrides the config's "layer". ValueError on unknown keys or bad values.
  static AuditSpec from_json(const nlohmann::json& j, const std::string& layer = "");
  static AuditSpec from_file(const std::string& path, const std::string& layer = "");
};

struct AuditTarget {
  std::string layer;
  std::string description;  // one line: the layer, its sizes, the input
  std::function<Tensor()> loss;
  std::map<const TensorImpl*, std::string> leaf_names;  // inputs and parameters, by name
};

std::vector<std::string> audit_layer_names();
AuditTarget make_audit_target(const AuditSpec& spec);

// `attnlab audit` itself (tools/cli_audit.cpp is a thin main around it, so tests can call it):
// args without the program name; ansi: bold/colour for the first failure. Returns the exit code:
// 0 every node agrees, 1 a node disagrees or an error, 2 bad usage.
int audit_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, bool ansi);

}  // namespace attnlab

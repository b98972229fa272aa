#include "tools/audit_targets.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <memory>
#include <ostream>

#include "attention/attention.h"
#include "autograd/grad_mode.h"
#include "core/config.h"
#include "tools/cli_common.h"
#include "tools/train_config.h"

namespace attnlab {

namespace {

const char* kOp = "audit config";

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

const std::vector<std::string>& model_keys() {
  static const std::vector<std::string> k = {"vocab_size", "d_model",   "n_layers",   "n_heads",
                                             "d_ff",       "max_len",   "dropout",    "positions",
                                             "activation", "attention", "num_classes", "loss"};
  return k;
}

bool contains(const std::vector<std::string>& xs, const std::string& x) {
  return std::find(xs.begin(), xs.end(), x) != xs.end();
}

}  // namespace

std::vector<std::string> audit_layer_names() {
  return {"linear", "layer_norm", "mlp", "attention", "mha", "block", "causal_lm", "classifier"};
}

// ---- config ------------------------------------------------------------------------------------

AuditSpec AuditSpec::from_json(const nlohmann::json& j, const std::string& layer) {
  if (!j.is_object()) fail<ValueError>(kOp, "expected a JSON object, got ", j.dump());
  AuditSpec s;
  s.source = j;
  s.training_config = j.contains("model") && (j.contains("data") || j.contains("optim") || j.contains("steps"));
  if (s.training_config) {
    s.model = TrainConfig::from_json(j).model;  // the whole training config is checked
  } else {
    ConfigSection c(j, "");
    s.layer = c.choice("layer", "", audit_layer_names());
    s.batch = c.integer("batch", s.batch, 1, kMaxBatch);
    s.seq_len = c.integer("seq_len", s.seq_len, 1, kMaxLen);
    s.causal = c.boolean("causal", s.causal);
    s.padding = c.boolean("padding", s.padding);
    s.seed = c.seed("seed", s.seed);
    s.options.entries = c.integer("entries", s.options.entries, 0, std::numeric_limits<int64_t>::max());
    s.options.eps = c.number("eps", s.options.eps, NumberRange::above(0));
    s.options.atol = c.number("atol", s.options.atol, NumberRange::at_least(0));
    s.options.rtol = c.number("rtol", s.options.rtol, NumberRange::at_least(0));
    c.string("comment", "");
    // The tiny defaults, then the "model" section, then model keys given at the top level.
    nlohmann::json model = {{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2}, {"max_len", 16}};
    const nlohmann::json nested = c.object("model");
    for (auto& [key, value] : nested.items()) model[key] = value;
    bool top_level_keys = false;
    for (const std::string& key : model_keys()) {
      const nlohmann::json* v = c.value(key);
      if (!v) continue;
      if (nested.contains(key)) c.fail(key, "given both at the top level and in 'model'");
      model[key] = *v;
      top_level_keys = true;
    }
    c.finish();
    if (c.has("seed") && !model.contains("seed")) model["seed"] = s.seed;
    s.model = ModelConfig::from_json(model, top_level_keys ? "" : "model");
  }
  if (!layer.empty()) s.layer = layer;
  if (s.layer.empty()) {
    if (!j.contains("model") && !s.training_config)
      fail<ValueError>(kOp, "no layer to audit: set \"layer\" (", join(audit_layer_names()), ") or pass --layer");
    s.layer = s.model.num_classes > 0 ? "classifier" : "causal_lm";
  }
  if (!contains(audit_layer_names(), s.layer))
    fail<ValueError>(kOp, "unknown layer '", s.layer, "' (known: ", join(audit_layer_names()), ")");
  if (s.seq_len > s.model.max_len)
    fail<ValueError>("config", "seq_len: ", s.seq_len, " exceeds the model's max_len ", s.model.max_len);
  return s;
}

AuditSpec AuditSpec::from_file(const std::string& path, const std::string& layer) {
  std::ifstream f(path);
  if (!f) fail<IOError>(kOp, "cannot open '", path, "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>(kOp, "'", path, "' is not valid JSON: ", e.what());
  }
  try {
    return from_json(j, layer);
  } catch (const ValueError& e) {
    throw ValueError(cat(path, ": ", e.what()));
  }
}

// ---- targets -----------------------------------------------------------------------------------

namespace {

// Parameters that start constant (LayerNorm: 1 and 0) get seeded N(0, 0.1²) noise on top.
void jitter_constant_parameters(Module& m, Generator& g) {
  NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) {
    std::vector<double> v = p.to_vector<double>();
    if (v.size() < 2 || std::any_of(v.begin(), v.end(), [&](double x) { return x != v[0]; })) continue;
    Tensor(p).add_(mul(randn(p.shape(), p.dtype(), &g), scalar_tensor(0.1, p.dtype())));
  }
}

void name_parameters(const Module& m, const std::string& prefix, std::map<const TensorImpl*, std::string>& names) {
  for (auto& [name, p] : m.named_parameters()) names[p.impl_ptr().get()] = prefix + name;
}

Tensor leaf(const Shape& s, Generator& g, const std::string& name, std::map<const TensorImpl*, std::string>& names) {
  Tensor t = randn(s, DType::f64, &g);
  t.set_requires_grad(true);
  names[t.impl_ptr().get()] = name;
  return t;
}

Tensor padding_mask(int64_t B, int64_t T) {
  std::vector<double> v(size_t(B * T), 0.0);
  const int64_t padded = std::max<int64_t>(1, T / 3);
  for (int64_t t = T - padded; t < T; ++t) v[size_t((B - 1) * T + t)] = 1.0;
  return from_vector(v, {B, T}, DType::b8);
}

std::string attention_str(const nlohmann::json& a) { return a.is_string() ? a.get<std::string>() : a.dump(); }

}  // namespace

AuditTarget make_audit_target(const AuditSpec& spec) {
  const ModelConfig& c = spec.model;
  const DType f64 = DType::f64;
  const int64_t B = spec.batch, T = spec.seq_len, D = c.d_model, H = c.n_heads, dh = c.d_model / c.n_heads;
  Generator init_gen(c.seed, 0);
  auto noise_gen = std::make_shared<Generator>(c.seed, 1);
  Generator data_gen(spec.seed, 2);
  Generator jitter_gen(c.seed, 3);
  AuditTarget t;
  t.layer = spec.layer;

  AttentionMask mask;
  mask.causal = spec.causal;
  if (spec.padding) mask.key_padding = padding_mask(B, T);
  const std::string mask_str = std::string(spec.causal ? "causal" : "not causal") + (spec.padding ? ", padded" : "");

  // A layer: loss = Σ forward(inputs) ⊙ r.
  auto as_layer = [&](std::shared_ptr<Module> m, std::function<Tensor()> forward, const std::string& what) {
    m->eval();
    jitter_constant_parameters(*m, jitter_gen);
    name_parameters(*m, "", t.leaf_names);
    Shape out_shape;
    {
      NoGradGuard ng;
      out_shape = forward().shape();
    }
    Tensor r = randn(out_shape, f64, &data_gen);
    t.loss = [m, forward, r] { return sum(mul(forward(), r)); };
    t.description = cat(what, "; loss = sum(out * r), r ~ N(0, 1) ", shape_str(out_shape), "; seed ", spec.seed);
  };

  if (spec.layer == "linear") {
    auto m = std::make_shared<Linear>(D, c.d_ff, true, init_gen, f64);
    Tensor x = leaf({B, T, D}, data_gen, "x", t.leaf_names);
    as_layer(
        m, [m, x] { return m->forward(x); }, cat("linear ", D, " -> ", c.d_ff, " on x f64", shape_str(x.shape())));
  } else if (spec.layer == "layer_norm") {
    auto m = std::make_shared<LayerNorm>(D, 1e-5, f64);
    Tensor x = leaf({B, T, D}, data_gen, "x", t.leaf_names);
    as_layer(
        m, [m, x] { return m->forward(x); }, cat("layer_norm ", D, " on x f64", shape_str(x.shape())));
  } else if (spec.layer == "mlp") {
    auto m = std::make_shared<MLP>(D, c.d_ff, parse_activation(c.activation), 0.0, noise_gen, init_gen, f64);
    Tensor x = leaf({B, T, D}, data_gen, "x", t.leaf_names);
    as_layer(
        m, [m, x] { return m->forward(x); },
        cat("mlp ", D, " -> ", c.d_ff, " (", c.activation, ") -> ", D, " on x f64", shape_str(x.shape())));
  } else if (spec.layer == "attention") {
    std::shared_ptr<AttentionMethod> m = make_attention(c.attention, AttentionContext{dh, H, noise_gen, f64});
    Tensor q = leaf({B, H, T, dh}, data_gen, "q", t.leaf_names);
    Tensor k = leaf({B, H, T, dh}, data_gen, "k", t.leaf_names);
    Tensor v = leaf({B, H, T, dh}, data_gen, "v", t.leaf_names);
    as_layer(
        m, [m, q, k, v, mask] { return m->forward(q, k, v, mask); },
        cat("attention ", attention_str(c.attention), " (", mask_str, ") on q, k, v f64", shape_str(q.shape())));
  } else if (spec.layer == "mha") {
    auto m = std::make_shared<MultiHeadAttention>(D, H, c.attention, 0.0, noise_gen, init_gen, f64);
    Tensor x = leaf({B, T, D}, data_gen, "x", t.leaf_names);
    as_layer(
        m, [m, x, mask] { return m->forward(x, mask); },
        cat("mha d_model ", D, ", ", H, " heads, attention ", attention_str(c.attention), " (", mask_str, ") on x f64",
            shape_str(x.shape())));
  } else if (spec.layer == "block") {
    auto m = std::make_shared<TransformerBlock>(c, noise_gen, init_gen, f64);
    Tensor x = leaf({B, T, D}, data_gen, "x", t.leaf_names);
    as_layer(
        m, [m, x, mask] { return m->forward(x, mask); },
        cat("block d_model ", D, ", ", H, " heads, d_ff ", c.d_ff, ", ", c.activation, ", attention ",
            attention_str(c.attention), " (", mask_str, ") on x f64", shape_str(x.shape())));
  } else if (spec.layer == "causal_lm" || spec.layer == "classifier") {
    const bool lm = spec.layer == "causal_lm";
    ModelConfig mc = c;
    if (!lm && mc.num_classes <= 0) mc.num_classes = 3;
    Tensor ids = randint(0, mc.vocab_size, {B, T}, &data_gen);
    const std::string sizes =
        cat("d_model ", D, ", ", mc.n_layers, mc.n_layers == 1 ? " layer, " : " layers, ", H, " heads, d_ff ", mc.d_ff,
            ", vocab ", mc.vocab_size, ", ", mc.positions, " positions, attention ", attention_str(mc.attention));
    std::shared_ptr<Module> m;
    if (lm) {
      auto model = std::make_shared<CausalLM>(mc, f64);
      Tensor targets = randint(0, mc.vocab_size, {B, T}, &data_gen);
      t.loss = [model, ids, targets] { return model->loss(ids, targets); };
      t.description = cat("causal_lm (", sizes, ") on ids ", shape_str(ids.shape()),
                          "; loss = mean cross-entropy against seeded targets; seed ", spec.seed);
      m = model;
    } else {
      auto model = std::make_shared<SequenceClassifier>(mc, f64);
      Tensor labels = randint(0, mc.num_classes, {B}, &data_gen);
      Tensor pad = spec.padding ? padding_mask(B, T) : Tensor();
      t.loss = [model, ids, labels, pad] { return model->loss(ids, labels, pad); };
      t.description =
          cat("classifier (", sizes, ", ", mc.num_classes, " classes", spec.padding ? ", padded" : "", ") on ids ",
              shape_str(ids.shape()), "; loss = ", mc.loss.is_string() ? mc.loss.get<std::string>() : mc.loss.dump(),
              " against seeded labels; seed ", spec.seed);
      m = model;
    }
    m->eval();
    jitter_constant_parameters(*m, jitter_gen);
    name_parameters(*m, "", t.leaf_names);
  } else {
    fail<ValueError>("audit", "unknown layer '", spec.layer, "' (known: ", join(audit_layer_names()), ")");
  }
  return t;
}

// ---- the command -------------------------------------------------------------------------------

namespace {

const char* kDescription =
    "  Runs a model or one layer on a tiny seeded float64 input and walks its tape node by node in\n"
    "  backward order: per node the op, its input and output shapes, a summary of its forward value, and\n"
    "  per input the gradient its backward produced against a central finite difference of the loss\n"
    "  with respect to that input. Stops at the first node whose backward disagrees (that node is the\n"
    "  broken one) unless --all.\n"
    "  Exit status: 0 every node agrees, 1 a node disagrees (or an error), 2 bad usage.\n"
    "  Method and output: docs/audit.md.";

}  // namespace

int audit_main(const std::vector<std::string>& arg_list, std::ostream& out, std::ostream& err, bool ansi) {
  cli::Command cmd("attnlab audit",
                   "usage: attnlab audit --config FILE.json [--layer NAME] [--json OUT.json] [--entries K] [--all]\n"
                   "                     [--eps E] [--atol A] [--rtol R]\n",
                   kDescription);
  std::string config, layer, json_path;
  int64_t entries = 0;
  double eps = 0, atol = 0, rtol = 0;
  bool all = false;
  cmd.text("--config", config,
           "an audit config (configs/audit/*.json) or a training config, whose \"model\" is audited")
      ->type_name("FILE")
      ->required();
  cmd.choice("--layer", layer, audit_layer_names(), "what to audit, overriding the config");
  cmd.text("--json", json_path, "also write the whole trace as JSON")->type_name("OUT");
  cmd.integer("--entries", entries, 0, std::numeric_limits<int64_t>::max(),
              "entries checked per input tensor (default 6: the largest |gradient| ones and\n"
              "seeded random ones; 0: every entry)")
      ->type_name("K");
  cmd.number("--eps", eps, NumberRange::above(0), "finite-difference step (default 1e-6)")->type_name("E");
  cmd.number("--atol", atol, NumberRange::at_least(0),
             "an entry passes when |analytic - numeric| <= A + R |numeric| (default 1e-6)")
      ->type_name("A");
  cmd.number("--rtol", rtol, NumberRange::at_least(0), "(default 1e-4)")->type_name("R");
  cmd.flag("--all", all, "keep checking after the first disagreement");
  cmd.detect_anomaly_flag();
  return cmd.run(arg_list, out, err, [&] {
    AuditSpec spec = AuditSpec::from_file(config, layer);
    AuditOptions opts = spec.options;  // flags override the config
    if (cmd.given("--entries")) opts.entries = entries;
    if (cmd.given("--eps")) opts.eps = eps;
    if (cmd.given("--atol")) opts.atol = atol;
    if (cmd.given("--rtol")) opts.rtol = rtol;
    opts.seed = spec.seed;  // the config's seed also picks the random entries
    opts.all = all;

    AuditTarget target = make_audit_target(spec);
    AuditReport report = audit_gradients(target.loss, opts, target.leaf_names, target.description);
    out << report.text(ansi);
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      if (!f) fail<IOError>("audit", "cannot write '", json_path, "'");
      nlohmann::json j = report.to_json();
      j["layer"] = target.layer;
      j["config"] = spec.source;
      f << j.dump(1) << "\n";
      if (!f) fail<IOError>("audit", "failed writing '", json_path, "'");
      out << "trace written to " << json_path << "\n";
    }
    return report.ok() ? 0 : 1;
  });
}

}  // namespace attnlab

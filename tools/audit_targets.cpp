#include "tools/audit_targets.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <ostream>

#include "attention/attention.h"
#include "autograd/grad_mode.h"
#include "tools/cli_common.h"

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
  nlohmann::json model = nlohmann::json::object();
  s.training_config = j.contains("model") && (j.contains("data") || j.contains("optim") || j.contains("steps"));
  try {
    if (s.training_config) {
      model = j["model"];
      if (!model.is_object()) fail<ValueError>(kOp, "'model' must be an object, got ", model.dump());
    } else {
      static const std::vector<std::string> own = {"layer", "model",   "batch", "seq_len", "causal", "padding",
                                                   "seed",  "entries", "eps",   "atol",    "rtol",   "comment"};
      for (auto& [key, value] : j.items())
        if (!contains(own, key) && !contains(model_keys(), key))
          fail<ValueError>(kOp, "unknown key '", key, "' (known: ", join(own), ", and the model keys ",
                           join(model_keys()), ")");
      model = {{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2}, {"max_len", 16}};
      if (j.contains("model")) {
        if (!j["model"].is_object()) fail<ValueError>(kOp, "'model' must be an object, got ", j["model"].dump());
        for (auto& [key, value] : j["model"].items()) model[key] = value;
      }
      for (const std::string& key : model_keys()) {
        if (!j.contains(key)) continue;
        if (j.contains("model") && j["model"].contains(key))
          fail<ValueError>(kOp, "'", key, "' is given both at the top level and in 'model'");
        model[key] = j[key];
      }
      if (j.contains("seed") && !model.contains("seed")) model["seed"] = j["seed"];
      // d_ff follows d_model unless given (ModelConfig's rule, applied to the tiny default too).
      if (!model.contains("d_ff") && model.contains("d_model") && model["d_model"].is_number_integer())
        model["d_ff"] = 4 * model["d_model"].get<int64_t>();
      auto get_int = [&](const char* key, int64_t dflt, int64_t lo) {
        if (!j.contains(key)) return dflt;
        if (!j[key].is_number_integer() || j[key].get<int64_t>() < lo)
          fail<ValueError>(kOp, "'", key, "' must be an integer >= ", lo, ", got ", j[key].dump());
        return j[key].get<int64_t>();
      };
      auto get_bool = [&](const char* key, bool dflt) {
        if (!j.contains(key)) return dflt;
        if (!j[key].is_boolean()) fail<ValueError>(kOp, "'", key, "' must be true or false, got ", j[key].dump());
        return j[key].get<bool>();
      };
      auto get_num = [&](const char* key, double dflt) {
        if (!j.contains(key)) return dflt;
        if (!j[key].is_number() || !(j[key].get<double>() >= 0))
          fail<ValueError>(kOp, "'", key, "' must be a non-negative number, got ", j[key].dump());
        return j[key].get<double>();
      };
      s.batch = get_int("batch", s.batch, 1);
      s.seq_len = get_int("seq_len", s.seq_len, 1);
      s.causal = get_bool("causal", s.causal);
      s.padding = get_bool("padding", s.padding);
      s.seed = uint64_t(get_int("seed", 0, 0));
      s.options.entries = get_int("entries", s.options.entries, 0);
      s.options.eps = get_num("eps", s.options.eps);
      s.options.atol = get_num("atol", s.options.atol);
      s.options.rtol = get_num("rtol", s.options.rtol);
      if (!(s.options.eps > 0)) fail<ValueError>(kOp, "'eps' must be positive");
      if (j.contains("layer")) {
        if (!j["layer"].is_string()) fail<ValueError>(kOp, "'layer' must be a string, got ", j["layer"].dump());
        s.layer = j["layer"].get<std::string>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>(kOp, "wrong value type: ", e.what());
  }
  s.model = ModelConfig::from_json(model);
  if (!layer.empty()) s.layer = layer;
  if (s.layer.empty()) {
    if (!j.contains("model") && !s.training_config)
      fail<ValueError>(kOp, "no layer to audit: set \"layer\" (", join(audit_layer_names()), ") or pass --layer");
    s.layer = s.model.num_classes > 0 ? "classifier" : "causal_lm";
  }
  if (!contains(audit_layer_names(), s.layer))
    fail<ValueError>(kOp, "unknown layer '", s.layer, "' (known: ", join(audit_layer_names()), ")");
  if (s.seq_len > s.model.max_len)
    fail<ValueError>(kOp, "seq_len ", s.seq_len, " exceeds the model's max_len ", s.model.max_len);
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

const char* kUsage =
    "usage: attnlab audit --config FILE.json [--layer NAME] [--json OUT.json] [--entries K] [--all]\n"
    "                     [--eps E] [--atol A] [--rtol R]\n"
    "  Runs a model or one layer on a tiny seeded float64 input and walks its tape node by node in\n"
    "  backward order: per node the op, its input and output shapes, a summary of its forward value, and\n"
    "  per input the gradient its backward produced against a central finite difference of the loss\n"
    "  with respect to that input. Stops at the first node whose backward disagrees (that node is the\n"
    "  broken one) unless --all.\n"
    "    --config FILE   an audit config (configs/audit/*.json) or a training config, whose \"model\" is audited\n"
    "    --layer NAME    what to audit, overriding the config: linear, layer_norm, mlp, attention, mha,\n"
    "                    block, causal_lm, classifier\n"
    "    --json OUT      also write the whole trace as JSON\n"
    "    --entries K     entries checked per input tensor (default 6: the largest |gradient| ones and\n"
    "                    seeded random ones; 0: every entry)\n"
    "    --eps E         finite-difference step (default 1e-6)\n"
    "    --atol A        an entry passes when |analytic - numeric| <= A + R |numeric| (default 1e-6)\n"
    "    --rtol R        (default 1e-4)\n"
    "    --all           keep checking after the first disagreement\n"
    "  Exit status: 0 every node agrees, 1 a node disagrees (or an error), 2 bad usage.\n"
    "  Method and output: docs/audit.md.\n";

}  // namespace

int audit_main(const std::vector<std::string>& arg_list, std::ostream& out, std::ostream& err, bool ansi) {
  try {
    std::vector<std::string> storage = {"attnlab-audit"};
    storage.insert(storage.end(), arg_list.begin(), arg_list.end());
    std::vector<char*> argv;
    for (std::string& s : storage) argv.push_back(s.data());
    cli::Args args(int(argv.size()), argv.data(), {"config", "layer", "json", "entries", "eps", "atol", "rtol"},
                   {"all"});
    if (args.flag("help")) {
      out << kUsage;
      return 0;
    }
    if (!args.positional.empty()) throw cli::UsageError("unexpected argument '" + args.positional[0] + "'");
    if (!args.has("config")) throw cli::UsageError("--config is required");
    const std::string layer = args.str("layer");
    if (!layer.empty() && !contains(audit_layer_names(), layer))
      throw cli::UsageError(cat("unknown layer '", layer, "' (known: ", join(audit_layer_names()), ")"));
    auto integer = [&](const char* name, double v, double lo) {
      if (v != std::floor(v) || v < lo) throw cli::UsageError(cat("--", name, " expects an integer >= ", lo));
      return int64_t(v);
    };
    AuditSpec spec = AuditSpec::from_file(args.str("config"), layer);
    AuditOptions opts = spec.options;
    opts.entries = integer("entries", args.num("entries", double(opts.entries)), 0);
    opts.eps = args.num("eps", opts.eps);
    opts.atol = args.num("atol", opts.atol);
    opts.rtol = args.num("rtol", opts.rtol);
    opts.seed = spec.seed;  // the config's seed also picks the random entries
    opts.all = args.flag("all");
    if (!(opts.eps > 0)) throw cli::UsageError("--eps must be positive");
    if (!(opts.atol >= 0) || !(opts.rtol >= 0)) throw cli::UsageError("--atol and --rtol must be >= 0");

    AuditTarget target = make_audit_target(spec);
    AuditReport report = audit_gradients(target.loss, opts, target.leaf_names, target.description);
    out << report.text(ansi);
    if (args.has("json")) {
      const std::string path = args.str("json");
      std::ofstream f(path);
      if (!f) fail<IOError>("audit", "cannot write '", path, "'");
      nlohmann::json j = report.to_json();
      j["layer"] = target.layer;
      j["config"] = spec.source;
      f << j.dump(1) << "\n";
      if (!f) fail<IOError>("audit", "failed writing '", path, "'");
      out << "trace written to " << path << "\n";
    }
    return report.ok() ? 0 : 1;
  } catch (const cli::UsageError& e) {
    err << "attnlab audit: " << e.what() << "\n\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    err << "attnlab audit: error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace attnlab

#include "tools/layer_io.h"

#include <algorithm>
#include <fstream>
#include <memory>

#include "attention/attention.h"
#include "core/safetensors.h"
#include "layers/transformer.h"

namespace attnlab {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// Outputs of an earlier run found in an inputs file: ignored, so an outputs file can be re-run.
bool is_output_name(const std::string& name) {
  return name == "out" || starts_with(name, "grad.") || starts_with(name, "internals.");
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------

LayerConfig LayerConfig::from_json(const nlohmann::json& j) {
  const char* op = "layer config";
  if (!j.is_object()) fail<ValueError>(op, "expected a JSON object, got ", j.dump());
  static const std::vector<std::string> known = {"attention", "causal",  "n_heads", "d_model",
                                                 "seed",      "dropout", "train",   "comment"};
  for (auto& [key, value] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      fail<ValueError>(op, "unknown key '", key, "' (known: ", join(known), ")");
  LayerConfig c;
  c.source = j;
  auto get_bool = [&](const char* key, bool dflt) {
    if (!j.contains(key)) return dflt;
    if (!j[key].is_boolean()) fail<ValueError>(op, "'", key, "' must be true or false, got ", j[key].dump());
    return j[key].get<bool>();
  };
  auto get_int = [&](const char* key, int64_t dflt) {
    if (!j.contains(key)) return dflt;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0)
      fail<ValueError>(op, "'", key, "' must be a non-negative integer, got ", j[key].dump());
    return j[key].get<int64_t>();
  };
  if (j.contains("attention")) c.attention = j["attention"];
  const std::string type = attention_type(c.attention, op);
  const auto types = attention_types();
  if (std::find(types.begin(), types.end(), type) == types.end())
    fail<ValueError>(op, "unknown attention type '", type, "' (known: ", join(types), ")");
  c.causal = get_bool("causal", false);
  c.train = get_bool("train", false);
  c.n_heads = get_int("n_heads", 0);
  c.d_model = get_int("d_model", 0);
  if (j.contains("n_heads") && c.n_heads == 0) fail<ValueError>(op, "'n_heads' must be positive");
  if (j.contains("d_model") && c.d_model == 0) fail<ValueError>(op, "'d_model' must be positive");
  c.seed = uint64_t(get_int("seed", 0));
  if (j.contains("dropout")) {
    if (!j["dropout"].is_number()) fail<ValueError>(op, "'dropout' must be a number, got ", j["dropout"].dump());
    c.dropout = j["dropout"].get<double>();
    if (!(c.dropout >= 0 && c.dropout < 1)) fail<ValueError>(op, "'dropout' must be in [0, 1), got ", c.dropout);
  }
  if (j.contains("comment") && !j["comment"].is_string()) fail<ValueError>(op, "'comment' must be a string");
  return c;
}

nlohmann::json LayerConfig::to_json() const {
  nlohmann::json j = {
      {"attention", attention}, {"causal", causal}, {"seed", seed}, {"dropout", dropout}, {"train", train}};
  if (n_heads) j["n_heads"] = n_heads;
  if (d_model) j["d_model"] = d_model;
  return j;
}

LayerConfig LayerConfig::from_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail<IOError>("layer config", "cannot open '", path, "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("layer config", "'", path, "' is not valid JSON: ", e.what());
  }
  try {
    return from_json(j);
  } catch (const ValueError& e) {
    throw ValueError(cat(path, ": ", e.what()));
  }
}

// ---- running a layer ---------------------------------------------------------------------------

std::vector<std::string> layer_names() { return {"attention", "mha"}; }

std::vector<std::string> layer_input_names(const std::string& layer) {
  if (layer == "attention") return {"q", "k", "v", "key_padding", "grad_out"};
  if (layer == "mha") return {"x", "key_padding", "grad_out"};
  fail<ValueError>("layer", "unknown layer '", layer, "' (known: ", join(layer_names()), ")");
}

TensorMap run_layer(const std::string& layer, const LayerConfig& cfg, const TensorMap& inputs,
                    const std::string& where) {
  const std::vector<std::string> input_names = layer_input_names(layer);  // throws on an unknown layer
  const std::string opname = "layer " + layer;
  const char* op = opname.c_str();

  // Split the file's tensors into the layer's inputs and (candidate) parameters.
  TensorMap data, given_params;
  for (const auto& [name, t] : inputs) {
    if (is_output_name(name)) continue;
    if (std::find(input_names.begin(), input_names.end(), name) != input_names.end())
      data[name] = t;
    else
      given_params[name] = t;
  }
  auto need = [&](const std::string& name, const char* what) -> Tensor {
    auto it = data.find(name);
    if (it == data.end()) fail<ValueError>(op, where, ": missing tensor '", name, "' (", what, ")");
    return it->second;
  };

  const bool is_mha = layer == "mha";
  Tensor q, k, v, x;
  int64_t B = 0, H = 0, Tk = 0, dh = 0, D = 0;
  if (!is_mha) {
    q = need("q", "queries, [B, H, Tq, dh]");
    k = need("k", "keys, [B, H, Tk, dh]");
    v = need("v", "values, [B, H, Tk, dh]");
    if (!is_floating(q.dtype())) fail<DTypeError>(op, where, ": 'q' must be f32 or f64, got ", describe(q));
    if (q.dim() != 4) fail<ShapeError>(op, where, ": 'q' must be [B, H, Tq, dh], got ", describe(q));
    B = q.size(0), H = q.size(1), dh = q.size(3);
    for (const auto& [name, t] : {std::pair<const char*, Tensor>{"k", k}, {"v", v}}) {
      if (t.dtype() != q.dtype())
        fail<DTypeError>(op, where, ": '", name, "' is ", describe(t), " but 'q' is ", describe(q),
                         " (one dtype for all)");
      if (t.dim() != 4 || t.size(0) != B || t.size(1) != H || t.size(3) != dh)
        fail<ShapeError>(op, where, ": '", name, "' must be [B, H, Tk, dh] = [", B, ", ", H, ", Tk, ", dh,
                         "] to match 'q' ", describe(q), ", got ", describe(t));
    }
    if (k.shape() != v.shape())
      fail<ShapeError>(op, where, ": 'k' ", describe(k), " and 'v' ", describe(v), " must have the same shape");
    Tk = k.size(2);
    if (cfg.n_heads && cfg.n_heads != H)
      fail<ShapeError>(op, where, ": the config says n_heads ", cfg.n_heads, " but 'q' ", describe(q), " has ", H,
                       " heads");
    if (cfg.d_model && cfg.d_model != H * dh)
      fail<ShapeError>(op, where, ": the config says d_model ", cfg.d_model, " but 'q' ", describe(q),
                       " has H*dh = ", H * dh);
  } else {
    x = need("x", "the layer input, [B, T, D]");
    if (!is_floating(x.dtype())) fail<DTypeError>(op, where, ": 'x' must be f32 or f64, got ", describe(x));
    if (x.dim() != 3) fail<ShapeError>(op, where, ": 'x' must be [B, T, D], got ", describe(x));
    B = x.size(0), Tk = x.size(1), D = x.size(2);
    if (cfg.n_heads == 0) fail<ValueError>(op, "the config must give n_heads for the mha layer");
    if (D % cfg.n_heads != 0)
      fail<ShapeError>(op, where, ": 'x' ", describe(x), " has D = ", D, ", not divisible by n_heads ", cfg.n_heads);
    if (cfg.d_model && cfg.d_model != D)
      fail<ShapeError>(op, where, ": the config says d_model ", cfg.d_model, " but 'x' is ", describe(x));
    H = cfg.n_heads;
    dh = D / H;
  }
  const DType dt = is_mha ? x.dtype() : q.dtype();
  const char* primary = is_mha ? "'x'" : "'q'";

  AttentionMask mask;
  mask.causal = cfg.causal;
  if (data.count("key_padding")) {
    Tensor kp = data["key_padding"];
    if (kp.dtype() != DType::b8)
      fail<DTypeError>(op, where, ": 'key_padding' must be b8 (safetensors BOOL), true = padded key; got ",
                       describe(kp));
    if (kp.shape() != Shape{B, Tk})
      fail<ShapeError>(op, where, ": 'key_padding' must be [B, Tk] = [", B, ", ", Tk, "], got ", describe(kp));
    mask.key_padding = kp;
  }

  // The module, initialised from the seed; given parameters then replace the initial values.
  auto noise_gen = std::make_shared<Generator>(cfg.seed, 1);
  Generator init_gen(cfg.seed, 0);
  std::shared_ptr<Module> module;
  std::shared_ptr<AttentionMethod> method;
  std::shared_ptr<MultiHeadAttention> mha;
  if (is_mha) {
    mha = std::make_shared<MultiHeadAttention>(D, H, cfg.attention, cfg.dropout, noise_gen, init_gen, dt);
    method = mha->method;
    module = mha;
  } else {
    method = make_attention(cfg.attention, AttentionContext{dh, H, noise_gen});
    module = method;
  }
  bool other_dtype = false;
  for (const auto& [name, t] : module->state_dict())
    other_dtype = other_dtype || (is_floating(t.dtype()) && t.dtype() != dt);
  if (other_dtype) module->to(dt);  // e.g. a method's own parameters, created in f32

  const StateDict mine = module->state_dict();
  std::vector<std::string> param_names;
  for (const auto& [name, t] : mine) param_names.push_back(name);
  for (const auto& [name, t] : given_params) {
    auto it = mine.find(name);
    if (it == mine.end())
      fail<ValueError>(op, where, ": unexpected tensor '", name, "' ", describe(t), " (inputs: ", join(input_names),
                       "; parameters: ", param_names.empty() ? std::string("none") : join(param_names), ")");
    if (t.shape() != it->second.shape())
      fail<ShapeError>(op, where, ": parameter '", name, "' is ", describe(t), " but the layer needs ",
                       shape_str(it->second.shape()));
    if (t.dtype() != it->second.dtype())
      fail<DTypeError>(op, where, ": parameter '", name, "' is ", describe(t), " but the layer runs in ",
                       dtype_name(it->second.dtype()), " (the dtype of ", primary, "); convert it");
  }
  if (!given_params.empty()) module->load_state_dict(given_params, /*strict=*/false);
  module->train(cfg.train);
  module->zero_grad();
  method->record_internals = true;
  method->internals.clear();

  // Forward and backward on fresh leaves (the caller's tensors are not marked).
  auto leaf = [](const Tensor& t) {
    Tensor l = t.detach();
    l.set_requires_grad(true);
    return l;
  };
  Tensor out;
  std::vector<std::pair<std::string, Tensor>> leaves;
  if (is_mha) {
    leaves = {{"x", leaf(x)}};
    out = mha->forward(leaves[0].second, mask);
  } else {
    leaves = {{"q", leaf(q)}, {"k", leaf(k)}, {"v", leaf(v)}};
    out = method->forward(leaves[0].second, leaves[1].second, leaves[2].second, mask);
  }
  Tensor grad_out;
  if (data.count("grad_out")) {
    grad_out = data["grad_out"];
    if (grad_out.dtype() != dt || grad_out.shape() != out.shape())
      fail<ShapeError>(op, where, ": 'grad_out' must match the output ", describe(out), ", got ", describe(grad_out));
  } else {
    grad_out = ones_like(out);
  }
  out.backward(grad_out);

  TensorMap result;
  result["out"] = out.detach();
  for (const auto& [name, l] : leaves) result["grad." + name] = l.grad().defined() ? l.grad() : zeros_like(l);
  for (const auto& [name, p] : module->named_parameters())
    result["grad." + name] = p.grad().defined() ? p.grad() : zeros_like(p);
  for (const auto& [key, t] : method->internals) result["internals." + key] = t.detach();
  for (const auto& [name, t] : data) result[name] = t;
  result["grad_out"] = grad_out;
  for (const auto& [name, t] : module->state_dict()) result[name] = t;
  method->record_internals = false;
  return result;
}

TensorMap run_layer_io(const std::string& layer, const LayerConfig& cfg, const std::string& inputs_path,
                       const std::string& out_path) {
  layer_input_names(layer);  // unknown layer: fail before reading anything
  SafetensorsFile in = load_safetensors(inputs_path);
  TensorMap result = run_layer(layer, cfg, in.tensors, inputs_path);
  save_safetensors(
      out_path, result,
      {{"attnlab.format", "layer-io/1"}, {"attnlab.layer", layer}, {"attnlab.config", cfg.to_json().dump()}});
  return result;
}

}  // namespace attnlab

#include "layers/transformer.h"

#include <cmath>

namespace attnlab {

// ---- config ------------------------------------------------------------------------------------

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail<ValueError>("model config", "expected a JSON object, got ", j.dump());
  static const std::vector<std::string> known = {"vocab_size", "d_model",    "n_layers",  "n_heads",
                                                 "d_ff",       "max_len",    "dropout",   "positions",
                                                 "activation", "attention",  "num_classes", "loss",
                                                 "seed"};
  for (auto& [key, value] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end())
      fail<ValueError>("model config", "unknown key '", key, "'");
  ModelConfig c;
  try {
    c.vocab_size = j.value("vocab_size", c.vocab_size);
    c.d_model = j.value("d_model", c.d_model);
    c.n_layers = j.value("n_layers", c.n_layers);
    c.n_heads = j.value("n_heads", c.n_heads);
    c.d_ff = j.value("d_ff", 4 * c.d_model);
    c.max_len = j.value("max_len", c.max_len);
    c.dropout = j.value("dropout", c.dropout);
    c.positions = j.value("positions", c.positions);
    c.activation = j.value("activation", c.activation);
    if (j.contains("attention")) c.attention = j["attention"];
    c.num_classes = j.value("num_classes", c.num_classes);
    if (j.contains("loss")) c.loss = ClassifierLoss::from_json(j["loss"]).to_json();
    c.seed = j.value("seed", c.seed);
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("model config", "wrong value type: ", e.what());
  }
  auto positive = [](const char* name, int64_t v) {
    if (v <= 0) fail<ValueError>("model config", name, " must be positive, got ", v);
  };
  positive("vocab_size", c.vocab_size);
  positive("d_model", c.d_model);
  positive("n_layers", c.n_layers);
  positive("n_heads", c.n_heads);
  positive("d_ff", c.d_ff);
  positive("max_len", c.max_len);
  if (c.d_model % c.n_heads != 0)
    fail<ValueError>("model config", "d_model ", c.d_model, " is not divisible by n_heads ", c.n_heads);
  if (!(c.dropout >= 0 && c.dropout < 1)) fail<ValueError>("model config", "dropout must be in [0, 1), got ", c.dropout);
  if (c.positions != "learned" && c.positions != "sinusoidal")
    fail<ValueError>("model config", "positions must be 'learned' or 'sinusoidal', got '", c.positions, "'");
  parse_activation(c.activation);
  if (!c.attention.is_object() && !c.attention.is_string())
    fail<ValueError>("model config", "attention must be an object like {\"type\": \"softmax\"}, got ", c.attention.dump());
  const std::string type = c.attention.is_string() ? c.attention.get<std::string>() : c.attention.value("type", "softmax");
  const auto types = attention_types();
  if (std::find(types.begin(), types.end(), type) == types.end()) {
    std::string listed;
    for (const auto& t : types) listed += (listed.empty() ? "" : ", ") + t;
    fail<ValueError>("model config", "unknown attention type '", type, "' (known: ", listed, ")");
  }
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = {{"vocab_size", vocab_size}, {"d_model", d_model},       {"n_layers", n_layers},
                      {"n_heads", n_heads},       {"d_ff", d_ff},             {"max_len", max_len},
                      {"dropout", dropout},       {"positions", positions},   {"activation", activation},
                      {"attention", attention},   {"seed", seed}};
  if (num_classes > 0) j["num_classes"] = num_classes;
  if (loss != "cross_entropy") j["loss"] = loss;
  return j;
}

// ---- multi-head attention ----------------------------------------------------------------------

MultiHeadAttention::MultiHeadAttention(int64_t d_model, int64_t heads, const nlohmann::json& attention,
                                       double dropout_p, std::shared_ptr<Generator> gen, Generator& init_gen, DType t)
    : n_heads(heads), head_dim(d_model / heads) {
  if (d_model % heads != 0)
    fail<ValueError>("MultiHeadAttention", "d_model ", d_model, " is not divisible by ", heads, " heads");
  qkv = register_module("qkv", std::make_shared<Linear>(d_model, 3 * d_model, true, init_gen, t));
  out = register_module("out", std::make_shared<Linear>(d_model, d_model, true, init_gen, t));
  method = register_module("method", make_attention(attention, AttentionContext{head_dim, heads, gen, t}));
  drop = register_module("drop", std::make_shared<Dropout>(dropout_p, gen));
}

Tensor MultiHeadAttention::forward(const Tensor& x, const AttentionMask& mask) const {
  ModuleScope scope(path());
  if (x.dim() != 3) fail<ShapeError>("MultiHeadAttention", "input must be [B, T, D], got ", describe(x));
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);
  // [B, T, 3, H, dh] -> three [B, H, T, dh] views (no copies; BLAS takes the strides).
  Tensor proj = qkv->forward(x).reshape({B, T, 3, n_heads, head_dim});
  Tensor q = proj.select(2, 0).permute({0, 2, 1, 3});
  Tensor k = proj.select(2, 1).permute({0, 2, 1, 3});
  Tensor v = proj.select(2, 2).permute({0, 2, 1, 3});
  Tensor heads = method->forward(q, k, v, mask);            // [B, H, T, dh]
  Tensor merged = heads.permute({0, 2, 1, 3}).reshape({B, T, D});
  return drop->forward(out->forward(merged));
}

// ---- block and trunk ---------------------------------------------------------------------------

TransformerBlock::TransformerBlock(const ModelConfig& c, std::shared_ptr<Generator> gen, Generator& init_gen, DType t) {
  ln1 = register_module("ln1", std::make_shared<LayerNorm>(c.d_model, 1e-5, t));
  attn = register_module("attn", std::make_shared<MultiHeadAttention>(c.d_model, c.n_heads, c.attention, c.dropout,
                                                                      gen, init_gen, t));
  ln2 = register_module("ln2", std::make_shared<LayerNorm>(c.d_model, 1e-5, t));
  mlp = register_module("mlp", std::make_shared<MLP>(c.d_model, c.d_ff, parse_activation(c.activation), c.dropout,
                                                     gen, init_gen, t));
  drop = register_module("drop", std::make_shared<Dropout>(c.dropout, gen));
}

Tensor TransformerBlock::forward(const Tensor& x, const AttentionMask& mask) const {
  ModuleScope scope(path());
  Tensor h = add(x, attn->forward(ln1->forward(x), mask));
  return add(h, drop->forward(mlp->forward(ln2->forward(h))));
}

TransformerTrunk::TransformerTrunk(const ModelConfig& c, std::shared_ptr<Generator> gen, Generator& init_gen, DType t)
    : max_len_(c.max_len) {
  tok = register_module("tok", std::make_shared<Embedding>(c.vocab_size, c.d_model, init_gen, t));
  if (c.positions == "learned") pos = register_module("pos", std::make_shared<Embedding>(c.max_len, c.d_model, init_gen, t));
  else sinusoid_ = sinusoidal_positions(c.max_len, c.d_model, t);
  drop = register_module("drop", std::make_shared<Dropout>(c.dropout, gen));
  for (int64_t i = 0; i < c.n_layers; ++i)
    blocks.push_back(register_module("blocks." + std::to_string(i), std::make_shared<TransformerBlock>(c, gen, init_gen, t)));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(c.d_model, 1e-5, t));
}

Tensor TransformerTrunk::forward(const Tensor& ids, const AttentionMask& mask) const {
  ModuleScope scope(path());
  if (ids.dim() != 2 || ids.dtype() != DType::i64)
    fail<ShapeError>("TransformerTrunk", "ids must be i64 [B, T], got ", describe(ids));
  const int64_t T = ids.size(1);
  if (T > max_len_) fail<ShapeError>("TransformerTrunk", "sequence length ", T, " exceeds max_len ", max_len_);
  Tensor x = tok->forward(ids);
  if (pos) x = add(x, pos->forward(arange(T)));
  else x = add(x, sinusoid_.narrow(0, 0, T).to(x.dtype()));
  x = drop->forward(x);
  for (const auto& b : blocks) x = b->forward(x, mask);
  return ln_f->forward(x);
}

// ---- models ------------------------------------------------------------------------------------

CausalLM::CausalLM(const ModelConfig& c, DType t) : cfg_(c), gen_(std::make_shared<Generator>(c.seed, 1)) {
  Generator init_gen(c.seed, 0);
  trunk = register_module("trunk", std::make_shared<TransformerTrunk>(c, gen_, init_gen, t));
  head = register_module("head", std::make_shared<Linear>(c.d_model, c.vocab_size, false, init_gen, t));
}

Tensor CausalLM::forward(const Tensor& ids) const {
  ModuleScope scope(path());
  AttentionMask mask;
  mask.causal = true;
  return head->forward(trunk->forward(ids, mask));
}

Tensor CausalLM::loss(const Tensor& ids, const Tensor& targets) const {
  Tensor logits = forward(ids);
  if (targets.shape() != ids.shape())
    fail<ShapeError>("CausalLM::loss", "targets ", describe(targets), " must match ids ", describe(ids));
  return cross_entropy(logits.reshape({-1, cfg_.vocab_size}), targets.reshape({-1}));
}

SequenceClassifier::SequenceClassifier(const ModelConfig& c, DType t)
    : cfg_(c), gen_(std::make_shared<Generator>(c.seed, 1)), loss_(ClassifierLoss::from_json(c.loss)) {
  if (c.num_classes <= 0) fail<ValueError>("SequenceClassifier", "num_classes must be positive");
  Generator init_gen(c.seed, 0);
  trunk = register_module("trunk", std::make_shared<TransformerTrunk>(c, gen_, init_gen, t));
  head = register_module("head", std::make_shared<Linear>(c.d_model, c.num_classes, true, init_gen, t));
}

Tensor SequenceClassifier::forward(const Tensor& ids, const Tensor& key_padding) const {
  ModuleScope scope(path());
  AttentionMask mask;
  mask.key_padding = key_padding;
  Tensor h = trunk->forward(ids, mask);  // [B, T, D]
  Tensor pooled;
  if (key_padding.defined()) {
    Tensor keep = logical_not(key_padding).to(h.dtype()).unsqueeze(-1);  // [B, T, 1]
    Tensor count = clamp(sum(keep, 1), 1.0, 1e30);                      // [B, 1]
    pooled = div(sum(mul(h, keep), 1), count);
  } else {
    pooled = mean(h, 1);
  }
  return head->forward(pooled);
}

Tensor SequenceClassifier::loss(const Tensor& ids, const Tensor& labels, const Tensor& key_padding,
                                int64_t ignore_index) const {
  return loss_(forward(ids, key_padding), labels, ignore_index);
}

}  // namespace attnlab

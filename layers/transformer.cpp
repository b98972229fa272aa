#include "layers/transformer.h"

#include <cmath>

#include "core/config.h"

namespace attnlab {

// ---- config ------------------------------------------------------------------------------------

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& path) {
  ConfigSection s(j, path);
  ModelConfig c;
  c.vocab_size = s.integer("vocab_size", c.vocab_size, 1, kMaxVocab);
  c.d_model = s.integer("d_model", c.d_model, 1, kMaxDModel);
  c.n_layers = s.integer("n_layers", c.n_layers, 1, kMaxLayers);
  c.n_heads = s.integer("n_heads", c.n_heads, 1, kMaxHeads);
  c.d_ff = s.integer("d_ff", 4 * c.d_model, 1, kMaxDff);
  c.max_len = s.integer("max_len", c.max_len, 1, kMaxLen);
  c.dropout = s.number("dropout", c.dropout, NumberRange::half_open(0, 1));
  c.positions = s.choice("positions", c.positions, {"learned", "sinusoidal"});
  c.activation = s.choice("activation", c.activation, activation_names());
  if (const nlohmann::json* a = s.value("attention")) {
    parse_attention(*a, s.where("attention"));  // validates the method's own keys
    c.attention = *a;
  }
  c.num_classes = s.integer("num_classes", c.num_classes, 0, kMaxClasses);
  if (const nlohmann::json* l = s.value("loss")) c.loss = ClassifierLoss::from_json(*l).to_json();
  c.image_size = s.integer("image_size", c.image_size, 0, kMaxImageSize);
  c.patch_size = s.integer("patch_size", c.image_size > 0 ? c.image_size : 0, 0, kMaxImageSize);
  c.pooling = s.choice("pooling", c.pooling, {"mean", "cls"});
  c.seed = s.seed("seed", c.seed);
  s.finish();
  if (c.d_model % c.n_heads != 0) s.fail("n_heads", "d_model ", c.d_model, " is not divisible by n_heads ", c.n_heads);
  if (c.image_size == 0) {
    if (c.patch_size != 0) s.fail("patch_size", "applies to image inputs only (set image_size)");
    if (c.pooling != "mean") s.fail("pooling", "\"cls\" needs image inputs (image_size > 0)");
  } else {
    if (c.num_classes == 0) s.fail("image_size", "image inputs need a classifier (num_classes > 0)");
    if (c.patch_size < 1 || c.image_size % c.patch_size != 0)
      s.fail("patch_size", c.patch_size, " does not divide image_size ", c.image_size);
    const int64_t tokens = c.num_patches() + (c.pooling == "cls" ? 1 : 0);
    if (tokens > c.max_len)
      s.fail("max_len", c.max_len, " is less than the ", tokens, " tokens of an image (", c.num_patches(), " patches",
             c.pooling == "cls" ? " and the class token)" : ")");
  }
  const double bytes = 4.0 * double(c.parameter_count());
  if (bytes > double(machine_memory_bytes()))
    s.fail_section("the model has ", c.parameter_count(), " parameters, ", format_bytes(bytes),
                   " as f32: more than this machine's memory (", format_bytes(double(machine_memory_bytes())), ")");
  return c;
}

int64_t ModelConfig::parameter_count() const {
  // The bounds on every size keep this far from overflow (< 2^50).
  const int64_t D = d_model, layer_norm = 2 * D;
  const int64_t block =
      layer_norm + (3 * D * D + 3 * D) + (D * D + D) + layer_norm + (D * d_ff + d_ff) + (d_ff * D + D);
  const int64_t inputs = image_size > 0 ? patch_size * patch_size * D + D + (pooling == "cls" ? D : 0) : vocab_size * D;
  const int64_t embeddings = inputs + (positions == "learned" ? max_len * D : 0);
  const int64_t head = num_classes > 0 ? D * num_classes + num_classes : D * vocab_size;
  return embeddings + n_layers * block + layer_norm + head;
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = {{"vocab_size", vocab_size}, {"d_model", d_model},       {"n_layers", n_layers},
                      {"n_heads", n_heads},       {"d_ff", d_ff},             {"max_len", max_len},
                      {"dropout", dropout},       {"positions", positions},   {"activation", activation},
                      {"attention", attention},   {"seed", seed}};
  if (num_classes > 0) j["num_classes"] = num_classes;
  if (loss != "cross_entropy") j["loss"] = loss;
  if (image_size > 0) {
    j["image_size"] = image_size;
    j["patch_size"] = patch_size;
    j["pooling"] = pooling;
  }
  return j;
}

// ---- multi-head attention ----------------------------------------------------------------------

MultiHeadAttention::MultiHeadAttention(int64_t d_model, int64_t heads, const nlohmann::json& attention,
                                       double dropout_p, std::shared_ptr<Generator> gen, Generator& init_gen, DType t,
                                       int64_t max_len, int64_t layer)
    : n_heads(heads), head_dim(d_model / heads) {
  if (d_model % heads != 0)
    fail<ValueError>("MultiHeadAttention", "d_model ", d_model, " is not divisible by ", heads, " heads");
  qkv = register_module("qkv", std::make_shared<Linear>(d_model, 3 * d_model, true, init_gen, t));
  out = register_module("out", std::make_shared<Linear>(d_model, d_model, true, init_gen, t));
  method =
      register_module("method", make_attention(attention, AttentionContext{head_dim, heads, gen, t, max_len, layer}));
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

TransformerBlock::TransformerBlock(const ModelConfig& c, std::shared_ptr<Generator> gen, Generator& init_gen, DType t,
                                   int64_t layer) {
  ln1 = register_module("ln1", std::make_shared<LayerNorm>(c.d_model, 1e-5, t));
  attn = register_module("attn", std::make_shared<MultiHeadAttention>(c.d_model, c.n_heads, c.attention, c.dropout, gen,
                                                                      init_gen, t, c.max_len, layer));
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
  if (c.image_size == 0)
    tok = register_module("tok", std::make_shared<Embedding>(c.vocab_size, c.d_model, init_gen, t));
  if (c.positions == "learned") pos = register_module("pos", std::make_shared<Embedding>(c.max_len, c.d_model, init_gen, t));
  else sinusoid_ = sinusoidal_positions(c.max_len, c.d_model, t);
  drop = register_module("drop", std::make_shared<Dropout>(c.dropout, gen));
  for (int64_t i = 0; i < c.n_layers; ++i)
    blocks.push_back(
        register_module("blocks." + std::to_string(i), std::make_shared<TransformerBlock>(c, gen, init_gen, t, i)));
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(c.d_model, 1e-5, t));
}

Tensor TransformerTrunk::forward(const Tensor& ids, const AttentionMask& mask) const {
  ModuleScope scope(path());
  if (ids.dim() != 2 || ids.dtype() != DType::i64)
    fail<ShapeError>("TransformerTrunk", "ids must be i64 [B, T], got ", describe(ids));
  if (!tok) fail<ValueError>("TransformerTrunk", "this trunk reads embedded inputs (an image model), not token ids");
  return encode(tok->forward(ids), mask);
}

Tensor TransformerTrunk::encode(const Tensor& x_in, const AttentionMask& mask) const {
  ModuleScope scope(path());
  if (x_in.dim() != 3) fail<ShapeError>("TransformerTrunk", "embedded inputs must be [B, T, D], got ", describe(x_in));
  const int64_t T = x_in.size(1);
  if (T > max_len_) fail<ShapeError>("TransformerTrunk", "sequence length ", T, " exceeds max_len ", max_len_);
  Tensor x = x_in;
  if (pos) x = add(x, pos->forward(arange(T)));
  else x = add(x, sinusoid_.narrow(0, 0, T).to(x.dtype()));
  x = drop->forward(x);
  for (const auto& b : blocks) x = b->forward(x, mask);
  return ln_f->forward(x);
}

Tensor TransformerTrunk::aux_loss() const {
  Tensor total;
  for (const auto& b : blocks) {
    Tensor a = b->attn->method->aux_loss();
    if (a.defined()) total = total.defined() ? add(total, a) : a;
  }
  return total;
}

void TransformerTrunk::after_step() const {
  for (const auto& b : blocks) b->attn->method->after_step();
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
  if (c.image_size > 0)
    patch_embed = register_module("patch_embed",
                                  std::make_shared<Linear>(c.patch_size * c.patch_size, c.d_model, true, init_gen, t));
  if (c.pooling == "cls") cls = register_module("cls", std::make_shared<Embedding>(1, c.d_model, init_gen, t));
}

Tensor SequenceClassifier::patches(const Tensor& images) const {
  const int64_t S = cfg_.image_size, p = cfg_.patch_size, n = S / p;
  if (S == 0) fail<ValueError>("SequenceClassifier::patches", "the model takes token ids, not images");
  if (!is_floating(images.dtype()) || images.dim() < 2 || images.dim() > 3 || images.numel() % (S * S) != 0 ||
      images.size(-1) != (images.dim() == 2 ? S * S : S))
    fail<ShapeError>("SequenceClassifier::patches", "images must be floating [B, ", S * S, "] or [B, ", S, ", ", S,
                     "], got ", describe(images));
  const int64_t B = images.size(0);
  // [B, n, p, n, p] -> [B, n, n, p, p]: patch (i, j) holds rows i·p.. and columns j·p.. of the image.
  return images.reshape({B, n, p, n, p}).permute({0, 1, 3, 2, 4}).reshape({B, n * n, p * p});
}

Tensor SequenceClassifier::forward(const Tensor& ids, const Tensor& key_padding) const {
  ModuleScope scope(path());
  AttentionMask mask;
  mask.key_padding = key_padding;
  Tensor h;
  if (cfg_.image_size > 0) {
    if (key_padding.defined()) fail<ValueError>("SequenceClassifier", "image inputs take no key padding");
    Tensor x = patch_embed->forward(patches(ids));  // [B, N, D]
    if (cls) {
      const int64_t B = x.size(0), D = x.size(2);
      x = concat({cls->weight.reshape({1, 1, D}).expand({B, 1, D}), x}, 1);
    }
    h = trunk->encode(x, mask);
  } else {
    h = trunk->forward(ids, mask);  // [B, T, D]
  }
  Tensor pooled;
  if (cls) {
    pooled = h.select(1, 0);
  } else if (key_padding.defined()) {
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

// Multi-head attention, the pre-LN Transformer block, and the two models built from them: a causal
// language model and a sequence classifier. Configured from JSON (see configs/*.json).
#pragma once
#include <nlohmann/json.hpp>

#include "attention/attention.h"
#include "layers/layers.h"
#include "layers/losses.h"

namespace attnlab {

// Upper bounds on the sizes a config may ask for: far beyond what this CPU framework trains, small
// enough that no size arithmetic overflows, and a typo (n_layers 1e9) fails at once.
inline constexpr int64_t kMaxVocab = int64_t(1) << 24;
inline constexpr int64_t kMaxDModel = int64_t(1) << 16;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;
inline constexpr int64_t kMaxDff = int64_t(1) << 20;
inline constexpr int64_t kMaxLen = int64_t(1) << 20;
inline constexpr int64_t kMaxClasses = int64_t(1) << 20;
inline constexpr int64_t kMaxImageSize = 4096;

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t d_model = 128;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t d_ff = 512;
  int64_t max_len = 512;
  double dropout = 0.0;
  std::string positions = "learned";  // learned | sinusoidal
  std::string activation = "gelu";
  nlohmann::json attention = {{"type", "softmax"}};
  int64_t num_classes = 0;  // > 0 for the sequence classifier
  // The classifier's loss: "cross_entropy", "sparsemax", "entmax15" or {"type": "entmax_bisect", "alpha": α}.
  nlohmann::json loss = "cross_entropy";
  // A ViT when image_size > 0: the classifier reads square images [B, image_size²] (row-major pixels),
  // cut into patch_size × patch_size patches, each a token through a linear patch embedding; no token
  // embedding then (vocab_size is unused). pooling: "mean" over the tokens, or "cls", a learned class
  // token prepended to them whose output the head reads (max_len must cover the tokens).
  int64_t image_size = 0;
  int64_t patch_size = 0;
  std::string pooling = "mean";
  uint64_t seed = 0;

  int64_t num_patches() const { return image_size > 0 ? (image_size / patch_size) * (image_size / patch_size) : 0; }

  // Validates every key (unknown ones are errors), the sizes against the bounds above, and the
  // parameters' memory against this machine's; path names the section in errors.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& path = "model");
  nlohmann::json to_json() const;
  // Parameters of the model the config describes (the classifier when num_classes > 0, else the
  // causal LM), attention methods' own parameters aside: known before anything is allocated.
  int64_t parameter_count() const;
};

// x [B, T, D] -> [B, T, D]: fused qkv projection, per-head attention method, output projection.
class MultiHeadAttention : public Module {
 public:
  // max_len and layer reach the method through its AttentionContext (size defaults, per-layer settings).
  MultiHeadAttention(int64_t d_model, int64_t n_heads, const nlohmann::json& attention, double dropout_p,
                     std::shared_ptr<Generator> gen, Generator& init_gen, DType t = DType::f32, int64_t max_len = 0,
                     int64_t layer = 0);
  Tensor forward(const Tensor& x, const AttentionMask& mask) const;
  std::shared_ptr<Linear> qkv, out;
  std::shared_ptr<AttentionMethod> method;
  std::shared_ptr<Dropout> drop;
  int64_t n_heads, head_dim;
};

// Pre-LN: x + drop(attn(ln1 x)), then + drop(mlp(ln2 x)).
class TransformerBlock : public Module {
 public:
  TransformerBlock(const ModelConfig& c, std::shared_ptr<Generator> gen, Generator& init_gen, DType t = DType::f32,
                   int64_t layer = 0);
  Tensor forward(const Tensor& x, const AttentionMask& mask) const;
  std::shared_ptr<LayerNorm> ln1, ln2;
  std::shared_ptr<MultiHeadAttention> attn;
  std::shared_ptr<MLP> mlp;
  std::shared_ptr<Dropout> drop;
};

// Token + position embeddings, the block stack and a final LayerNorm: ids [B, T] -> [B, T, D].
class TransformerTrunk : public Module {
 public:
  TransformerTrunk(const ModelConfig& c, std::shared_ptr<Generator> gen, Generator& init_gen, DType t);
  Tensor forward(const Tensor& ids, const AttentionMask& mask) const;
  // The same from embedded tokens x [B, T, D] (a ViT's patches): positions, blocks, final norm.
  Tensor encode(const Tensor& x, const AttentionMask& mask) const;
  // The sum of the attention methods' auxiliary losses of the last forward (Routing's commitment
  // loss), which training adds to the task loss; undefined when no method has one.
  Tensor aux_loss() const;
  // Once per training step, after the optimizer step: every method's non-gradient update.
  void after_step() const;
  std::shared_ptr<Embedding> tok;  // null for image inputs
  std::shared_ptr<Embedding> pos;  // learned positions; null for sinusoidal
  std::vector<std::shared_ptr<TransformerBlock>> blocks;
  std::shared_ptr<LayerNorm> ln_f;
  std::shared_ptr<Dropout> drop;

 private:
  Tensor sinusoid_;
  int64_t max_len_;
};

class CausalLM : public Module {
 public:
  explicit CausalLM(const ModelConfig& c, DType t = DType::f32);
  Tensor forward(const Tensor& ids) const;                         // logits [B, T, V]
  Tensor loss(const Tensor& ids, const Tensor& targets) const;    // mean cross-entropy (nats)
  const ModelConfig& config() const { return cfg_; }
  Generator& dropout_generator() { return *gen_; }
  std::shared_ptr<TransformerTrunk> trunk;
  std::shared_ptr<Linear> head;

 private:
  ModelConfig cfg_;
  std::shared_ptr<Generator> gen_;
};

// Mean-pools the trunk's output over non-padded positions (or reads the class token), then a linear
// head: ids i64 [B, T] (or, for a ViT, images f32 [B, image_size²]) -> logits [B, C].
class SequenceClassifier : public Module {
 public:
  explicit SequenceClassifier(const ModelConfig& c, DType t = DType::f32);
  Tensor forward(const Tensor& ids, const Tensor& key_padding = Tensor()) const;
  // Images [B, S²] or [B, S, S] -> patch tokens [B, (S/p)², p²] (reshape and permute: no new op).
  Tensor patches(const Tensor& images) const;
  // The configured loss (cfg.loss) of forward(ids, key_padding) against labels i64 [B], mean over
  // the labels that are not ignore_index.
  Tensor loss(const Tensor& ids, const Tensor& labels, const Tensor& key_padding = Tensor(),
              int64_t ignore_index = -100) const;
  // The configured loss of logits [B, C] already computed.
  Tensor loss_of_logits(const Tensor& logits, const Tensor& labels, int64_t ignore_index = -100) const {
    return loss_(logits, labels, ignore_index);
  }
  const ModelConfig& config() const { return cfg_; }
  Generator& dropout_generator() { return *gen_; }
  std::shared_ptr<TransformerTrunk> trunk;
  std::shared_ptr<Linear> head;
  std::shared_ptr<Linear> patch_embed;  // ViT only
  std::shared_ptr<Embedding> cls;       // pooling "cls" only: the class token [1, D]

 private:
  ModelConfig cfg_;
  std::shared_ptr<Generator> gen_;
  ClassifierLoss loss_;
};

}  // namespace attnlab

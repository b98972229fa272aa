// The attention interface every method implements: per-head q, k, v in, per-head output out.
// A method is a Module (some learn parameters: entmax α, Sinkhorn SortNet); MultiHeadAttention
// owns the projections and calls the method.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "layers/module.h"

namespace attnlab {

struct AttentionMask {
  bool causal = false;  // query i sees keys j <= i (aligned at the end when Tk > Tq)
  Tensor key_padding;   // optional b8 [B, Tk]: true marks a padded key that no query may see
};

class AttentionMethod : public Module {
 public:
  // q [B, H, Tq, dh], k and v [B, H, Tk, dh] -> [B, H, Tq, dh]. Fully masked rows give zeros.
  virtual Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) = 0;
  virtual std::string name() const = 0;
  // When set, forward stores what it computed on the way (e.g. "attn": the [B,H,Tq,Tk] weights)
  // in internals, for the layer/draw tools. Off in training: it costs memory.
  bool record_internals = false;
  std::map<std::string, Tensor> internals;
  // Per-head numbers of the last forward that training logs report (e.g. entmax: "support", the mean
  // support size, and "alpha"), one value per head; cheap, kept whether or not internals are recorded.
  virtual std::map<std::string, std::vector<double>> stats() const { return {}; }
  // An auxiliary loss of the last forward (Routing's commitment loss): a scalar on the tape that the
  // model adds to its training loss (TransformerTrunk::aux_loss); undefined when the method has none.
  virtual Tensor aux_loss() const { return {}; }
  // Non-gradient state updates (Routing's EMA centroids) from what the training forwards since the
  // last call saw: the trainer calls it once per step, after the optimizer step. Gradchecks, audits,
  // evaluations and sampling never call it, so they never change the method.
  virtual void after_step() {}
};

struct AttentionContext {
  int64_t head_dim = 0;
  int64_t n_heads = 0;
  std::shared_ptr<Generator> gen;  // for methods that draw noise (Gumbel-Sinkhorn, dropout)
  DType dtype = DType::f32;        // for methods with parameters of their own (entmax α, SortNet)
  int64_t max_len = 0;             // the model's longest sequence (0: unknown), for size defaults (Routing's k)
  int64_t layer = 0;               // the layer the method is built for, for per-layer settings
};

// A method is registered as a parser of its config section: it reads every key the method takes
// ("type" aside) from the section, with its type and range, and returns a builder that makes the
// method for a head layout. Reading declares the keys, so a key no method reads is an error that
// lists the method's keys; and a config is validated in full (parse_attention) without building.
using AttentionBuilder = std::function<std::shared_ptr<AttentionMethod>(const AttentionContext&)>;
using AttentionParser = std::function<AttentionBuilder(ConfigSection& cfg)>;

void register_attention(const std::string& type, AttentionParser parser);
std::vector<std::string> attention_types();
// cfg: {"type": "softmax", ...} or just "softmax". path names the section in errors.
AttentionBuilder parse_attention(const nlohmann::json& cfg, const std::string& path = "attention");
std::shared_ptr<AttentionMethod> make_attention(const nlohmann::json& cfg, const AttentionContext& ctx);

// Shared pieces: the checks every method runs, and masks as b8 tensors (true = blocked).
void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask);
Tensor causal_block_mask(int64_t tq, int64_t tk);                 // [tq, tk]
// The causal and padding masks together, broadcastable to [B, H, tq, tk], or undefined if neither.
Tensor blocked_positions(const AttentionMask& m, int64_t tq, int64_t tk);
// Positions blocked by either b8 mask (broadcast together); an undefined mask blocks nothing.
Tensor blocked_by_either(const Tensor& a, const Tensor& b);
// The optional "scale" key (a finite number > 0) and the scale it gives: 1/sqrt(head_dim) by default.
std::optional<double> parse_attention_scale(ConfigSection& cfg);
double attention_scale(std::optional<double> scale, const AttentionContext& ctx);

}  // namespace attnlab

#include "attention/attention.h"

#include <algorithm>
#include <cmath>

#include "attention/entmax_attention.h"
#include "attention/local.h"
#include "attention/routing_attention.h"
#include "attention/sinkformer.h"
#include "attention/sinkhorn_attention.h"
#include "attention/softmax.h"

namespace attnlab {

namespace {
// Built-in methods are listed here explicitly: static self-registration would be dropped by the
// linker for method files nothing else references.
std::map<std::string, AttentionParser>& parsers() {
  static std::map<std::string, AttentionParser> p = {{"softmax", parse_softmax_attention},
                                                     {"local", parse_local_attention},
                                                     {"entmax", parse_entmax_attention},
                                                     {"sinkformer", parse_sinkformer_attention},
                                                     {"routing", parse_routing_attention},
                                                     {"sinkhorn", parse_sinkhorn_attention}};
  return p;
}
}  // namespace

void register_attention(const std::string& type, AttentionParser parser) { parsers()[type] = std::move(parser); }

std::vector<std::string> attention_types() {
  std::vector<std::string> out;
  for (auto& [k, v] : parsers()) out.push_back(k);
  return out;
}

AttentionBuilder parse_attention(const nlohmann::json& cfg, const std::string& path) {
  if (!cfg.is_object() && !cfg.is_string())
    fail<ValueError>("config", path, ": must be an object like {\"type\": \"softmax\"}, got ", cfg.dump());
  ConfigSection section(cfg.is_string() ? nlohmann::json{{"type", cfg}} : cfg, path);
  const std::string type = section.string("type", "softmax");
  auto it = parsers().find(type);
  if (it == parsers().end()) {
    std::string known;
    for (auto& name : attention_types()) known += (known.empty() ? "" : ", ") + name;
    section.fail("type", "unknown attention type '", type, "' (known: ", known, ")");
  }
  AttentionBuilder build = it->second(section);
  section.finish();
  return build;
}

std::shared_ptr<AttentionMethod> make_attention(const nlohmann::json& cfg, const AttentionContext& ctx) {
  return parse_attention(cfg)(ctx);
}

void check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    fail<ShapeError>(op, "q, k, v must be [B, H, T, dh], got ", describe(q), ", ", describe(k), ", ", describe(v));
  if (k.shape() != v.shape() || q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3))
    fail<ShapeError>(op, "q ", describe(q), " does not match k ", describe(k), " / v ", describe(v));
  if (q.dtype() != k.dtype() || q.dtype() != v.dtype())
    fail<DTypeError>(op, "dtype mismatch: ", describe(q), ", ", describe(k), ", ", describe(v));
  if (mask.key_padding.defined() &&
      (mask.key_padding.dtype() != DType::b8 || mask.key_padding.shape() != Shape{k.size(0), k.size(2)}))
    fail<ShapeError>(op, "key_padding must be b8 [", k.size(0), ", ", k.size(2), "], got ", describe(mask.key_padding));
}

Tensor causal_block_mask(int64_t tq, int64_t tk) {
  Tensor m = empty({tq, tk}, DType::b8);
  uint8_t* p = m.data<uint8_t>();
  const int64_t shift = tk - tq;  // queries align with the last tq keys
  for (int64_t i = 0; i < tq; ++i)
    for (int64_t j = 0; j < tk; ++j) p[i * tk + j] = j > i + shift;
  return m;
}

Tensor blocked_by_either(const Tensor& a, const Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  Tensor both = empty(broadcast_shapes("mask", a.shape(), b.shape()), DType::b8);
  std::vector<uint8_t> va = a.expand(both.shape()).to_vector<uint8_t>();
  std::vector<uint8_t> vb = b.expand(both.shape()).to_vector<uint8_t>();
  uint8_t* p = both.data<uint8_t>();
  for (size_t i = 0; i < va.size(); ++i) p[i] = va[i] | vb[i];
  return both;
}

Tensor blocked_positions(const AttentionMask& m, int64_t tq, int64_t tk) {
  Tensor causal = m.causal ? causal_block_mask(tq, tk) : Tensor();
  Tensor pad = m.key_padding.defined() ? m.key_padding.reshape({m.key_padding.size(0), 1, 1, tk}) : Tensor();
  return blocked_by_either(causal, pad);
}

std::optional<double> parse_attention_scale(ConfigSection& cfg) {
  if (!cfg.has("scale")) {
    cfg.value("scale");  // declared all the same, for the list of known keys
    return std::nullopt;
  }
  return cfg.number("scale", 0, NumberRange::above(0));
}

double attention_scale(std::optional<double> scale, const AttentionContext& ctx) {
  return scale.value_or(1.0 / std::sqrt(double(std::max<int64_t>(ctx.head_dim, 1))));
}

}  // namespace attnlab

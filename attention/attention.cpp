#include "attention/attention.h"

#include <algorithm>
#include <cmath>

#include "attention/local.h"
#include "attention/softmax.h"

namespace attnlab {

namespace {
// Built-in methods are listed here explicitly: static self-registration would be dropped by the
// linker for method files nothing else references.
std::map<std::string, AttentionFactory>& factories() {
  static std::map<std::string, AttentionFactory> f = [] {
    std::map<std::string, AttentionFactory> m;
    m["softmax"] = make_softmax_attention;
    m["local"] = make_local_attention;
    return m;
  }();
  return f;
}
}  // namespace

void register_attention(const std::string& type, AttentionFactory factory) { factories()[type] = std::move(factory); }

std::vector<std::string> attention_types() {
  std::vector<std::string> out;
  for (auto& [k, v] : factories()) out.push_back(k);
  return out;
}

std::string attention_type(const nlohmann::json& cfg, const char* op) {
  if (cfg.is_string()) return cfg.get<std::string>();
  if (!cfg.is_object())
    fail<ValueError>(op, "attention must be an object like {\"type\": \"softmax\"}, got ", cfg.dump());
  auto it = cfg.find("type");
  if (it == cfg.end()) return "softmax";
  if (!it->is_string()) fail<ValueError>(op, "attention 'type' must be a string, got ", it->dump());
  return it->get<std::string>();
}

std::shared_ptr<AttentionMethod> make_attention(const nlohmann::json& cfg, const AttentionContext& ctx) {
  std::string type = attention_type(cfg, "make_attention");
  auto it = factories().find(type);
  if (it == factories().end()) {
    std::string known;
    for (auto& name : attention_types()) known += (known.empty() ? "" : ", ") + name;
    fail<ValueError>("make_attention", "unknown attention type '", type, "' (known: ", known, ")");
  }
  return it->second(cfg.is_object() ? cfg : nlohmann::json::object(), ctx);
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

double attention_scale(const nlohmann::json& cfg, const AttentionContext& ctx) {
  return cfg.value("scale", 1.0 / std::sqrt(double(std::max<int64_t>(ctx.head_dim, 1))));
}

}  // namespace attnlab

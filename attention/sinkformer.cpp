// Sinkformer attention: the marginals, the composite reference, the doubly-stochastic diagnostic and
// the method. The fused op is in sinkformer_fused.cpp; derivations in docs/sinkformer.md.
#include "attention/sinkformer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "attention/sinkformer_marginals.h"
#include "autograd/grad_mode.h"

namespace attnlab {

namespace sinkformer {

bool pads_queries(const AttentionMask& m, int64_t tq, int64_t tk, int64_t iterations) {
  return m.key_padding.defined() && tq == tk && iterations >= 2;
}

Marginals marginals(const AttentionMask& m, int64_t B, int64_t tq, int64_t tk, int64_t iterations) {
  Marginals mg{std::vector<uint8_t>(size_t(B * tq), 1), std::vector<uint8_t>(size_t(B * tk), 1),
               std::vector<double>(size_t(B), 0.0)};
  if (m.key_padding.defined()) {
    const std::vector<uint8_t> pad = m.key_padding.contiguous().to_vector<uint8_t>();
    for (size_t i = 0; i < pad.size(); ++i) mg.col_ok[i] = !pad[i];
    if (pads_queries(m, tq, tk, iterations)) mg.row_ok = mg.col_ok;
  }
  for (int64_t b = 0; b < B; ++b) {
    const auto nr = std::count(mg.row_ok.begin() + b * tq, mg.row_ok.begin() + (b + 1) * tq, 1);
    const auto nc = std::count(mg.col_ok.begin() + b * tk, mg.col_ok.begin() + (b + 1) * tk, 1);
    if (nr > 0 && nc > 0 && nr != nc) mg.log_b[size_t(b)] = std::log(double(nr) / double(nc));
    mg.any_log_b = mg.any_log_b || mg.log_b[size_t(b)] != 0;
  }
  return mg;
}

void check_options(const char* op, const Tensor& q, const Tensor& k, const AttentionMask& mask, int64_t iterations) {
  if (iterations < 1 || iterations > kMaxIterations)
    fail<ValueError>(op, "iterations must be in [1, ", kMaxIterations, "], got ", iterations);
  if (mask.causal && iterations > 1)
    fail<ValueError>(op, "a causal mask needs iterations = 1 (softmax attention): a column normalisation lets later ",
                     "queries change the weights of earlier ones; got iterations ", iterations, " for q ", describe(q),
                     ", k ", describe(k));
}

}  // namespace sinkformer

using sinkformer::kOp;
using sinkformer::Marginals;

Tensor sinkformer_blocked(const AttentionMask& mask, int64_t tq, int64_t tk, int64_t iterations) {
  Tensor blocked = blocked_positions(mask, tq, tk);
  if (sinkformer::pads_queries(mask, tq, tk, iterations))
    blocked = blocked_by_either(blocked, mask.key_padding.reshape({mask.key_padding.size(0), 1, tq, 1}));
  return blocked;
}

namespace {
// The weights from registered ops: the masked scores, `iterations − 1` log-domain normalisations
// (on_step sees the log-weights after each), and the last one by softmax, so that one normalisation
// is softmax exactly. Excluded rows and columns are -inf: log_softmax and softmax keep them finite.
Tensor composite_weights(const Tensor& q, const Tensor& k, const AttentionMask& mask, double scale, int64_t iterations,
                         const std::function<void(const Tensor&)>& on_step = {}) {
  const int64_t B = q.size(0), Tq = q.size(2), Tk = k.size(2);
  const Marginals mg = sinkformer::marginals(mask, B, Tq, Tk, iterations);
  Tensor L = matmul(q, k.transpose(-1, -2)) * scale;
  Tensor blocked = sinkformer_blocked(mask, Tq, Tk, iterations);
  if (blocked.defined()) L = masked_fill(L, blocked, -std::numeric_limits<double>::infinity());
  const Tensor log_b = from_vector(mg.log_b, {B, 1, 1, 1}, q.dtype());
  for (int64_t l = 0; l + 1 < iterations; ++l) {
    if (l % 2 == 0) L = log_softmax(L, -1);
    else L = mg.any_log_b ? log_softmax(L, -2) + log_b : log_softmax(L, -2);
    if (on_step) on_step(L);
  }
  const bool column_last = (iterations - 1) % 2 == 1;
  Tensor w = softmax(L, column_last ? -2 : -1);
  return column_last && mg.any_log_b ? w * exp(log_b) : w;
}
}  // namespace

Tensor sinkformer_attention_composite(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask,
                                      double scale, int64_t iterations, Tensor* weights_out) {
  check_qkv(kOp, q, k, v, mask);
  sinkformer::check_options(kOp, q, k, mask, iterations);
  if (iterations == 1) return softmax_attention_composite(q, k, v, mask, scale, weights_out);
  Tensor w = composite_weights(q, k, mask, scale, iterations);
  if (weights_out) *weights_out = w;
  return matmul(w, v);
}

Tensor column_sum_deviation(const Tensor& w, const Tensor& key_padding) {
  const char* op = "column_sum_deviation";
  if (w.dim() < 2 || !is_floating(w.dtype()))
    fail<ShapeError>(op, "attention weights must be a floating [..., Tq, Tk] tensor, got ", describe(w));
  const int64_t tq = w.size(-2), tk = w.size(-1), B = w.dim() > 2 ? w.size(0) : 1;
  const int64_t mats = B * (w.dim() > 2 ? w.numel() / std::max<int64_t>(B * tq * tk, 1) : 1);
  if (key_padding.defined() && (w.dim() < 3 || key_padding.dtype() != DType::b8 || key_padding.shape() != Shape{B, tk}))
    fail<ShapeError>(op, "key_padding must be b8 [B, Tk] for weights ", describe(w), ", got ", describe(key_padding));
  const Marginals mg = sinkformer::marginals({false, key_padding}, B, tq, tk, 2);
  const std::vector<double> x = w.contiguous().to(DType::f64).to_vector<double>();
  std::vector<double> out(static_cast<size_t>(mats), 0.0), col(static_cast<size_t>(tk), 0.0);
  for (int64_t m = 0; m < mats; ++m) {
    const int64_t b = m / (mats / B);
    const uint8_t* rok = mg.row_ok.data() + b * tq;
    const uint8_t* cok = mg.col_ok.data() + b * tk;
    std::fill(col.begin(), col.end(), 0.0);
    for (int64_t i = 0; i < tq; ++i)
      if (rok[i])
        for (int64_t j = 0; j < tk; ++j) col[size_t(j)] += x[size_t((m * tq + i) * tk + j)];
    const double nr = double(std::count(rok, rok + tq, 1)), nc = double(std::count(cok, cok + tk, 1));
    double acc = 0;
    for (int64_t j = 0; j < tk; ++j)
      if (cok[j]) acc += std::abs(col[size_t(j)] - nr / nc);
    out[size_t(m)] = nc > 0 ? acc / nc : 0.0;
  }
  return from_vector(out, Shape(w.shape().begin(), w.shape().end() - 2), w.dtype());
}

// ---- the method --------------------------------------------------------------------------------

namespace {
// The marginal errors after each normalisation, [iterations, B, H]: mean |row sum − 1| over included
// rows and mean |column sum − b| over included columns. No grad; materialises n×n (for the tools).
void record_marginal_errors(AttentionMethod& m, const Tensor& q, const Tensor& k, const AttentionMask& mask,
                            double scale, int64_t iterations) {
  NoGradGuard ng;
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), Tk = k.size(2);
  const Marginals mg = sinkformer::marginals(mask, B, Tq, Tk, iterations);
  std::vector<double> row_err, col_err;
  auto errors = [&](const Tensor& w) {
    const std::vector<double> rs = w.sum(-1).to(DType::f64).contiguous().to_vector<double>();
    const std::vector<double> cs = w.sum(-2).to(DType::f64).contiguous().to_vector<double>();
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H;
      double re = 0, ce = 0, nr = 0, nc = 0;
      for (int64_t i = 0; i < Tq; ++i)
        if (mg.row_ok[size_t(b * Tq + i)]) re += std::abs(rs[size_t(bh * Tq + i)] - 1), nr += 1;
      for (int64_t j = 0; j < Tk; ++j)
        if (mg.col_ok[size_t(b * Tk + j)])
          ce += std::abs(cs[size_t(bh * Tk + j)] - std::exp(mg.log_b[size_t(b)])), nc += 1;
      row_err.push_back(nr > 0 ? re / nr : 0.0);
      col_err.push_back(nc > 0 ? ce / nc : 0.0);
    }
  };
  const Tensor qd = q.detach(), kd = k.detach();
  Tensor w;
  if (iterations == 1) softmax_attention_composite(qd, kd, kd, mask, scale, &w);
  else w = composite_weights(qd, kd, mask, scale, iterations, [&](const Tensor& L) { errors(exp(L)); });
  errors(w);
  m.internals["row_err"] = from_vector(row_err, {iterations, B, H}, q.dtype());
  m.internals["col_err"] = from_vector(col_err, {iterations, B, H}, q.dtype());
}
}  // namespace

SinkformerAttention::SinkformerAttention(double scale, SinkhornOptions opts, AttentionImpl impl)
    : scale_(scale), opts_(opts), impl_(impl) {
  if (opts.iterations < 1 || opts.iterations > sinkformer::kMaxIterations)
    fail<ValueError>("sinkformer attention", "iterations must be in [1, ", sinkformer::kMaxIterations, "], got ",
                     opts.iterations);
}

Tensor SinkformerAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  ModuleScope scope(path());
  Tensor f, g;
  Tensor out = run_attention_impl(
      impl_, *this, q, k, v,
      [&] {
        return sinkformer_attention(q, k, v, mask, scale_, opts_, record_internals ? &f : nullptr,
                                    record_internals ? &g : nullptr);
      },
      [&](const Tensor& cq, const Tensor& ck, const Tensor& cv, Tensor* w) {
        return sinkformer_attention_composite(cq, ck, cv, mask, scale_, opts_.iterations, w);
      });
  if (record_internals) {
    if (!f.defined()) {  // the composite ran: the potentials from the fused forward
      NoGradGuard ng;
      sinkformer_attention(q.detach(), k.detach(), v.detach(), mask, scale_, opts_, &f, &g);
    }
    internals["f"] = f.detach();
    internals["g"] = g.detach();
    record_marginal_errors(*this, q, k, mask, scale_, opts_.iterations);
  }
  return out;
}

AttentionBuilder parse_sinkformer_attention(ConfigSection& cfg) {
  SinkhornOptions o;
  o.iterations = cfg.integer("iterations", o.iterations, 1, sinkformer::kMaxIterations);
  o.backward = cfg.choice("backward", "unrolled", {"unrolled", "implicit"}) == "implicit" ? SinkhornBackward::implicit
                                                                                          : SinkhornBackward::unrolled;
  o.tol = cfg.number("tol", o.tol, NumberRange{0, 1, true, true});
  o.max_cg_iter = cfg.integer("max_cg_iter", o.max_cg_iter, 1, 100000);
  const std::optional<double> scale = parse_attention_scale(cfg);
  const AttentionImpl impl = parse_attention_impl(cfg);
  return [=](const AttentionContext& ctx) {
    return std::make_shared<SinkformerAttention>(attention_scale(scale, ctx), o, impl);
  };
}

}  // namespace attnlab

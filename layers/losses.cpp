// Fenchel–Young losses (sparsemax, 1.5-entmax, α-entmax), each one op with gradient p − e_y, and the
// classifier loss from a config. Derivation: docs/entmax.md#fenchel-young-losses.
#include "layers/losses.h"

#include <cmath>
#include <limits>
#include <vector>

#include "attention/entmax.h"
#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/loops.h"
#include "layers/functional.h"

namespace attnlab {
using namespace cases;

namespace {

enum class Map { sparsemax, entmax15, bisect };

// p = entmax(row) into `p` and the row's loss H_α(p) + ⟨p, z⟩ − z_y, with z shifted by its max
// (L is shift invariant since Σ p = 1) and ⟨p, z⟩ taken over the support (masked z = −∞ has p = 0).
template <class T>
double loss_row(Map map, const T* z, int64_t C, T alpha, int max_iter, int64_t target, T* p, T* scratch) {
  entmax::Threshold<T> th;
  if (map == Map::sparsemax) th = entmax::sparsemax_threshold(z, C, scratch);
  else if (map == Map::entmax15) th = entmax::entmax15_threshold(z, C, scratch);
  else th = entmax::bisect_threshold(z, C, alpha, max_iter, scratch);
  const double sum = entmax::write_probabilities(z, C, alpha, th, p);
  if (map == Map::bisect && sum > 0)
    for (int64_t j = 0; j < C; ++j) p[j] = T(double(p[j]) / sum);
  if (th.support == 0) return std::numeric_limits<double>::infinity();  // every class masked
  double pz = 0;
  for (int64_t j = 0; j < C; ++j)
    if (p[j] > 0) pz += double(p[j]) * (double(z[j]) - double(th.max));
  return entmax::tsallis_entropy(p, C, alpha) + pz - (double(z[target]) - double(th.max));
}

Tensor fenchel_young(const OpDef& def, Map map, double alpha, const Tensor& logits, const Tensor& targets,
                     const FenchelYoungOptions& opts) {
  const char* op = def.name.c_str();
  if (logits.dim() != 2) fail<ShapeError>(op, "logits must be [N, C], got ", describe(logits));
  if (!is_floating(logits.dtype())) fail<DTypeError>(op, "logits must be f32 or f64, got ", describe(logits));
  if (targets.dtype() != DType::i64 || targets.shape() != Shape{logits.size(0)})
    fail<ShapeError>(op, "targets must be i64 [", logits.size(0), "], got ", describe(targets));
  if (!(alpha > 1) || !std::isfinite(alpha)) fail<ValueError>(op, "alpha must be finite and > 1, got ", alpha);
  if (opts.max_iter < 1) fail<ValueError>(op, "max_iter must be at least 1, got ", opts.max_iter);
  const int64_t N = logits.size(0), C = logits.size(1);
  Tensor lc = logits.contiguous(), tc = targets.contiguous();
  const int64_t* pt = tc.data<int64_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (pt[i] == opts.ignore_index) continue;
    if (pt[i] < 0 || pt[i] >= C)
      fail<IndexError>(op, "target ", pt[i], " at row ", i, " out of range for ", C, " classes");
    ++count;
  }
  if (opts.reduction == Reduction::mean && count == 0)
    fail<ValueError>(op, "every target equals ignore_index ", opts.ignore_index, " (nothing to average)");
  Tensor probs = empty({N, C}, logits.dtype());
  std::vector<double> row_loss(size_t(N), 0.0);
  dispatch_floating(logits.dtype(), op, [&]<class T>() {
    const T* pz = lc.data<T>();
    T* pp = probs.data<T>();
#pragma omp parallel if (N > 1 && N * C >= cpu::parallel_grain() && !omp_in_parallel())
    {
      std::vector<T> scratch(static_cast<size_t>(C));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t t = pt[i] == opts.ignore_index ? 0 : pt[i];
        const double l = loss_row<T>(map, pz + i * C, C, T(alpha), opts.max_iter, t, pp + i * C, scratch.data());
        if (pt[i] != opts.ignore_index) row_loss[size_t(i)] = l;
      }
    }
  });
  Tensor loss;
  if (opts.reduction == Reduction::none) {
    loss = from_vector(row_loss, {N}, logits.dtype());
  } else {
    double total = 0;
    for (double l : row_loss) total += l;  // in row order: the same for any thread count
    loss = scalar_tensor(opts.reduction == Reduction::mean ? total / double(count) : total, logits.dtype());
  }
  if (needs_grad({logits}))
    record(loss, def, {logits, targets},
           [probs, tc, N, C, count, ignore = opts.ignore_index, reduction = opts.reduction](const Tensor& g,
                                                                                            const std::vector<bool>&) {
             Tensor gx = empty({N, C}, probs.dtype());
             Tensor gc = g.contiguous();
             dispatch_floating(probs.dtype(), "fenchel_young backward", [&]<class T>() {
               const T *pp = probs.data<T>(), *pg = gc.data<T>();
               const int64_t* t = tc.data<int64_t>();
               T* px = gx.data<T>();
               const double per_row = reduction == Reduction::mean ? 1.0 / double(count) : 1.0;
               for (int64_t i = 0; i < N; ++i) {
                 const T scale = t[i] == ignore ? T(0) : T(double(pg[reduction == Reduction::none ? i : 0]) * per_row);
                 for (int64_t j = 0; j < C; ++j) px[i * C + j] = pp[i * C + j] * scale;
                 if (t[i] != ignore) px[i * C + t[i]] -= scale;
               }
             });
             return std::vector<Tensor>{gx, Tensor()};
           });
  return loss;
}

Tensor labels(std::vector<int64_t> v) {
  const int64_t n = int64_t(v.size());
  return from_vector(v, {n});
}
// Logits with masked classes (−inf) away from the targets {2, 0, 1}.
Tensor masked_logits(Generator& g) {
  std::vector<double> v = rn(g, {3, 4}).to_vector<double>();
  v[1] = v[3] = v[10] = -INFINITY;
  return from_vector(v, {3, 4});
}
FenchelYoungOptions reduced(Reduction r) {
  FenchelYoungOptions o;
  o.reduction = r;
  return o;
}

}  // namespace

// clang-format off: one case per line pair (docs/design-notes.md)
static const OpDef kSparsemaxLoss(
    "sparsemax_loss", "dz = g (p - onehot(y)) [/ count for mean], 0 on ignored rows; p = sparsemax(z)",
    {{"[4,5] mean with an ignored row",
      [](Generator& g) {
        return Inputs{rn(g, {4, 5}), labels({1, -100, 4, 0})};
      },
      [](const Inputs& in) { return sparsemax_loss(in[0], in[1]); }},
     {"sum, non-contiguous logits",
      [](Generator& g) {
        return Inputs{rn_t(g, {3, 4}), labels({3, 0, 2})};
      },
      [](const Inputs& in) { return sparsemax_loss(in[0], in[1], reduced(Reduction::sum)); }},
     {"none, masked (-inf) classes",
      [](Generator& g) {
        return Inputs{masked_logits(g), labels({2, 0, 1})};
      },
      [](const Inputs& in) { return sparsemax_loss(in[0], in[1], reduced(Reduction::none)); }}});
// clang-format on
Tensor sparsemax_loss(const Tensor& logits, const Tensor& targets, const FenchelYoungOptions& opts) {
  return fenchel_young(kSparsemaxLoss, Map::sparsemax, 2.0, logits, targets, opts);
}

// clang-format off
static const OpDef kEntmax15Loss(
    "entmax15_loss", "dz = g (p - onehot(y)) [/ count for mean], 0 on ignored rows; p = entmax15(z)",
    {{"[4,5] mean with an ignored row", [](Generator& g) { return Inputs{rn(g, {4, 5}), labels({1, -100, 4, 0})}; },
      [](const Inputs& in) { return entmax15_loss(in[0], in[1]); }},
     {"sum, non-contiguous logits", [](Generator& g) { return Inputs{rn_t(g, {3, 4}), labels({3, 0, 2})}; },
      [](const Inputs& in) { return entmax15_loss(in[0], in[1], reduced(Reduction::sum)); }},
     {"none, masked (-inf) classes", [](Generator& g) { return Inputs{masked_logits(g), labels({2, 0, 1})}; },
      [](const Inputs& in) { return entmax15_loss(in[0], in[1], reduced(Reduction::none)); }}});
// clang-format on
Tensor entmax15_loss(const Tensor& logits, const Tensor& targets, const FenchelYoungOptions& opts) {
  return fenchel_young(kEntmax15Loss, Map::entmax15, 1.5, logits, targets, opts);
}

// clang-format off
static const OpDef kEntmaxBisectLoss(
    "entmax_bisect_loss", "dz = g (p - onehot(y)) [/ count for mean], 0 on ignored rows; p = entmax_bisect(z, α)",
    {{"α = 1.25, [4,5] mean with an ignored row", [](Generator& g) { return Inputs{rn(g, {4, 5}), labels({1, -100, 4, 0})}; },
      [](const Inputs& in) { return entmax_bisect_loss(in[0], in[1], 1.25); }},
     {"α = 1.75, none, non-contiguous logits", [](Generator& g) { return Inputs{rn_t(g, {3, 4}), labels({3, 0, 2})}; },
      [](const Inputs& in) { return entmax_bisect_loss(in[0], in[1], 1.75, reduced(Reduction::none)); }},
     {"α = 2.5, sum, masked (-inf) classes", [](Generator& g) { return Inputs{masked_logits(g), labels({2, 0, 1})}; },
      [](const Inputs& in) { return entmax_bisect_loss(in[0], in[1], 2.5, reduced(Reduction::sum)); }}});
// clang-format on
Tensor entmax_bisect_loss(const Tensor& logits, const Tensor& targets, double alpha, const FenchelYoungOptions& opts) {
  return fenchel_young(kEntmaxBisectLoss, Map::bisect, alpha, logits, targets, opts);
}

// ---- the classifier's loss from its config -----------------------------------------------------

namespace {
const char* kLossTypes = "cross_entropy, sparsemax, entmax15, entmax_bisect";
}

ClassifierLoss ClassifierLoss::from_json(const nlohmann::json& j) {
  const char* op = "loss config";
  ClassifierLoss l;
  if (j.is_string()) {
    l.type = j.get<std::string>();
  } else if (j.is_object()) {
    for (auto& [key, value] : j.items())
      if (key != "type" && key != "alpha") fail<ValueError>(op, "unknown key '", key, "' (known: type, alpha)");
    if (!j.contains("type") || !j["type"].is_string())
      fail<ValueError>(op, "needs a \"type\" string (", kLossTypes, "), got ", j.dump());
    l.type = j["type"].get<std::string>();
    if (j.contains("alpha")) {
      if (l.type != "entmax_bisect")
        fail<ValueError>(op, "\"alpha\" is for entmax_bisect only, got type '", l.type, "'");
      if (!j["alpha"].is_number()) fail<ValueError>(op, "alpha must be a number, got ", j["alpha"].dump());
      l.alpha = j["alpha"].get<double>();
    }
  } else {
    fail<ValueError>(op, "expected a string or an object like {\"type\": \"entmax_bisect\", \"alpha\": 1.3}, got ",
                     j.dump());
  }
  if (l.type != "cross_entropy" && l.type != "sparsemax" && l.type != "entmax15" && l.type != "entmax_bisect")
    fail<ValueError>(op, "unknown loss type '", l.type, "' (known: ", kLossTypes, ")");
  if (l.type == "entmax_bisect" && !(l.alpha > 1 && std::isfinite(l.alpha)))
    fail<ValueError>(op, "entmax_bisect needs a finite alpha > 1, got ", l.alpha);
  return l;
}

nlohmann::json ClassifierLoss::to_json() const {
  if (type == "entmax_bisect") return {{"type", type}, {"alpha", alpha}};
  return type;
}

Tensor ClassifierLoss::operator()(const Tensor& logits, const Tensor& targets, int64_t ignore_index) const {
  FenchelYoungOptions fy;
  fy.ignore_index = ignore_index;
  if (type == "sparsemax") return sparsemax_loss(logits, targets, fy);
  if (type == "entmax15") return entmax15_loss(logits, targets, fy);
  if (type == "entmax_bisect") return entmax_bisect_loss(logits, targets, alpha, fy);
  return cross_entropy(logits, targets, {ignore_index, 0.0});
}

}  // namespace attnlab

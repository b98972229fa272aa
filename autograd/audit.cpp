#include "autograd/audit.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <unordered_map>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/rng.h"

namespace attnlab {

namespace {

// ---- element access ----------------------------------------------------------------------------

// Calls f(flat, offset) for every element of a strided layout, flat in row-major order.
template <class F>
void for_each_element(const Shape& shape, const Shape& strides, int64_t offset, F&& f) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  Shape idx(shape.size(), 0);
  int64_t off = offset;
  for (int64_t flat = 0; flat < n; ++flat) {
    f(flat, off);
    for (size_t d = shape.size(); d-- > 0;) {
      off += strides[d];
      if (++idx[d] < shape[d]) break;
      off -= strides[d] * shape[d];
      idx[d] = 0;
    }
  }
}

int64_t element_offset(const TensorImpl& t, int64_t flat) {
  int64_t off = t.offset;
  for (size_t d = t.shape.size(); d-- > 0;) {
    off += (flat % t.shape[d]) * t.strides[d];
    flat /= t.shape[d];
  }
  return off;
}

ValueSummary summarize(const Tensor& t) {
  ValueSummary s;
  s.numel = t.numel();
  if (!is_floating(t.dtype()) || s.numel == 0) return s;
  const TensorImpl& impl = t.impl();
  double lo = INFINITY, hi = -INFINITY, sum = 0, sq = 0;
  int64_t finite = 0;
  auto visit = [&](double v) {
    if (std::isnan(v)) {
      ++s.nonfinite;
      return;
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    if (!std::isfinite(v)) {
      ++s.nonfinite;
      return;
    }
    ++finite;
    sum += v;
    sq += v * v;
  };
  if (t.dtype() == DType::f64) {
    const double* p = static_cast<const double*>(impl.storage->data);
    for_each_element(impl.shape, impl.strides, impl.offset, [&](int64_t, int64_t off) { visit(p[off]); });
  } else if (t.dtype() == DType::f32) {
    const float* p = static_cast<const float*>(impl.storage->data);
    for_each_element(impl.shape, impl.strides, impl.offset, [&](int64_t, int64_t off) { visit(double(p[off])); });
  } else {
    return s;
  }
  s.min = lo <= hi ? lo : NAN;
  s.max = lo <= hi ? hi : NAN;
  s.mean = finite ? sum / double(finite) : NAN;
  s.norm = std::sqrt(sq);
  return s;
}

double norm_of(const std::vector<double>& v) {
  double sq = 0;
  for (double x : v) sq += x * x;
  return std::sqrt(sq);
}

// ---- hooks -------------------------------------------------------------------------------------

// Installs a record hook with grad mode on (nodes must be recorded to be counted), restoring both.
class HookScope {
 public:
  explicit HookScope(RecordHook* h) : prev_(set_record_hook(h)), grad_prev_(grad_enabled()) { set_grad_enabled(true); }
  ~HookScope() {
    set_record_hook(prev_);
    set_grad_enabled(grad_prev_);
  }
  HookScope(const HookScope&) = delete;
  HookScope& operator=(const HookScope&) = delete;

 private:
  RecordHook* prev_;
  bool grad_prev_;
};

// The reference run: keeps every node (so Node* stays a valid key) and summarises its output.
class RecordingHook : public RecordHook {
 public:
  std::vector<std::shared_ptr<Node>> nodes;
  std::vector<ValueSummary> values;
  void on_record(Tensor& out) override {
    nodes.push_back(out.grad_fn());
    values.push_back(summarize(out));
  }
};

// A perturbed run. The tensor `src` (the output of node `producer`, or a leaf) reads as
// src + delta·e_flat from just after node `start` is recorded until just after node `target` is:
// the window in which, of the nodes that reach the loss, only `target` reads src. Its storage is
// swapped for a perturbed private copy, so tensors that share the original storage (views made
// before the window, the base of a view) keep the unperturbed values, and views made inside the
// window keep the perturbed ones.
class PerturbHook : public RecordHook {
 public:
  PerturbHook(const std::vector<std::shared_ptr<Node>>& reference, int64_t producer, std::shared_ptr<TensorImpl> leaf,
              int64_t start, int64_t target, int64_t flat, double delta)
      : reference_(reference),
        producer_(producer),
        start_(start),
        target_(target),
        flat_(flat),
        delta_(delta),
        src_(std::move(leaf)) {}
  ~PerturbHook() override { restore(); }

  void begin() {  // a leaf that no earlier node reaching the loss reads: perturbed from the start
    if (start_ == -1) swap_in();
  }
  void on_record(Tensor& out) override {
    const int64_t i = count_++;
    if (i >= int64_t(reference_.size()) || &out.grad_fn()->op() != &reference_[size_t(i)]->op())
      fail<AutogradError>("audit", "the function recorded ", out.grad_fn()->name(), " as node #", i,
                          i < int64_t(reference_.size())
                              ? cat(" where the first run recorded ", reference_[size_t(i)]->name())
                              : std::string(" past the first run's last node"),
                          ": its forward must record the same ops on every run (deterministic, dropout off)");
    if (i == producer_) src_ = out.impl_ptr();
    if (i == start_) swap_in();
    if (i == target_) {
      restore();
      reached_ = true;
    }
  }
  void finish() const {
    if (!reached_ || count_ != int64_t(reference_.size()))
      fail<AutogradError>("audit", "a re-run recorded ", count_, " nodes where the first recorded ", reference_.size(),
                          ": the forward must record the same ops on every run");
  }

 private:
  void swap_in() {
    if (!src_) fail<AutogradError>("audit", "internal: no tensor to perturb at node #", start_);
    original_ = src_->storage;
    auto copy = std::make_shared<Storage>(original_->nbytes, original_->device);
    std::memcpy(copy->data, original_->data, original_->nbytes);
    src_->storage = copy;
    static_cast<double*>(copy->data)[element_offset(*src_, flat_)] += delta_;
  }
  void restore() {
    if (original_) src_->storage = std::move(original_);
    original_.reset();
  }

  const std::vector<std::shared_ptr<Node>>& reference_;
  int64_t producer_, start_, target_, flat_;
  double delta_;
  std::shared_ptr<TensorImpl> src_;
  std::shared_ptr<Storage> original_;
  int64_t count_ = 0;
  bool reached_ = false;
};

double scalar_loss(const Tensor& loss) {
  if (!loss.defined() || loss.numel() != 1 || loss.dtype() != DType::f64)
    fail<AutogradError>("audit", "the function must return a one-element f64 loss, got ",
                        loss.defined() ? describe(loss) : std::string("an undefined tensor"));
  return loss.item<double>();
}

// ---- entry selection ---------------------------------------------------------------------------

// Up to k entries (all when k <= 0 or the tensor is small): the ceil(k/2) largest |analytic|, then
// seeded-random others. Ascending.
std::vector<int64_t> pick_entries(const std::vector<double>& analytic, int64_t k, Generator gen) {
  const int64_t n = int64_t(analytic.size());
  std::vector<int64_t> all(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) all[size_t(i)] = i;
  if (k <= 0 || n <= k) return all;
  std::stable_sort(all.begin(), all.end(), [&](int64_t a, int64_t b) {
    double fa = std::fabs(analytic[size_t(a)]), fb = std::fabs(analytic[size_t(b)]);
    if (std::isnan(fa)) return !std::isnan(fb);  // NaN first: it is certainly wrong
    return fa > fb;
  });
  std::vector<int64_t> chosen(all.begin(), all.begin() + (k + 1) / 2);
  std::vector<char> taken(static_cast<size_t>(n), 0);
  for (int64_t i : chosen) taken[size_t(i)] = 1;
  while (int64_t(chosen.size()) < k) {
    const std::array<uint32_t, 4> b = gen.bits(gen.advance(1));
    int64_t i = int64_t(((uint64_t(b[0]) << 32) | b[1]) % uint64_t(n));
    if (taken[size_t(i)]) continue;
    taken[size_t(i)] = 1;
    chosen.push_back(i);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// ---- what the backward produced ----------------------------------------------------------------

struct Observed {
  const Node* node = nullptr;
  double grad_out_norm = 0;
  std::vector<std::vector<double>> grads;  // per input slot; empty when undefined or unusable
  std::vector<bool> defined;
  std::string error;
};

std::string flat_index_str(const Shape& shape, int64_t flat) {
  Shape idx(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % std::max<int64_t>(shape[d], 1);
    flat /= std::max<int64_t>(shape[d], 1);
  }
  return shape_str(idx);
}

}  // namespace

// ---- the audit -----------------------------------------------------------------------------------

AuditReport audit_gradients(const std::function<Tensor()>& loss_fn, const AuditOptions& opts,
                            const std::map<const TensorImpl*, std::string>& leaf_names, const std::string& target) {
  if (!(opts.eps > 0) || !std::isfinite(opts.eps)) fail<ValueError>("audit", "eps must be positive, got ", opts.eps);
  if (!(opts.atol >= 0) || !(opts.rtol >= 0)) fail<ValueError>("audit", "atol and rtol must be >= 0");
  const auto t0 = std::chrono::steady_clock::now();
  AuditReport rep;
  rep.target = target;
  rep.options = opts;

  // 1. Reference run: the tape, with every node's creation index and forward value.
  RecordingHook rec;
  Tensor loss;
  {
    HookScope scope(&rec);
    loss = loss_fn();
  }
  rep.loss = scalar_loss(loss);
  if (!loss.requires_grad() || !loss.grad_fn())
    fail<AutogradError>("audit", "the loss does not depend on anything that requires grad: there is no tape to audit");
  rep.recorded = int64_t(rec.nodes.size());
  std::unordered_map<const Node*, int64_t> index_of;
  for (size_t i = 0; i < rec.nodes.size(); ++i) index_of[rec.nodes[i].get()] = int64_t(i);

  // Consumers that reach the loss, per tensor read: key = producer node, or leaf impl.
  const std::vector<std::shared_ptr<Node>> order = backward_order(loss);
  rep.reachable = int64_t(order.size());
  std::unordered_map<const void*, std::vector<int64_t>> consumers;
  std::vector<std::pair<std::shared_ptr<TensorImpl>, std::shared_ptr<TensorImpl>>> leaf_grads;  // leaf, its .grad
  for (const auto& node : order) {
    auto it = index_of.find(node.get());
    for (const Edge& e : node->next()) {
      if (!e.active()) continue;
      if (e.leaf && std::none_of(leaf_grads.begin(), leaf_grads.end(), [&](auto& p) { return p.first == e.leaf; }))
        leaf_grads.emplace_back(e.leaf, e.leaf->grad);
      if (it != index_of.end())
        consumers[e.node ? static_cast<const void*>(e.node.get()) : e.leaf.get()].push_back(it->second);
    }
  }
  for (auto& [key, v] : consumers) std::sort(v.begin(), v.end());

  // 2. Backward, keeping what every node received and produced.
  std::vector<Observed> observed;
  auto observer = [&](const Node& node, const Tensor& g_out, const std::vector<Tensor>& g_in) {
    Observed o;
    o.node = &node;
    if (g_out.defined() && is_floating(g_out.dtype())) o.grad_out_norm = summarize(g_out).norm;
    o.grads.resize(node.next().size());
    o.defined.resize(node.next().size(), false);
    if (g_in.size() != node.next().size())
      o.error = cat("backward returned ", g_in.size(), " gradients for ", node.next().size(), " inputs");
    for (size_t i = 0; i < g_in.size() && i < node.next().size(); ++i) {
      if (!g_in[i].defined() || !node.next()[i].active()) continue;
      if (g_in[i].shape() != node.input_shapes()[i] || g_in[i].dtype() != node.input_dtypes()[i]) {
        if (o.error.empty())
          o.error = cat("backward returned a gradient ", describe(g_in[i]), " for input ", i, ", which is ",
                        dtype_name(node.input_dtypes()[i]), shape_str(node.input_shapes()[i]));
        continue;
      }
      o.defined[i] = true;
      if (g_in[i].dtype() == DType::f64) o.grads[i] = g_in[i].to_vector<double>();
    }
    observed.push_back(std::move(o));
  };
  for (auto& [leaf, grad] : leaf_grads) leaf->grad.reset();  // the engine adds into an existing .grad in place
  try {
    run_backward(loss, Tensor(), false, observer);
  } catch (const std::exception& ex) {
    // The backward failed: a malformed gradient the observer saw is already on its node; otherwise
    // (a backward that threw, or returned the wrong number of gradients) the culprit is the next
    // node the engine would have run: the first after the last observed one that received a gradient.
    if (observed.empty() || observed.back().error.empty()) {
      std::unordered_map<const Node*, bool> received;
      received[order.front().get()] = true;
      for (const Observed& o : observed)
        for (size_t i = 0; i < o.node->next().size(); ++i)
          if (o.node->next()[i].node && i < o.defined.size() && o.defined[i])
            received[o.node->next()[i].node.get()] = true;
      size_t pos = 0;
      if (!observed.empty())
        while (pos < order.size() && order[pos].get() != observed.back().node) ++pos;
      pos = observed.empty() ? 0 : pos + 1;
      while (pos < order.size() && !received.count(order[pos].get())) ++pos;
      if (pos == order.size()) {
        for (auto& [leaf, grad] : leaf_grads) leaf->grad = grad;
        throw;
      }
      Observed o;
      o.node = order[pos].get();
      o.grads.resize(o.node->next().size());
      o.defined.resize(o.node->next().size(), false);
      o.error = cat("backward failed: ", ex.what());
      o.grad_out_norm = NAN;  // not seen
      observed.push_back(std::move(o));
    }
  }
  for (auto& [leaf, grad] : leaf_grads) leaf->grad = grad;  // the caller's .grad, untouched
  rep.executed = int64_t(observed.size());
  const bool backward_stopped = !observed.empty() && !observed.back().error.empty();
  rep.backward_failed = backward_stopped;
  loss = Tensor();

  // 3. The function must be deterministic: an unperturbed re-run gives the same loss, bit for bit
  //    up to reduction order.
  auto run = [&](int64_t producer, const std::shared_ptr<TensorImpl>& leaf, int64_t start, int64_t tgt, int64_t flat,
                 double delta) {
    PerturbHook hook(rec.nodes, producer, leaf, start, tgt, flat, delta);
    double value;
    {
      HookScope scope(&hook);
      hook.begin();
      value = scalar_loss(loss_fn());
    }
    hook.finish();
    ++rep.forward_runs;
    return value;
  };
  {
    const double again = run(-2, nullptr, -2, rep.recorded - 1, 0, 0.0);
    if (std::fabs(again - rep.loss) > 1e-12 * std::max(1.0, std::fabs(rep.loss)))
      fail<AutogradError>("audit", "two runs of the function gave losses ", rep.loss, " and ", again,
                          ": it must be deterministic (dropout off, no fresh noise)");
    rep.forward_runs = 0;
  }

  // 4. Node by node, in backward order.
  auto source_label = [&](const Edge& e) -> std::string {
    if (e.node) {
      auto it = index_of.find(e.node.get());
      return it == index_of.end() ? cat("(outside the function) ", e.node->name())
                                  : cat("#", it->second, " ", e.node->name());
    }
    auto it = leaf_names.find(e.leaf.get());
    if (it != leaf_names.end()) return "leaf " + it->second;
    return e.leaf->name.empty() ? std::string("leaf") : "leaf " + e.leaf->name;
  };

  for (size_t s = 0; s < observed.size(); ++s) {
    const Observed& o = observed[s];
    const Node& node = *o.node;
    AuditNode an;
    auto idx_it = index_of.find(&node);
    an.index = idx_it == index_of.end() ? -1 : idx_it->second;
    an.step = int64_t(s) + 1;
    an.op = node.name();
    an.formula = node.op().formula;
    an.input_shapes = node.input_shapes();
    an.input_dtypes = node.input_dtypes();
    an.out_shape = node.out_shape();
    an.out_dtype = node.out_dtype();
    if (an.index >= 0) an.value = rec.values[size_t(an.index)];
    an.grad_out_norm = o.grad_out_norm;
    an.error = o.error;
    if (!an.error.empty()) an.ok = false;

    std::vector<bool> grouped(node.next().size(), false);
    for (size_t i = 0; i < node.next().size(); ++i) {
      if (grouped[i]) continue;
      const Edge& e = node.next()[i];
      AuditInput in;
      in.slots = {int(i)};
      in.shape = node.input_shapes()[i];
      in.dtype = node.input_dtypes()[i];
      if (!e.active()) {
        in.note = is_floating(in.dtype) ? "does not require grad" : "not differentiable";
        an.inputs.push_back(std::move(in));
        continue;
      }
      in.source = source_label(e);
      for (size_t j = i + 1; j < node.next().size(); ++j) {
        const Edge& f = node.next()[j];
        if (f.active() && f.node == e.node && f.leaf == e.leaf) {
          grouped[j] = true;
          in.slots.push_back(int(j));
        }
      }
      int64_t producer = -1;
      if (e.node) {
        auto it = index_of.find(e.node.get());
        producer = it == index_of.end() ? -2 : it->second;
      }
      in.source_node = producer >= 0 ? producer : -1;
      if (an.index < 0 || producer == -2) {
        in.note = "produced outside the audited function: not checked";
      } else if (in.dtype != DType::f64) {
        in.note = cat(dtype_name(in.dtype), ": finite differences need f64");
      } else if (!an.error.empty()) {
        in.note = "not checked: malformed backward";
      } else {
        // The analytic gradient of this read: the sum over the slots that read this tensor.
        const int64_t n = shape_numel(in.shape);
        std::vector<double> analytic(static_cast<size_t>(n), 0.0);
        for (int slot : in.slots) {
          if (!o.defined[size_t(slot)]) {
            in.note = cat("backward returned no gradient for input ", slot, " (taken as 0)");
            continue;
          }
          const std::vector<double>& g = o.grads[size_t(slot)];
          for (int64_t k = 0; k < n; ++k) analytic[size_t(k)] += g[size_t(k)];
        }
        in.grad_norm = norm_of(analytic);
        // The window: after the producer and after every other consumer that reaches the loss and
        // was recorded before this node, so this node is the only one that sees the perturbation.
        int64_t start = producer;
        const void* key = e.node ? static_cast<const void*>(e.node.get()) : e.leaf.get();
        for (int64_t c : consumers[key])
          if (c < an.index) start = std::max(start, c);
        in.checked = true;
        double worst_excess = -INFINITY;
        // One random stream per (node, input), so the entries do not depend on what else is audited.
        const Generator entry_gen(opts.seed, uint64_t(an.index) * 256 + i);
        for (int64_t flat : pick_entries(analytic, opts.entries, entry_gen)) {
          const double plus = run(producer, e.leaf, start, an.index, flat, opts.eps);
          const double minus = run(producer, e.leaf, start, an.index, flat, -opts.eps);
          AuditEntry en;
          en.index = flat;
          en.analytic = analytic[size_t(flat)];
          en.numeric = (plus - minus) / (2 * opts.eps);
          en.abs_err = std::fabs(en.analytic - en.numeric);
          en.rel_err = en.abs_err / std::max(std::fabs(en.numeric), 1e-12);
          // How far along its tolerance the error is: <= 1 passes.
          const double tol = opts.atol + opts.rtol * std::fabs(en.numeric);
          double excess = tol > 0 ? en.abs_err / tol : (en.abs_err > 0 ? INFINITY : 0.0);
          if (!std::isfinite(en.analytic) || !std::isfinite(en.numeric)) excess = INFINITY;
          en.ok = excess <= 1;
          if (excess > worst_excess || in.entries.empty()) {
            worst_excess = excess;
            in.worst = en;
          }
          in.ok = in.ok && en.ok;
          in.entries.push_back(en);
          ++rep.entries_checked;
        }
        an.ok = an.ok && in.ok;
      }
      an.inputs.push_back(std::move(in));
    }
    rep.nodes.push_back(std::move(an));
    if (!rep.nodes.back().ok) {
      ++rep.failures;
      if (rep.first_failure < 0) rep.first_failure = int64_t(rep.nodes.size()) - 1;
      if (!opts.all) {
        rep.unchecked = int64_t(observed.size() - s - 1);
        break;
      }
    }
  }
  if (backward_stopped) rep.unchecked += rep.reachable - rep.executed;  // nodes the engine never reached
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

// ---- output ------------------------------------------------------------------------------------

namespace {

std::string num(double v, int precision = 4) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

std::string pad(const std::string& s, size_t w, bool right = false) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

std::string type_str(DType t, const Shape& s) { return cat(dtype_name(t), shape_str(s)); }

nlohmann::json jnum(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

nlohmann::json jentry(const AuditEntry& e) {
  return {{"index", e.index},           {"analytic", jnum(e.analytic)}, {"numeric", jnum(e.numeric)},
          {"abs_err", jnum(e.abs_err)}, {"rel_err", jnum(e.rel_err)},   {"ok", e.ok}};
}

}  // namespace

std::string AuditReport::text(bool ansi) const {
  const char* bold = ansi ? "\033[1m" : "";
  const char* red = bold;  // the first failure: bold, like the verdict
  const char* reset = ansi ? "\033[0m" : "";
  std::ostringstream os;
  if (!target.empty()) os << "audit: " << target << "\n";
  os << "loss " << num(loss, 8) << " (f64); " << recorded << " nodes recorded, " << reachable << " in backward order";
  if (backward_failed)
    os << "; the backward stopped after " << executed << " of them";
  else if (executed != reachable)
    os << ", " << (reachable - executed) << " received no gradient";
  os << "\nfinite differences of the loss: eps " << num(options.eps) << ", "
     << (options.entries > 0 ? cat("up to ", options.entries, " entries") : std::string("every entry"))
     << " per input; an entry passes when |analytic - numeric| <= " << num(options.atol) << " + " << num(options.rtol)
     << " |numeric|\n\n";

  // Column widths from the content.
  size_t w_op = 2, w_out = 6, w_in = 6, w_src = 6, w_idx = 4;
  for (const AuditNode& n : nodes) {
    w_op = std::max(w_op, n.op.size());
    w_out = std::max(w_out, type_str(n.out_dtype, n.out_shape).size());
    for (const AuditInput& in : n.inputs) {
      w_in = std::max(w_in, type_str(in.dtype, in.shape).size());
      w_src = std::max(w_src, in.source.size() + 5);
      if (in.checked) w_idx = std::max(w_idx, flat_index_str(in.shape, in.worst.index).size());
    }
  }
  const size_t w_num = 10;
  os << "  step   node  " << pad("op", w_op) << "  " << pad("output", w_out) << "  " << pad("min", w_num, true) << "  "
     << pad("max", w_num, true) << "  " << pad("mean", w_num, true) << "  " << pad("norm", w_num, true)
     << "  |grad out|  result\n";
  for (size_t k = 0; k < nodes.size(); ++k) {
    const AuditNode& n = nodes[k];
    const bool first = int64_t(k) == first_failure;
    const std::string on = first ? red : "", off = first ? reset : "";
    os << on << (first ? ">>" : "  ") << pad(std::to_string(n.step), 4, true) << "  "
       << pad("#" + std::to_string(n.index), 5, true) << "  " << pad(n.op, w_op) << "  "
       << pad(type_str(n.out_dtype, n.out_shape), w_out) << "  " << pad(num(n.value.min), w_num, true) << "  "
       << pad(num(n.value.max), w_num, true) << "  " << pad(num(n.value.mean), w_num, true) << "  "
       << pad(num(n.value.norm), w_num, true) << "  " << pad(num(n.grad_out_norm), 10, true) << "  "
       << (n.ok ? "PASS" : "FAIL") << (first ? "  <== first disagreement" : "") << off << "\n";
    const std::string indent(16, ' ');
    if (!n.error.empty()) os << on << indent << "backward: " << n.error << off << "\n";
    for (const AuditInput& in : n.inputs) {
      std::string slots;
      for (int sl : in.slots) {
        if (!slots.empty()) slots += '+';
        slots += std::to_string(sl);
      }
      os << on << indent << "in " << pad(slots, 3) << " " << pad(type_str(in.dtype, in.shape), w_in) << "  "
         << pad(in.source.empty() ? "-" : "from " + in.source, w_src) << "  ";
      if (!in.checked) {
        os << in.note << off << "\n";
        continue;
      }
      int64_t bad = 0;
      for (const AuditEntry& e : in.entries) bad += !e.ok;
      const AuditEntry& w = in.worst;
      os << pad(cat(in.entries.size() - size_t(bad), "/", in.entries.size(), bad ? " FAIL" : " ok"), 9) << "  worst "
         << pad(flat_index_str(in.shape, w.index), w_idx) << "  analytic " << pad(num(w.analytic, 6), 12, true)
         << "  numeric " << pad(num(w.numeric, 6), 12, true) << "  err " << num(w.abs_err, 2);
      if (!in.note.empty()) os << "  (" << in.note << ")";
      os << off << "\n";
    }
  }
  os << "\n";
  if (ok()) {
    os << bold << "PASS" << reset << ": all " << nodes.size() << " nodes agree with finite differences ("
       << entries_checked << " entries, " << forward_runs << " forward runs, " << num(seconds, 3) << " s)\n";
    return os.str();
  }
  const AuditNode& f = nodes[size_t(first_failure)];
  os << red << "FAIL" << reset << ": " << bold << "node #" << f.index << " " << f.op << reset << " (step " << f.step
     << " in backward order) is the first whose backward disagrees with finite differences\n";
  if (!f.error.empty()) os << "  backward: " << f.error << "\n";
  for (const AuditInput& in : f.inputs) {
    if (!in.checked || in.ok) continue;
    const AuditEntry& w = in.worst;
    os << "  input " << in.slots.front() << " (" << type_str(in.dtype, in.shape) << ", from " << in.source << "): at "
       << flat_index_str(in.shape, w.index) << " analytic " << num(w.analytic, 10) << ", numeric " << num(w.numeric, 10)
       << " (abs err " << num(w.abs_err, 3) << ", rel err " << num(w.rel_err, 3) << ")\n";
  }
  os << "  its backward: " << f.formula << "\n";
  const int64_t never_ran = backward_failed ? reachable - executed : 0;
  if (options.all)
    os << "  " << failures << " of " << nodes.size()
       << " nodes disagree; nodes after the first receive its wrong gradient and may fail only because of it\n";
  if (unchecked > never_ran)
    os << "  " << (unchecked - never_ran) << " later nodes not checked (--all checks them too)\n";
  if (never_ran > 0)
    os << "  the backward stopped at node #" << nodes.back().index << ": the " << never_ran
       << " nodes after it never ran\n";
  os << "  (" << entries_checked << " entries, " << forward_runs << " forward runs, " << num(seconds, 3) << " s)\n";
  return os.str();
}

nlohmann::json AuditReport::to_json() const {
  using nlohmann::json;
  json j;
  j["target"] = target;
  j["options"] = {{"entries", options.entries}, {"eps", options.eps}, {"atol", options.atol},
                  {"rtol", options.rtol},       {"all", options.all}, {"seed", options.seed}};
  j["loss"] = jnum(loss);
  j["recorded"] = recorded;
  j["reachable"] = reachable;
  j["executed"] = executed;
  j["backward_failed"] = backward_failed;
  j["forward_runs"] = forward_runs;
  j["entries_checked"] = entries_checked;
  j["seconds"] = seconds;
  j["ok"] = ok();
  j["failures"] = failures;
  j["unchecked"] = unchecked;
  if (first_failure >= 0) {
    const AuditNode& f = nodes[size_t(first_failure)];
    j["first_failure"] = {{"step", f.step}, {"node", f.index}, {"op", f.op}};
  } else {
    j["first_failure"] = nullptr;
  }
  json arr = json::array();
  for (const AuditNode& n : nodes) {
    json jn;
    jn["step"] = n.step;
    jn["node"] = n.index;
    jn["op"] = n.op;
    jn["formula"] = n.formula;
    json shapes = json::array();
    for (size_t i = 0; i < n.input_shapes.size(); ++i)
      shapes.push_back({{"dtype", dtype_name(n.input_dtypes[i])}, {"shape", n.input_shapes[i]}});
    jn["input_shapes"] = shapes;
    jn["output"] = {{"dtype", dtype_name(n.out_dtype)}, {"shape", n.out_shape},       {"min", jnum(n.value.min)},
                    {"max", jnum(n.value.max)},         {"mean", jnum(n.value.mean)}, {"norm", jnum(n.value.norm)},
                    {"nonfinite", n.value.nonfinite}};
    jn["grad_out_norm"] = jnum(n.grad_out_norm);
    jn["ok"] = n.ok;
    if (!n.error.empty()) jn["error"] = n.error;
    json ins = json::array();
    for (const AuditInput& in : n.inputs) {
      json ji;
      ji["slots"] = in.slots;
      ji["source"] = in.source;
      ji["source_node"] = in.source_node >= 0 ? json(in.source_node) : json(nullptr);
      ji["dtype"] = dtype_name(in.dtype);
      ji["shape"] = in.shape;
      ji["checked"] = in.checked;
      if (!in.note.empty()) ji["note"] = in.note;
      if (in.checked) {
        ji["ok"] = in.ok;
        ji["grad_norm"] = jnum(in.grad_norm);
        json es = json::array();
        for (const AuditEntry& e : in.entries) es.push_back(jentry(e));
        ji["entries"] = es;
        ji["worst"] = jentry(in.worst);
      }
      ins.push_back(ji);
    }
    jn["inputs"] = ins;
    arr.push_back(jn);
  }
  j["nodes"] = arr;
  return j;
}

}  // namespace attnlab

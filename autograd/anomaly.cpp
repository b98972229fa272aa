#include "autograd/anomaly.h"

#include <atomic>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/node.h"

namespace attnlab {

namespace {
std::atomic<bool> g_anomaly{false};
thread_local std::vector<std::string> g_module_stack;

template <class T>
int64_t first_nonfinite_contiguous(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

// "[2, 5]": the multi-index of flat position i in shape s.
std::string index_str(const Shape& s, int64_t i) {
  Shape idx(s.size());
  for (size_t d = s.size(); d-- > 0;) {
    idx[d] = s[d] ? i % s[d] : 0;
    i = s[d] ? i / s[d] : 0;
  }
  return shape_str(idx);
}

// A contiguous copy of t's data, off the tape (contiguous() records a copy op otherwise).
Tensor plain(const Tensor& t) {
  NoGradGuard no_grad;
  return t.detach().contiguous();
}

double value_at(const Tensor& t, int64_t i) {
  Tensor c = plain(t);
  return c.dtype() == DType::f32 ? double(c.data<float>()[i]) : c.data<double>()[i];
}

std::string where_recorded(const Node& node) {
  return node.recorded_in().empty() ? std::string("outside any module") : cat("in module '", node.recorded_in(), "'");
}

std::string shapes_of(const Node& node) {
  std::string s;
  for (size_t i = 0; i < node.input_shapes().size(); ++i)
    s += cat(i ? ", " : "", dtype_name(node.input_dtypes()[i]), shape_str(node.input_shapes()[i]));
  return s;
}

// Where a non-finite input came from: the op that produced it, or a leaf (data or a parameter).
std::string origin(const Tensor& t) {
  if (t.grad_fn()) return cat("from op '", t.grad_fn()->name(), "'");
  return "a leaf: the data or a parameter";
}
}  // namespace

void set_anomaly_mode(bool on) { g_anomaly.store(on, std::memory_order_relaxed); }
bool anomaly_mode() { return g_anomaly.load(std::memory_order_relaxed); }

AnomalyModeGuard::AnomalyModeGuard(bool on) : saved_(anomaly_mode()) { set_anomaly_mode(on); }
AnomalyModeGuard::~AnomalyModeGuard() { set_anomaly_mode(saved_); }

ModuleScope::ModuleScope(const std::string& path) : pushed_(anomaly_mode()) {
  if (pushed_) g_module_stack.push_back(path.empty() ? "<root>" : path);
}
ModuleScope::~ModuleScope() {
  if (pushed_ && !g_module_stack.empty()) g_module_stack.pop_back();
}
const std::string& current_module_path() {
  static const std::string none;
  return g_module_stack.empty() ? none : g_module_stack.back();
}

int64_t first_nonfinite(const Tensor& t) {
  if (!t.defined() || !is_floating(t.dtype()) || t.numel() == 0) return -1;
  Tensor c = plain(t);
  return c.dtype() == DType::f32 ? first_nonfinite_contiguous(c.data<float>(), c.numel())
                                 : first_nonfinite_contiguous(c.data<double>(), c.numel());
}

void check_forward_anomaly(const Node& node, const Tensor& out, const std::vector<Tensor>& inputs) {
  const int64_t bad = first_nonfinite(out);
  if (bad < 0) return;
  const double v = value_at(out, bad);
  std::string why;
  bool inputs_finite = true;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int64_t b = first_nonfinite(inputs[i]);
    if (b < 0) continue;
    inputs_finite = false;
    why += cat("; input ", i, " ", describe(inputs[i]), " already holds ", value_at(inputs[i], b), " at ",
               index_str(inputs[i].shape(), b), " (", origin(inputs[i]), ")");
  }
  if (!std::isnan(v) && !inputs_finite) return;  // an infinity that came in (a mask's -inf) flows on
  throw AnomalyError(cat("anomaly in forward: op '", node.name(), "' produced ", v, " at ", index_str(out.shape(), bad),
                         " of its output ", describe(out), "; inputs ", shapes_of(node),
                         inputs_finite ? " (all finite)" : "", why, "; recorded ", where_recorded(node)));
}

void check_backward_anomaly(const Node& node, const Tensor& grad_out, const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const int64_t bad = first_nonfinite(grads[i]);
    if (bad < 0) continue;
    const int64_t up = first_nonfinite(grad_out);
    throw AnomalyError(cat("anomaly in backward: op '", node.name(), "' returned ", value_at(grads[i], bad), " at ",
                           index_str(grads[i].shape(), bad), " of the gradient of its input ", i, " ",
                           describe(grads[i]), "; inputs ", shapes_of(node), "; upstream gradient ", describe(grad_out),
                           up < 0 ? " (finite)" : cat(" (holds ", value_at(grad_out, up), ")"), "; recorded ",
                           where_recorded(node), "; backward formula: ", node.op().formula));
  }
}

}  // namespace attnlab

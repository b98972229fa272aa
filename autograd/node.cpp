#include "autograd/node.h"

#include <atomic>
#include <unordered_map>
#include <utility>

#include "autograd/anomaly.h"
#include "autograd/grad_mode.h"

namespace attnlab {

namespace {
thread_local bool g_grad_enabled = true;
thread_local RecordHook* g_record_hook = nullptr;
std::atomic<uint64_t> g_sequence{0};
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

// ---- registry --------------------------------------------------------------------------------

namespace {
std::vector<const OpDef*>& mutable_registry() {
  static std::vector<const OpDef*> r;
  return r;
}
}  // namespace

OpDef::OpDef(std::string op_name, std::string backward_formula, std::vector<GradcheckCase> gradcheck_cases,
             Listing listing)
    : name(std::move(op_name)), formula(std::move(backward_formula)), cases(std::move(gradcheck_cases)) {
  if (listing == Listing::listed) mutable_registry().push_back(this);
}
const std::vector<const OpDef*>& op_registry() { return mutable_registry(); }
const OpDef* find_op(const std::string& name) {
  for (const OpDef* op : op_registry())
    if (op->name == name) return op;
  return nullptr;
}

// ---- nodes -----------------------------------------------------------------------------------

Node::Node(const OpDef& op, std::vector<Edge> next, std::vector<Shape> input_shapes, std::vector<DType> input_dtypes,
           Shape out_shape, DType out_dtype, BackwardFn fn)
    : op_(&op),
      next_(std::move(next)),
      input_shapes_(std::move(input_shapes)),
      input_dtypes_(std::move(input_dtypes)),
      out_shape_(std::move(out_shape)),
      out_dtype_(out_dtype),
      fn_(std::move(fn)),
      sequence_(g_sequence++) {}

std::vector<Tensor> Node::apply(const Tensor& grad_out) const {
  if (!fn_)
    fail<AutogradError>(op_->name.c_str(),
                        "backward through this node a second time, but its saved tensors were already freed; "
                        "pass retain_graph=true to the first backward");
  std::vector<bool> needs(next_.size());
  for (size_t i = 0; i < next_.size(); ++i) needs[i] = next_[i].active();
  NoGradGuard no_grad;
  return fn_(grad_out, needs);
}

const Tensor& SavedTensor::get() const {
  if (t_.defined() && t_.version() != version_)
    fail<AutogradError>(op_, "a tensor saved for backward (", describe(t_),
                        ") was modified in place after it was saved (version ", t_.version(), ", expected ", version_,
                        ")");
  return t_;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}
bool needs_grad(std::initializer_list<Tensor> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(Tensor& out, const OpDef& op, const std::vector<Tensor>& inputs, BackwardFn fn) {
  std::vector<Edge> next;
  std::vector<Shape> shapes;
  std::vector<DType> dtypes;
  next.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined() && t.requires_grad()) {
      if (t.grad_fn()) e.node = t.grad_fn();
      else e.leaf = t.impl_ptr();
    }
    next.push_back(std::move(e));
    shapes.push_back(t.defined() ? t.shape() : Shape{});
    dtypes.push_back(t.defined() ? t.dtype() : DType::f32);
  }
  out.impl().grad_fn = std::make_shared<Node>(op, std::move(next), std::move(shapes), std::move(dtypes), out.shape(),
                                              out.dtype(), std::move(fn));
  out.impl().requires_grad = true;
  if (anomaly_mode()) {
    out.impl().grad_fn->set_recorded_in(current_module_path());
    check_forward_anomaly(*out.impl().grad_fn, out, inputs);
  }
  if (g_record_hook) g_record_hook->on_record(out);
}

RecordHook* set_record_hook(RecordHook* hook) { return std::exchange(g_record_hook, hook); }

void check_inplace(const Tensor& t, const char* op) {
  if (grad_enabled() && t.requires_grad())
    fail<AutogradError>(op, "in-place write to ", describe(t),
                        ", which requires grad: autograd cannot track it. Use the out-of-place op, or wrap "
                        "parameter updates in NoGradGuard");
}

}  // namespace attnlab

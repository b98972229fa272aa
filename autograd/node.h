// A node of the tape: the op that produced a tensor, what its backward needs, and where the
// gradients of its inputs go.
#pragma once
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "autograd/registry.h"
#include "core/tensor.h"

namespace attnlab {

// Where one input's gradient goes: to the node that produced it, or into a leaf's .grad.
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<TensorImpl> leaf;
  bool active() const { return node || leaf; }
};

// Given dL/d(output) and which inputs need a gradient, returns dL/d(input) per input (an
// undefined Tensor where not needed).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<bool>& needs)>;

class Node {
 public:
  Node(const OpDef& op, std::vector<Edge> next, std::vector<Shape> input_shapes, std::vector<DType> input_dtypes,
       Shape out_shape, DType out_dtype, BackwardFn fn);
  const OpDef& op() const { return *op_; }
  const std::string& name() const { return op_->name; }
  const std::vector<Edge>& next() const { return next_; }
  const std::vector<Shape>& input_shapes() const { return input_shapes_; }
  const std::vector<DType>& input_dtypes() const { return input_dtypes_; }
  const Shape& out_shape() const { return out_shape_; }
  DType out_dtype() const { return out_dtype_; }
  uint64_t sequence() const { return sequence_; }  // creation order, for stable traversals
  bool released() const { return !fn_; }
  // The module path the op ran in (recorded in anomaly mode only; "" otherwise).
  const std::string& recorded_in() const { return recorded_in_; }
  void set_recorded_in(std::string path) { recorded_in_ = std::move(path); }
  // Runs the backward; throws AutogradError if the saved state was already released.
  std::vector<Tensor> apply(const Tensor& grad_out) const;
  void release() { fn_ = nullptr; }  // drops saved tensors

 private:
  const OpDef* op_;
  std::vector<Edge> next_;
  std::vector<Shape> input_shapes_;
  std::vector<DType> input_dtypes_;
  Shape out_shape_;
  DType out_dtype_;
  BackwardFn fn_;
  uint64_t sequence_;
  std::string recorded_in_;
};

// A tensor saved for backward, with the storage version it had; get() refuses if it changed.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const char* op) : t_(t), version_(t.defined() ? t.version() : 0), op_(op) {}
  const Tensor& get() const;

 private:
  Tensor t_;
  uint64_t version_ = 0;
  const char* op_ = "";
};

// True when grad mode is on and any input requires grad (then the op must record a node).
bool needs_grad(std::initializer_list<Tensor> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);
// Records `op` as the producer of `out` (which then requires grad).
void record(Tensor& out, const OpDef& op, const std::vector<Tensor>& inputs, BackwardFn fn);

// Observes the tape as it is written (the gradient audit, autograd/audit.h). While a hook is set on
// this thread, record() calls it with each new node's output right after the node is attached,
// before any later op can read that output; the hook may change the data of that or earlier tensors,
// or swap their storage. Unset (the default) it costs record() one thread-local load.
class RecordHook {
 public:
  virtual ~RecordHook() = default;
  virtual void on_record(Tensor& out) = 0;
};
RecordHook* set_record_hook(RecordHook* hook);  // returns the previous hook (nullptr: none)

// Refuses an in-place write that autograd could not account for.
void check_inplace(const Tensor& t, const char* op);

}  // namespace attnlab

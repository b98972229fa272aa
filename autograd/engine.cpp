#include "autograd/engine.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "autograd/anomaly.h"
#include "autograd/grad_mode.h"

namespace attnlab {

std::vector<std::shared_ptr<Node>> backward_order(const Tensor& root) {
  // Iterative DFS post-order gives producers after consumers once reversed.
  std::vector<std::shared_ptr<Node>> post;
  if (!root.grad_fn()) return post;
  std::unordered_set<const Node*> seen;
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack;
  stack.push_back({root.grad_fn(), 0});
  seen.insert(root.grad_fn().get());
  while (!stack.empty()) {
    auto& [node, i] = stack.back();
    if (i < node->next().size()) {
      const Edge& e = node->next()[i++];
      if (e.node && seen.insert(e.node.get()).second) stack.push_back({e.node, 0});
    } else {
      post.push_back(node);
      stack.pop_back();
    }
  }
  std::reverse(post.begin(), post.end());
  return post;
}

namespace {
void accumulate(Tensor& slot, const Tensor& g) { slot = slot.defined() ? add(slot, g) : g; }

// True when g is a plain tensor nobody else can reach: the only handle to its impl, the only view
// of a storage it fills exactly, not part of a graph.
bool exclusively_owned(const Tensor& g) {
  const TensorImpl& t = g.impl();
  return g.impl_ptr().use_count() == 1 && t.storage.use_count() == 1 && g.storage_offset() == 0 && g.is_contiguous() &&
         t.storage->nbytes == size_t(g.numel()) * g.element_size() && !t.grad_fn && !t.requires_grad && !t.grad &&
         t.name.empty();
}

// A leaf's .grad is its own buffer (never an alias of another gradient), summed in place. The first
// gradient is adopted as it is when nothing else holds it (the usual fresh backward output) and
// copied otherwise: the copy was a measurable share of a step for large leaves.
void accumulate_leaf(TensorImpl& leaf, const Tensor& g) {
  if (leaf.grad) Tensor(leaf.grad).add_(g);
  else leaf.grad = exclusively_owned(g) ? g.impl_ptr() : g.clone().impl_ptr();
}

void check_grad(const Node& node, size_t i, const Tensor& g) {
  if (g.shape() != node.input_shapes()[i] || g.dtype() != node.input_dtypes()[i])
    fail<AutogradError>(node.name().c_str(), "backward returned a gradient ", describe(g), " for input ", i,
                        ", which is ", dtype_name(node.input_dtypes()[i]), shape_str(node.input_shapes()[i]));
}
}  // namespace

void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph, const BackwardObserver& observer) {
  if (!root.requires_grad())
    fail<AutogradError>("backward", "the tensor ", describe(root),
                        " does not require grad (no input required grad, or it was computed under no_grad)");
  Tensor seed = grad;
  if (!seed.defined()) {
    if (root.numel() != 1)
      fail<AutogradError>("backward", "an implicit gradient needs a one-element output, got ", describe(root),
                          "; pass the upstream gradient");
    seed = ones(root.shape(), root.dtype());
  } else if (seed.shape() != root.shape() || seed.dtype() != root.dtype()) {
    fail<ShapeError>("backward", "gradient ", describe(seed), " does not match output ", describe(root));
  }
  NoGradGuard no_grad;
  if (!root.grad_fn()) {  // a leaf
    accumulate_leaf(root.impl(), seed);
    return;
  }
  std::unordered_map<const Node*, Tensor> pending;
  pending[root.grad_fn().get()] = seed;
  for (const std::shared_ptr<Node>& node : backward_order(root)) {
    auto it = pending.find(node.get());
    if (it == pending.end()) continue;  // no gradient flowed here
    Tensor g_out = std::move(it->second);
    pending.erase(it);
    std::vector<Tensor> g_in = node->apply(g_out);
    if (g_in.size() != node->next().size())
      fail<AutogradError>(node->name().c_str(), "backward returned ", g_in.size(), " gradients for ",
                          node->next().size(), " inputs");
    if (anomaly_mode()) check_backward_anomaly(*node, g_out, g_in);
    if (observer) observer(*node, g_out, g_in);
    for (size_t i = 0; i < g_in.size(); ++i) {
      const Edge& e = node->next()[i];
      if (!e.active() || !g_in[i].defined()) continue;
      check_grad(*node, i, g_in[i]);
      if (e.node) {
        accumulate(pending[e.node.get()], g_in[i]);
      } else {
        accumulate_leaf(*e.leaf, g_in[i]);
      }
    }
    if (!retain_graph) node->release();
  }
}

}  // namespace attnlab

// Reverse-mode engine: a topological sweep from the root's node back to the leaves.
#pragma once
#include <functional>

#include "autograd/node.h"

namespace attnlab {

// Called once per node, in execution order, with the gradient it received and the ones it produced.
using BackwardObserver =
    std::function<void(const Node& node, const Tensor& grad_out, const std::vector<Tensor>& grad_inputs)>;

// Accumulates d(root)/d(leaf) into every reachable leaf's .grad. `grad` defaults to 1 for a
// one-element root. Saved tensors are released after use unless retain_graph.
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph, const BackwardObserver& observer = {});

// Nodes reachable from root, in the order backward would run them.
std::vector<std::shared_ptr<Node>> backward_order(const Tensor& root);

}  // namespace attnlab

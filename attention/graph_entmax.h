// α-entmax attention computed on a graph only (Sparsefinder, methods.md §5.5): for every batch, head
// and query i, the scores z_e = scale · q_i · k_j of the row's edges (i, j), p = α-entmax(z) over
// those edges (a pair that is not an edge is absent: weight 0, no gradient), out_i = Σ_e p_e v_j.
// Cost O(E · d) for E edges instead of O(Tq · Tk · d). When the graph holds every key of a row's true
// support, that row's output equals full entmax attention (the threshold τ depends on the support only).
#pragma once
#include <memory>

#include "attention/attention_graph.h"

namespace attnlab {

// q [B, H, Tq, dh], k and v [B, H, Tk, dh]; the graph's shape is [B, H, Tq, Tk]. alpha > 1: 2 is
// sparsemax and 1.5 is 1.5-entmax (both exact), anything else bisection. A row without edges gives 0.
// Backward: dp_e = dO_i · v_j, dz = entmax's row backward, dQ_i = scale Σ_e dz_e k_j, dK_j += scale dz_e q_i,
// dV_j += p_e dO_i (one writer per head: deterministic).
Tensor graph_entmax_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                              std::shared_ptr<const AttentionGraph> graph, double alpha, double scale);

}  // namespace attnlab

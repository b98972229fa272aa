// Gumbel-Sinkhorn balancing of block sort logits (Sparse Sinkhorn Attention, Tay et al. 2020, §3):
// T alternating row and column normalisations in the log domain, then S = exp(Z^T), a soft
// permutation of the N blocks (rows: destination blocks, columns: source blocks).
//
//   A^t = Z^{t-1} − LSE_r(Z^{t-1}),   Z^t = A^t − LSE_c(A^t),   t = 1..T
//
// Blocked entries (padding blocks, the causal mask) are −inf throughout and give S = 0; a row or
// column with nothing left gives zeros, never NaN. Causal Sinkhorn balancing (the paper's decoder
// form): entry (i, j) is blocked unless j < i (only strictly past blocks can be sorted into block
// i), and the column normaliser of entry (i, j) is the prefix LSE over rows i' <= i only, so block
// i's sort weights depend on the logits of blocks <= i alone (a full column LSE would let later
// blocks change them). Backward: the unrolled log-softmax VJPs, hand-derived in docs/sparse-sinkhorn.md.
#pragma once
#include "core/tensor.h"

namespace attnlab {

struct SinkhornBalance {
  int64_t iterations = 7;  // T, the number of (row, column) pairs; >= 1
  bool causal = false;     // strictly-lower mask and prefix column normalisers
};

// z [B, H, N, N] log-scores (sort logits with noise, over the temperature), f32 or f64, any strides;
// blocked: optional b8 broadcastable to [B, H, N, N] (true = the entry is excluded). Returns S, z's shape.
Tensor sinkhorn_balance(const Tensor& z, const Tensor& blocked, const SinkhornBalance& opts);

// The same from registered ops (masked_fill, log_softmax, and for the causal prefix LSE exp, matmul
// by a triangular matrix of ones and log): the reference the fused op is tested against.
Tensor sinkhorn_balance_composite(const Tensor& z, const Tensor& blocked, const SinkhornBalance& opts);

// The entries blocked by `opts` and `blocked` together, b8 broadcastable to [B, H, N, N] (undefined
// when nothing is blocked).
Tensor sinkhorn_blocked(const Tensor& blocked, int64_t n, bool causal);

// A hard permutation from a soft one (inference): greedily assigns the largest remaining entry of s
// [B, H, N, N] whose row and column are both free, skipping entries with s == 0 (blocked), so rows
// that cannot be matched stay zero. No grad; s's dtype, 0/1 entries.
Tensor hard_permutation(const Tensor& s);

}  // namespace attnlab

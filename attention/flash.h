// Fused softmax attention on the CPU (FlashAttention-2 style, Dao 2023): queries are cut into tiles
// that stream over key/value tiles with an online softmax (running row max and sum), so no n×n
// matrix is ever stored; the forward saves only the output and the per-row log-sum-exp, and the
// backward recomputes score tiles from q, k and that LSE. Tile matmuls go to cblas on per-thread
// scratch. Derivation: docs/backward.md#flash-attention.
#pragma once
#include "attention/attention.h"

namespace attnlab {

// softmax(q kᵀ · scale + mask) v for q [B, H, Tq, dh], k and v [B, H, Tk, dh] (any strides, f32 or
// f64). mask.causal aligns queries with the last Tq keys, as causal_block_mask does. Fully masked
// query rows give zeros (and zero gradients). When lse_out is set it receives the per-row
// log-sum-exp of the masked scores, [B, H, Tq] (-inf on fully masked rows). Extra memory beyond
// inputs and outputs is O(n·d), never n×n: the LSE, per-thread tiles, and (f32 forward) a transposed
// copy of K.
Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, double scale,
                       Tensor* lse_out = nullptr);

// Block-local attention (defined in attention/local.cpp, on the block-sparse engine of
// attention/block_sparse.h): the sequence is cut into non-overlapping blocks
// of `block` positions and a query sees only the keys of its own block (plus mask.causal inside it
// and mask.key_padding). Positions as for causal: query i sits at key position i + Tk - Tq. The
// last block may be shorter.
Tensor local_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask, int64_t block,
                       double scale, Tensor* lse_out = nullptr);

namespace flash {
// Tile sizes (rows of q per tile, keys per tile) for the forward and the backward. Exposed for
// the benchmark and the tests (to force many tiles on small inputs); 0 restores the defaults.
struct Tiles {
  int64_t fwd_q = 0, fwd_k = 0, bwd_q = 0, bwd_k = 0;
};
void set_tiles(const Tiles& t);
Tiles tiles();
// The tiles the last flash/local backward on this thread ran with: a call keeps the tiles in force
// at its forward, so a backward that runs later (with other settings) still uses them.
Tiles last_backward_tiles();
// What computes the f32 tile products in this build: "avx512" (the register kernel, when compiled
// for a CPU with AVX-512) or "blas" (cpu::gemm, the portable path). f64 always uses "blas".
const char* f32_tile_kernel();

// Forces tile sizes for one scope: the gradcheck cases put tile edges inside a few positions.
struct ScopedTiles {
  Tiles saved = tiles();
  explicit ScopedTiles(const Tiles& t) { set_tiles(t); }
  ~ScopedTiles() { set_tiles(saved); }
  ScopedTiles(const ScopedTiles&) = delete;
  ScopedTiles& operator=(const ScopedTiles&) = delete;
};
}  // namespace flash

}  // namespace attnlab

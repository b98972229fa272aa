// Block-sparse softmax attention: one engine for every method whose attention pattern is a set of
// (query block, key block) pairs — block-local today; Sparse Sinkhorn (sorted blocks), Routing
// (cluster segments) and Sparsefinder (predicted graphs) later. A Layout says, for each query block,
// which key/value blocks it reads; the engine runs the tiled online softmax over exactly those blocks,
// forward and backward, deterministically for any thread count. Design, derivation and scheduling:
// docs/block-sparse.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "autograd/registry.h"

namespace attnlab::block_sparse {

// Where an entry's keys and values come from. Only the original K/V today; gathered or permuted copies
// and computed blocks (a softly sorted block) will be further sources, each a [B, H, T_s, dh] pair
// with its own block bounds, so that an entry names (source, block) and nothing else changes.
enum class Source : uint8_t { keys = 0 };

// How the pairs of one (query block, key block) tile are masked beyond key padding, which the engine
// always applies from the call's mask. full: every pair visible. causal: query i (at key position
// i + Tk - Tq) sees key j iff j <= i + Tk - Tq — the diagonal blocks of a causal layout.
enum class BlockMask : uint8_t { full = 0, causal = 1 };

struct Entry {
  int64_t block = 0;  // key/value block index within its source
  Source source = Source::keys;
  BlockMask mask = BlockMask::full;
};

// The layout of one call, shared by every batch and head. Blocks are contiguous position ranges of
// any length (a short last block, or variable-length segments): query block i covers rows
// [q_bounds[i], q_bounds[i + 1]), key block j keys [k_bounds[j], k_bounds[j + 1]). The lists are
// compressed rows: query block i reads entries[row_start[i] .. row_start[i + 1]), in any order (a
// permuted list is fine), each key block at most once. The transposed lists (for the backward: each
// key block's dK/dV has one writer) are built by make(): key block j is read by the entries
// col_entries[col_start[j] .. col_start[j + 1]), in increasing query block order.
struct Layout {
  std::vector<int64_t> q_bounds, k_bounds;
  std::vector<int64_t> row_start;
  std::vector<Entry> entries;
  std::vector<int64_t> col_start, col_entries;
  std::vector<int64_t> entry_row;  // the query block of each entry

  int64_t q_blocks() const { return int64_t(q_bounds.size()) - 1; }
  int64_t k_blocks() const { return int64_t(k_bounds.size()) - 1; }
  int64_t tq() const { return q_bounds.back(); }
  int64_t tk() const { return k_bounds.back(); }

  // Validates (bounds start at 0 and never decrease; every block index in range; no key block twice in
  // one list) and builds the transposed lists. A bad layout throws ValueError naming `op`.
  static Layout make(std::vector<int64_t> q_bounds, std::vector<int64_t> k_bounds,
                     const std::vector<std::vector<Entry>>& lists, const char* op = "block_sparse_attention");
  std::string describe() const;  // "layout [nq query blocks over Tq] x [nk key blocks over Tk], nnz entries"
};

// Bounds of blocks of `block` positions over [0, t), the last one shorter when block does not divide t.
std::vector<int64_t> even_bounds(int64_t t, int64_t block);

// Block-local attention as a layout: positions align as for causal (query i at key position
// i + tk - tq) and a query sees the keys of its own block of `block` positions; with `causal` also
// only the keys at or before its position. Query blocks whose block has no key read nothing.
Layout local_layout(int64_t tq, int64_t tk, int64_t block, bool causal);

// The layout as a dense b8 [Tq, Tk] mask (true = blocked), for the composite reference: query i sees
// key j iff some entry of i's block covers j (and, for a causal entry, j <= i + Tk - Tq).
Tensor dense_mask(const Layout& layout);

}  // namespace attnlab::block_sparse

namespace attnlab {

// softmax(scale q kᵀ restricted to the layout, with mask.key_padding) v for q [B, H, Tq, dh], k and v
// [B, H, Tk, dh] (any strides, f32 or f64), Tq and Tk as the layout's. mask.causal must be false: causal
// masking is part of the layout (BlockMask::causal). Query rows that see no key give zeros (and
// zero gradients); lse_out as for flash_attention. Extra memory O(n·dh), plus one dQ slot
// [B, H, rows, dh] for the query blocks that read more than one key tile chunk (docs/block-sparse.md).
Tensor block_sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const block_sparse::Layout& layout,
                              const AttentionMask& mask, double scale, Tensor* lse_out = nullptr);

// The same, recorded under a method's own op (its name in errors, its gradcheck cases): the entry
// point of the methods built on the engine (local_attention).
Tensor block_sparse_attention(const OpDef& op, const Tensor& q, const Tensor& k, const Tensor& v,
                              const block_sparse::Layout& layout, const AttentionMask& mask, double scale,
                              Tensor* lse_out = nullptr);

}  // namespace attnlab

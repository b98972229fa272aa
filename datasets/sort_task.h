// The algorithmic seq2seq sorting task of the Sparse Sinkhorn Attention paper (Tay et al. 2020),
// in Tensor2Tensor's `algorithmic_sort_problem` form (docs/datasets.md §7.4, docs/methods.md §8.2):
// a length L ~ U{min_len .. max_len}, L symbols drawn uniformly with replacement from
// [0, num_symbols), target = the same symbols sorted ascending. As in T2T, ids 0 and 1 are
// reserved (PAD, EOS), symbols are shifted by 2, and EOS ends both sides.
//
// Project defaults (§7.4): num_symbols 128, train on L <= 64, test on L <= 128 (2x longer, for
// length generalisation), 2k test examples; 256/512 settings for the sparse-attention comparisons.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace attnlab {

inline constexpr int64_t kSortPad = 0;
inline constexpr int64_t kSortEos = 1;
inline constexpr int64_t kSortNumReserved = 2;  // symbol v has token id v + kSortNumReserved

struct SortTaskConfig {
  int64_t num_symbols = 128;
  int64_t min_len = 1;
  int64_t max_len = 64;
};

// Token vocabulary of a model on this task: the symbols plus PAD and EOS.
inline int64_t sort_vocab_size(const SortTaskConfig& c) { return c.num_symbols + kSortNumReserved; }

struct SortBatch {
  Tensor input;    // i64 [B, max_len + 1]: L shifted symbols, EOS, then PAD
  Tensor target;   // i64 [B, max_len + 1]: the same symbols sorted ascending, EOS, then PAD
  Tensor lengths;  // i64 [B]: L of each row (EOS not counted)
};

// B examples. Example r uses its own block of max_len + 1 generator counters, so a data set is a
// pure function of (seed, stream, offset) and any example can be regenerated on its own. The
// width is always max_len + 1, whatever the lengths drawn, so shapes are the same every step.
// ValueError on num_symbols < 1, min_len < 1, max_len < min_len or batch_size < 0.
SortBatch make_sort_batch(const SortTaskConfig& cfg, int64_t batch_size, Generator& g);

// ---- metrics (docs/datasets.md §7.4) -----------------------------------------------------------

// Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b.
int64_t edit_distance(std::span<const int64_t> a, std::span<const int64_t> b);

// edit_distance(pred, target) / len(target) (lower is better; can exceed 1 when pred is too long).
// An empty target counts as length 1, so the result is len(pred).
double normalized_edit_distance(std::span<const int64_t> pred, std::span<const int64_t> target);

// The tokens of one row up to (not including) its first reserved id (EOS or PAD): what a decoded
// row "says". A row with no EOS is taken whole.
std::vector<int64_t> strip_sort_row(std::span<const int64_t> row);

struct SortMetrics {
  double exact_match = 0;    // fraction of rows whose stripped prediction equals the stripped target
  double edit_distance = 0;  // mean normalized_edit_distance over rows
  int64_t count = 0;         // rows scored, to weight batches when averaging over a test set
};

// pred and target: i64 [B, *] (the widths may differ, e.g. a greedy decode of another length);
// each row is cut with strip_sort_row before scoring. ShapeError / DTypeError on other inputs.
SortMetrics sort_metrics(const Tensor& pred, const Tensor& target);

}  // namespace attnlab

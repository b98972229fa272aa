// Internal to the Sinkformer sources: which rows and columns take part in the Sinkhorn marginals,
// the balanced column marginal, and the option checks shared by the composite and the fused op.
#pragma once
#include <cstdint>
#include <vector>

#include "attention/attention.h"

namespace attnlab::sinkformer {

inline constexpr const char* kOp = "sinkformer_attention";
inline constexpr int64_t kMaxIterations = 1000;

// Included rows (queries) and columns (keys) per batch, and log b, b = n_rows / n_cols (balanced
// marginals: rows sum to 1, columns to b, so that a fixed point exists when the counts differ).
struct Marginals {
  std::vector<uint8_t> row_ok, col_ok;  // [B * Tq], [B * Tk]
  std::vector<double> log_b;            // [B]; 0 when either count is 0
  bool any_log_b = false;
};

// Padded keys are excluded; with Tq == Tk and a column step (iterations >= 2) padded queries too.
bool pads_queries(const AttentionMask& m, int64_t tq, int64_t tk, int64_t iterations);
Marginals marginals(const AttentionMask& m, int64_t B, int64_t tq, int64_t tk, int64_t iterations);
// iterations in [1, kMaxIterations]; a causal mask only with iterations = 1.
void check_options(const char* op, const Tensor& q, const Tensor& k, const AttentionMask& mask, int64_t iterations);

}  // namespace attnlab::sinkformer

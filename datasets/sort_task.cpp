#include "datasets/sort_task.h"

#include <algorithm>
#include <numeric>

namespace attnlab {

SortBatch make_sort_batch(const SortTaskConfig& cfg, int64_t batch_size, Generator& g) {
  const char* op = "make_sort_batch";
  if (cfg.num_symbols < 1) fail<ValueError>(op, "num_symbols must be >= 1, got ", cfg.num_symbols);
  if (cfg.min_len < 1) fail<ValueError>(op, "min_len must be >= 1, got ", cfg.min_len);
  if (cfg.max_len < cfg.min_len)
    fail<ValueError>(op, "max_len (", cfg.max_len, ") must be >= min_len (", cfg.min_len, ")");
  if (batch_size < 0) fail<ValueError>(op, "batch_size must be >= 0, got ", batch_size);

  const int64_t B = batch_size, W = cfg.max_len + 1, stride = cfg.max_len + 1;
  SortBatch out{zeros({B, W}, DType::i64), zeros({B, W}, DType::i64), empty({B}, DType::i64)};
  int64_t* in = out.input.data<int64_t>();
  int64_t* tg = out.target.data<int64_t>();
  int64_t* len = out.lengths.data<int64_t>();
  auto draw = [&](uint64_t counter, uint64_t range) {
    auto b = g.bits(counter);
    return int64_t((((uint64_t(b[0]) << 32) | b[1]) % range));  // bias <= range / 2^64: negligible
  };
  const uint64_t first = g.advance(uint64_t(B * stride));
  for (int64_t r = 0; r < B; ++r) {
    const uint64_t base = first + uint64_t(r * stride);  // counter 0: length; 1 + j: symbol j
    const int64_t L = cfg.min_len + draw(base, uint64_t(cfg.max_len - cfg.min_len + 1));
    int64_t* x = in + r * W;
    int64_t* y = tg + r * W;
    for (int64_t j = 0; j < L; ++j) x[j] = kSortNumReserved + draw(base + 1 + uint64_t(j), uint64_t(cfg.num_symbols));
    std::copy_n(x, L, y);
    std::sort(y, y + L);
    x[L] = y[L] = kSortEos;  // the rest stays kSortPad (0) from zeros()
    len[r] = L;
  }
  return out;
}

int64_t edit_distance(std::span<const int64_t> a, std::span<const int64_t> b) {
  // One row of the dynamic-programming table at a time: O(|a| |b|) time, O(|b|) memory.
  std::vector<int64_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), int64_t(0));
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diag = row[0];  // D[i-1][j-1]
    row[0] = int64_t(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t up = row[j];  // D[i-1][j]
      row[j] = std::min({up + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

double normalized_edit_distance(std::span<const int64_t> pred, std::span<const int64_t> target) {
  return double(edit_distance(pred, target)) / double(std::max<size_t>(target.size(), 1));
}

std::vector<int64_t> strip_sort_row(std::span<const int64_t> row) {
  auto end = std::find_if(row.begin(), row.end(), [](int64_t id) { return id >= 0 && id < kSortNumReserved; });
  return std::vector<int64_t>(row.begin(), end);
}

SortMetrics sort_metrics(const Tensor& pred, const Tensor& target) {
  const char* op = "sort_metrics";
  for (const Tensor* t : {&pred, &target}) {
    if (!t->defined()) fail<ValueError>(op, "undefined tensor");
    if (t->dtype() != DType::i64) fail<DTypeError>(op, "expected i64 token ids, got ", describe(*t));
    if (t->dim() != 2) fail<ShapeError>(op, "expected [B, T] token ids, got ", describe(*t));
  }
  if (pred.size(0) != target.size(0))
    fail<ShapeError>(op, "pred has ", pred.size(0), " rows but target has ", target.size(0));
  const std::vector<int64_t> p = pred.to_vector<int64_t>(), t = target.to_vector<int64_t>();
  const size_t B = size_t(pred.size(0)), wp = size_t(pred.size(1)), wt = size_t(target.size(1));
  SortMetrics m;
  m.count = int64_t(B);
  if (B == 0) return m;
  for (size_t r = 0; r < B; ++r) {
    const auto pr = strip_sort_row(std::span<const int64_t>(p).subspan(r * wp, wp));
    const auto tr = strip_sort_row(std::span<const int64_t>(t).subspan(r * wt, wt));
    m.exact_match += pr == tr ? 1.0 : 0.0;
    m.edit_distance += normalized_edit_distance(pr, tr);
  }
  m.exact_match /= double(B);
  m.edit_distance /= double(B);
  return m;
}

}  // namespace attnlab

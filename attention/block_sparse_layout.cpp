// The block-sparse layout: validation, transposed lists, and the layouts of the methods built on it.
#include <algorithm>
#include <sstream>

#include "attention/block_sparse.h"

namespace attnlab::block_sparse {

namespace {
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

void check_bounds(const char* op, const char* what, const std::vector<int64_t>& b) {
  if (b.empty() || b.front() != 0)
    fail<ValueError>(op, what, " block bounds must start at 0, got ", b.size(), " bounds");
  for (size_t i = 1; i < b.size(); ++i)
    if (b[i] < b[i - 1])
      fail<ValueError>(op, what, " block bounds must not decrease: bound ", i, " is ", b[i], " after ", b[i - 1]);
}
}  // namespace

Layout Layout::make(std::vector<int64_t> qb, std::vector<int64_t> kb, const std::vector<std::vector<Entry>>& lists,
                    const char* op) {
  check_bounds(op, "query", qb);
  check_bounds(op, "key", kb);
  Layout L;
  L.q_bounds = std::move(qb);
  L.k_bounds = std::move(kb);
  const int64_t nq = L.q_blocks(), nk = L.k_blocks();
  if (int64_t(lists.size()) != nq)
    fail<ValueError>(op, "layout has ", nq, " query blocks but ", lists.size(), " lists of key blocks");
  L.row_start.push_back(0);
  std::vector<int64_t> seen(size_t(nk), -1);  // the last query block that listed each key block
  for (int64_t i = 0; i < nq; ++i) {
    for (const Entry& e : lists[size_t(i)]) {
      if (e.block < 0 || e.block >= nk)
        fail<ValueError>(op, "query block ", i, " lists key block ", e.block, ", out of range [0, ", nk, ")");
      if (e.source != Source::keys) fail<ValueError>(op, "query block ", i, ": only Source::keys is supported");
      if (e.mask != BlockMask::full && e.mask != BlockMask::causal)
        fail<ValueError>(op, "query block ", i, ": unknown block mask ", int(e.mask));
      if (seen[size_t(e.block)] == i) fail<ValueError>(op, "query block ", i, " lists key block ", e.block, " twice");
      seen[size_t(e.block)] = i;
      L.entries.push_back(e);
      L.entry_row.push_back(i);
    }
    L.row_start.push_back(int64_t(L.entries.size()));
  }
  // Transpose by a counting sort: entries are in query block order, so each column list is too.
  L.col_start.assign(size_t(nk) + 1, 0);
  for (const Entry& e : L.entries) ++L.col_start[size_t(e.block) + 1];
  for (int64_t j = 0; j < nk; ++j) L.col_start[size_t(j) + 1] += L.col_start[size_t(j)];
  L.col_entries.resize(L.entries.size());
  std::vector<int64_t> fill(L.col_start.begin(), L.col_start.end() - 1);
  for (size_t e = 0; e < L.entries.size(); ++e) L.col_entries[size_t(fill[size_t(L.entries[e].block)]++)] = int64_t(e);
  return L;
}

std::string Layout::describe() const {
  std::ostringstream s;
  s << "layout [" << q_blocks() << " query blocks over " << tq() << "] x [" << k_blocks() << " key blocks over " << tk()
    << "], " << entries.size() << " entries";
  return s.str();
}

std::vector<int64_t> even_bounds(int64_t t, int64_t block) {
  if (block <= 0) fail<ValueError>("even_bounds", "block must be positive, got ", block);
  std::vector<int64_t> b{0};
  for (int64_t p = block; p < t; p += block) b.push_back(p);
  if (t > 0) b.push_back(t);
  return b;
}

Layout local_layout(int64_t tq, int64_t tk, int64_t block, bool causal) {
  if (block <= 0) fail<ValueError>("local_attention", "block must be positive, got ", block);
  const int64_t shift = tk - tq;  // query i sits at key position i + shift
  std::vector<int64_t> qb{0};
  std::vector<std::vector<Entry>> lists;
  if (tq > 0)
    for (int64_t c = floor_div(shift, block); c <= floor_div(tq - 1 + shift, block); ++c) {
      qb.push_back(std::min(tq, (c + 1) * block - shift));
      lists.push_back(c >= 0 ? std::vector<Entry>{{c, Source::keys, causal ? BlockMask::causal : BlockMask::full}}
                             : std::vector<Entry>{});  // queries before the first key see nothing
    }
  return Layout::make(std::move(qb), even_bounds(tk, block), lists, "local_attention");
}

Tensor dense_mask(const Layout& L) {
  const int64_t tq = L.tq(), tk = L.tk(), shift = tk - tq;
  Tensor m = empty({tq, tk}, DType::b8);
  uint8_t* p = m.data<uint8_t>();
  std::fill(p, p + tq * tk, uint8_t(1));
  for (int64_t i = 0; i < L.q_blocks(); ++i)
    for (int64_t e = L.row_start[size_t(i)]; e < L.row_start[size_t(i) + 1]; ++e) {
      const Entry& en = L.entries[size_t(e)];
      for (int64_t r = L.q_bounds[size_t(i)]; r < L.q_bounds[size_t(i) + 1]; ++r)
        for (int64_t j = L.k_bounds[size_t(en.block)]; j < L.k_bounds[size_t(en.block) + 1]; ++j)
          if (en.mask != BlockMask::causal || j <= r + shift) p[r * tk + j] = 0;
    }
  return m;
}

}  // namespace attnlab::block_sparse

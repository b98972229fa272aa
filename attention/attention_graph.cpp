#include "attention/attention_graph.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace attnlab {

namespace {

void check_same_shape(const char* op, const AttentionGraph& a, const AttentionGraph& b) {
  if (a.B != b.B || a.H != b.H || a.Tq != b.Tq || a.Tk != b.Tk)
    fail<ShapeError>(op, "graphs of different shapes: [", a.B, ", ", a.H, ", ", a.Tq, ", ", a.Tk, "] and [", b.B, ", ",
                     b.H, ", ", b.Tq, ", ", b.Tk, "]");
}

// Edges of a row that are also in another row (both sorted).
int64_t common(const int32_t* a, int64_t na, const int32_t* b, int64_t nb) {
  int64_t n = 0, i = 0, j = 0;
  while (i < na && j < nb) {
    if (a[i] == b[j]) ++n, ++i, ++j;
    else if (a[i] < b[j]) ++i;
    else ++j;
  }
  return n;
}

// The metrics given, per (b, h, query), the valid pairs: is_valid(b, i, j) and their count.
template <class Valid, class Count>
GraphMetrics metrics(const AttentionGraph& pred, const AttentionGraph& gold, Valid&& is_valid, Count&& n_valid) {
  check_same_shape("graph_metrics", pred, gold);
  pred.validate("graph_metrics");
  gold.validate("graph_metrics");
  GraphMetrics m;
  for (auto* v : {&m.sparsity, &m.recall, &m.exact, &m.gold_sparsity}) v->assign(size_t(pred.H), 0.0);
  for (int64_t b = 0; b < pred.B; ++b)
    for (int64_t h = 0; h < pred.H; ++h) {
      int64_t valid = 0, pred_valid = 0, gold_valid = 0, gold_n = 0, hit = 0, queries = 0, exact = 0;
      for (int64_t i = 0; i < pred.Tq; ++i) {
        const int64_t row = (b * pred.H + h) * pred.Tq + i, nv = n_valid(b, i);
        valid += nv;
        const int32_t *pc = pred.cols.data() + pred.begin(row), *gc = gold.cols.data() + gold.begin(row);
        const int64_t np = pred.end(row) - pred.begin(row), ng = gold.end(row) - gold.begin(row);
        for (int64_t e = 0; e < np; ++e) pred_valid += is_valid(b, i, pc[e]);
        int64_t gv = 0;
        for (int64_t e = 0; e < ng; ++e) gv += is_valid(b, i, gc[e]);
        gold_valid += gv;
        gold_n += ng;
        const int64_t c = common(pc, np, gc, ng);
        hit += c;
        if (nv > 0) {
          ++queries;
          exact += c == ng;
        }
      }
      const auto ratio = [](int64_t a, int64_t d) { return d > 0 ? double(a) / double(d) : 1.0; };
      m.sparsity[size_t(h)] += (valid > 0 ? 1.0 - ratio(pred_valid, valid) : 0.0) / double(pred.B);
      m.gold_sparsity[size_t(h)] += (valid > 0 ? 1.0 - ratio(gold_valid, valid) : 0.0) / double(pred.B);
      m.recall[size_t(h)] += ratio(hit, gold_n) / double(pred.B);
      m.exact[size_t(h)] += ratio(exact, queries) / double(pred.B);
    }
  return m;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

}  // namespace

PairVisibility::PairVisibility(const AttentionMask& m, int64_t B, int64_t tq, int64_t tk)
    : Tq(tq), Tk(tk), causal(m.causal) {
  if (!m.key_padding.defined()) return;
  if (m.key_padding.dim() != 2 || m.key_padding.size(0) != B || m.key_padding.size(1) != tk)
    fail<ShapeError>("attention graph", "key_padding must be [B, Tk] = [", B, ", ", tk, "], got ",
                     describe(m.key_padding));
  for (double x : m.key_padding.to(DType::f64).to_vector<double>()) pad.push_back(x != 0);
}

bool PairVisibility::query(int64_t b, int64_t i) const { return pad.empty() || Tq != Tk || !pad[size_t(b * Tk + i)]; }

bool PairVisibility::operator()(int64_t b, int64_t i, int64_t j) const {
  if (causal && j > i + Tk - Tq) return false;
  return query(b, i) && (pad.empty() || !pad[size_t(b * Tk + j)]);
}

int64_t PairVisibility::keys(int64_t b, int64_t i) const {
  if (!query(b, i)) return 0;
  const int64_t last = causal ? std::min(Tk, i + Tk - Tq + 1) : Tk;
  if (pad.empty()) return std::max<int64_t>(last, 0);
  int64_t n = 0;
  for (int64_t j = 0; j < last; ++j) n += !pad[size_t(b * Tk + j)];
  return n;
}

bool AttentionGraph::has(int64_t bh, int64_t i, int64_t j) const {
  const int64_t row = bh * Tq + i;
  const int32_t* first = cols.data() + begin(row);
  const int32_t* last = cols.data() + end(row);
  return std::binary_search(first, last, int32_t(j));
}

void AttentionGraph::validate(const char* op) const {
  if (B < 0 || H < 0 || Tq < 0 || Tk < 0 || Tk > int64_t(INT32_MAX))
    fail<ValueError>(op, "graph shape [", B, ", ", H, ", ", Tq, ", ", Tk, "] is invalid");
  if (int64_t(row_ptr.size()) != rows() + 1 || row_ptr.front() != 0 || row_ptr.back() != edges())
    fail<ValueError>(op, "graph [", B, ", ", H, ", ", Tq, ", ", Tk, "]: row_ptr must hold ", rows() + 1,
                     " offsets from 0 to the ", edges(), " edges, got ", row_ptr.size(), " offsets");
  for (int64_t r = 0; r < rows(); ++r) {
    if (end(r) < begin(r)) fail<ValueError>(op, "graph: row_ptr decreases at row ", r);
    for (int64_t e = begin(r); e < end(r); ++e) {
      const int32_t j = cols[size_t(e)];
      if (j < 0 || j >= Tk) fail<ValueError>(op, "graph: key ", j, " in row ", r, " is outside [0, ", Tk, ")");
      if (e > begin(r) && j <= cols[size_t(e - 1)])
        fail<ValueError>(op, "graph: the keys of row ", r, " must be strictly increasing (", cols[size_t(e - 1)],
                         " then ", j, ")");
    }
  }
}

AttentionGraph AttentionGraph::from_mask(const Tensor& mask, int64_t B, int64_t H) {
  if (mask.dtype() != DType::b8 || mask.dim() < 2 || mask.dim() > 4)
    fail<ValueError>("AttentionGraph::from_mask", "mask must be b8 [B, H, Tq, Tk] or broadcastable, got ",
                     describe(mask));
  const int64_t Tq = mask.size(-2), Tk = mask.size(-1);
  const std::vector<double> m = mask.expand({B, H, Tq, Tk}).to(DType::f64).contiguous().to_vector<double>();
  AttentionGraph g{B, H, Tq, Tk, {0}, {}};
  g.row_ptr.reserve(size_t(B * H * Tq + 1));
  for (int64_t r = 0; r < B * H * Tq; ++r) {
    for (int64_t j = 0; j < Tk; ++j)
      if (m[size_t(r * Tk + j)] != 0) g.cols.push_back(int32_t(j));
    g.row_ptr.push_back(g.edges());
  }
  return g;
}

Tensor AttentionGraph::to_mask() const {
  validate("AttentionGraph::to_mask");
  std::vector<double> m(size_t(rows() * Tk), 0.0);
  for (int64_t r = 0; r < rows(); ++r)
    for (int64_t e = begin(r); e < end(r); ++e) m[size_t(r * Tk + cols[size_t(e)])] = 1;
  return from_vector(m, {B, H, Tq, Tk}, DType::b8);
}

AttentionGraph restrict_to_visible(const AttentionGraph& g, const AttentionMask& mask) {
  g.validate("restrict_to_visible");
  const PairVisibility vis(mask, g.B, g.Tq, g.Tk);
  AttentionGraph out{g.B, g.H, g.Tq, g.Tk, {0}, {}};
  for (int64_t r = 0; r < g.rows(); ++r) {
    const int64_t b = r / (g.H * g.Tq), i = r % g.Tq;
    for (int64_t e = g.begin(r); e < g.end(r); ++e)
      if (vis(b, i, g.cols[size_t(e)])) out.cols.push_back(g.cols[size_t(e)]);
    out.row_ptr.push_back(out.edges());
  }
  return out;
}

AttentionGraph block_graph(const AttentionGraph& g, int64_t bq, int64_t bk) {
  g.validate("block_graph");
  if (bq < 1 || bk < 1) fail<ValueError>("block_graph", "block sizes must be >= 1, got ", bq, " x ", bk);
  const int64_t nq = (g.Tq + bq - 1) / bq, nk = (g.Tk + bk - 1) / bk;
  AttentionGraph out{g.B, g.H, nq, nk, {0}, {}};
  std::vector<uint8_t> seen(static_cast<size_t>(nk));
  for (int64_t bh = 0; bh < g.B * g.H; ++bh)
    for (int64_t qb = 0; qb < nq; ++qb) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t i = qb * bq; i < std::min(g.Tq, (qb + 1) * bq); ++i)
        for (int64_t e = g.begin(bh * g.Tq + i); e < g.end(bh * g.Tq + i); ++e)
          seen[size_t(g.cols[size_t(e)] / bk)] = 1;
      for (int64_t kb = 0; kb < nk; ++kb)
        if (seen[size_t(kb)]) out.cols.push_back(int32_t(kb));
      out.row_ptr.push_back(out.edges());
    }
  return out;
}

AttentionGraph expand_blocks(const AttentionGraph& blocks, int64_t bq, int64_t bk, int64_t Tq, int64_t Tk,
                             const AttentionMask& mask) {
  blocks.validate("expand_blocks");
  if (bq < 1 || bk < 1 || blocks.Tq != (Tq + bq - 1) / bq || blocks.Tk != (Tk + bk - 1) / bk)
    fail<ValueError>("expand_blocks", "a block graph of ", blocks.Tq, " x ", blocks.Tk, " blocks does not tile ", Tq,
                     " x ", Tk, " tokens in ", bq, " x ", bk, " blocks");
  const PairVisibility vis(mask, blocks.B, Tq, Tk);
  AttentionGraph out{blocks.B, blocks.H, Tq, Tk, {0}, {}};
  for (int64_t bh = 0; bh < blocks.B * blocks.H; ++bh) {
    const int64_t b = bh / blocks.H;
    for (int64_t i = 0; i < Tq; ++i) {
      const int64_t row = bh * blocks.Tq + i / bq;
      for (int64_t e = blocks.begin(row); e < blocks.end(row); ++e)
        for (int64_t j = blocks.cols[size_t(e)] * bk; j < std::min(Tk, (blocks.cols[size_t(e)] + 1) * bk); ++j)
          if (vis(b, i, j)) out.cols.push_back(int32_t(j));
      out.row_ptr.push_back(out.edges());
    }
  }
  return out;
}

double GraphMetrics::mean_sparsity() const { return mean(sparsity); }
double GraphMetrics::mean_recall() const { return mean(recall); }
double GraphMetrics::mean_exact() const { return mean(exact); }

GraphMetrics graph_metrics(const AttentionGraph& predicted, const AttentionGraph& gold, const AttentionMask& mask) {
  const PairVisibility vis(mask, predicted.B, predicted.Tq, predicted.Tk);
  return metrics(
      predicted, gold, [&](int64_t b, int64_t i, int64_t j) { return vis(b, i, j); },
      [&](int64_t b, int64_t i) { return vis.keys(b, i); });
}

GraphMetrics block_graph_metrics(const AttentionGraph& predicted, const AttentionGraph& gold, const AttentionMask& mask,
                                 int64_t bq, int64_t bk) {
  check_same_shape("block_graph_metrics", predicted, gold);
  // The valid tiles: those holding a valid pair (the same for every head).
  const PairVisibility vis(mask, predicted.B, predicted.Tq, predicted.Tk);
  AttentionGraph all{predicted.B, 1, predicted.Tq, predicted.Tk, {0}, {}};
  for (int64_t b = 0; b < predicted.B; ++b)
    for (int64_t i = 0; i < predicted.Tq; ++i) {
      for (int64_t j = 0; j < predicted.Tk; ++j)
        if (vis(b, i, j)) all.cols.push_back(int32_t(j));
      all.row_ptr.push_back(all.edges());
    }
  const AttentionGraph valid = block_graph(all, bq, bk);
  const AttentionGraph pb = block_graph(predicted, bq, bk), gb = block_graph(gold, bq, bk);
  return metrics(
      pb, gb, [&](int64_t b, int64_t i, int64_t j) { return valid.has(b, i, j); },
      [&](int64_t b, int64_t i) { return valid.end(b * valid.Tq + i) - valid.begin(b * valid.Tq + i); });
}

}  // namespace attnlab

// The block-sparse attention engine: layouts (validation, transposed lists) and the engine against
// the dense masked composite reference on every kind of layout (block-local, irregular with uneven
// blocks and permuted lists, causal, padding, rows that see nothing), in f64 and f32 over tile sizes;
// results independent of the thread count; the f64 gradcheck of the registered op.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <functional>

#include "attention/block_sparse.h"
#include "attention/local.h"
#include "attention/softmax.h"
#include "autograd/gradcheck.h"
#include "autograd/registry.h"
#include "core/cpu/loops.h"
#include "core/rng.h"
#include "tests/attention_support.h"

using namespace attnlab;
using block_sparse::BlockMask;
using block_sparse::Entry;
using block_sparse::Layout;
using block_sparse::Source;

namespace {

using testing::check_close;
using testing::random_padding;
using testing::Result;
using testing::run;
using testing::TileGuard;

const BlockMask F = BlockMask::full, C = BlockMask::causal;

// Uneven blocks on both sides, permuted lists, a block reading everything, a causal entry, an empty list.
Layout irregular() {
  return Layout::make({0, 3, 4, 9, 11}, {0, 2, 7, 8, 9},
                      {{{3, Source::keys, F}, {0, Source::keys, F}},
                       {},
                       {{1, Source::keys, C}, {3, Source::keys, F}, {0, Source::keys, F}, {2, Source::keys, F}},
                       {{2, Source::keys, F}}});
}

// Causal attention as a layout: every block sees the blocks before it, its own diagonal block causally.
Layout causal_blocks(int64_t t, int64_t block) {
  std::vector<int64_t> b = block_sparse::even_bounds(t, block);
  std::vector<std::vector<Entry>> lists(b.size() - 1);
  for (size_t i = 0; i < lists.size(); ++i) {
    lists[i].push_back({int64_t(i), Source::keys, C});  // the diagonal first: a permuted order
    for (size_t j = 0; j < i; ++j) lists[i].push_back({int64_t(j), Source::keys, F});
  }
  return Layout::make(b, b, lists);
}

// Forward and gradients of the engine against the composite with the layout's dense mask.
void check_layout(const Layout& L, int64_t B, int64_t H, int64_t dh, bool padding, uint64_t seed,
                  std::vector<flash::Tiles> tiles = {{}, {2, 3, 2, 3}, {4, 4, 3, 2}}) {
  for (DType dt : {DType::f64, DType::f32})
    for (const flash::Tiles& t : tiles) {
      INFO(L.describe(), " dtype ", dtype_name(dt), " tiles ", t.fwd_q, "x", t.fwd_k, " / ", t.bwd_q, "x", t.bwd_k);
      Generator g(seed++);
      const auto [q, k, v, go] = testing::random_problem(g, B, H, L.tq(), L.tk(), dh, dt);
      AttentionMask m;
      if (padding) m.key_padding = random_padding(g, B, L.tk(), 0.3);
      const Tensor blocked = blocked_by_either(block_sparse::dense_mask(L), blocked_positions(m, L.tq(), L.tk()));
      TileGuard tg(t);
      Result ref =
          run([&](auto& a, auto& b, auto& d) { return masked_softmax_attention_composite(a, b, d, blocked, 0.5); }, q,
              k, v, go);
      Result got =
          run([&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, L, m, 0.5); }, q, k, v, go);
      if (dt == DType::f64) check_close(got, ref, 1e-9, 1e-11);
      else check_close(got, ref, 2e-4, 2e-5);
    }
}

bool identical(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to(DType::f64).to_vector<double>() == b.to(DType::f64).to_vector<double>();
}

}  // namespace

TEST_CASE("a layout validates its lists and builds the transposed ones") {
  Layout L = irregular();
  CHECK(L.q_blocks() == 4);
  CHECK(L.k_blocks() == 4);
  CHECK(L.tq() == 11);
  CHECK(L.tk() == 9);
  // Key block 0 is read by query blocks 0 and 2, key block 1 by 2, key block 2 by 2 and 3, key block 3 by 0 and 2.
  auto readers = [&](int64_t j) {
    std::vector<int64_t> r;
    for (int64_t p = L.col_start[size_t(j)]; p < L.col_start[size_t(j) + 1]; ++p)
      r.push_back(L.entry_row[size_t(L.col_entries[size_t(p)])]);
    return r;
  };
  CHECK(readers(0) == std::vector<int64_t>{0, 2});
  CHECK(readers(1) == std::vector<int64_t>{2});
  CHECK(readers(2) == std::vector<int64_t>{2, 3});
  CHECK(readers(3) == std::vector<int64_t>{0, 2});
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const ValueError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<int64_t> b{0, 2, 4};
  CHECK(message([&] { Layout::make(b, b, {{{2}}, {}}); }).find("out of range") != std::string::npos);
  CHECK(message([&] { Layout::make(b, b, {{{-1}}, {}}); }).find("out of range") != std::string::npos);
  CHECK(message([&] { Layout::make(b, b, {{{1}, {1}}, {}}); }).find("twice") != std::string::npos);
  CHECK(message([&] { Layout::make(b, b, {{}}); }).find("2 query blocks but 1 lists") != std::string::npos);
  CHECK(message([&] { Layout::make({0, 3, 2}, b, {{}, {}}); }).find("must not decrease") != std::string::npos);
  CHECK(message([&] { Layout::make({1, 3}, b, {{}}); }).find("start at 0") != std::string::npos);
  // The engine refuses a layout that does not fit, and mask.causal (causality is the layout's).
  Tensor q = zeros({1, 1, 4, 2}, DType::f64);
  CHECK(message([&] {
          block_sparse_attention(q, zeros({1, 1, 5, 2}, DType::f64), zeros({1, 1, 5, 2}, DType::f64),
                                 Layout::make(b, b, {{{0}}, {{1}}}), {}, 1.0);
        }).find("does not fit") != std::string::npos);
  CHECK(message([&] {
          block_sparse_attention(q, q, q, Layout::make(b, b, {{{0}}, {{1}}}), {true, {}}, 1.0);
        }).find("block_sparse_attention") != std::string::npos);
}

TEST_CASE("the block-local layout: query i sees key j iff they share a block (i at key position i + Tk - Tq)") {
  for (auto [tq, tk, block] : std::vector<std::array<int64_t, 3>>{{8, 8, 3}, {4, 7, 3}, {7, 4, 3}, {5, 5, 8}})
    for (bool causal : {false, true}) {
      INFO(tq, " ", tk, " ", block, " causal ", causal);
      Tensor m = block_sparse::dense_mask(block_sparse::local_layout(tq, tk, block, causal));
      std::vector<double> want;
      for (int64_t i = 0; i < tq; ++i)
        for (int64_t j = 0; j < tk; ++j) {
          const int64_t pos = i + tk - tq, qblock = pos >= 0 ? pos / block : -1;
          want.push_back(qblock != j / block || (causal && j > pos) ? 1.0 : 0.0);
        }
      CHECK(m.to(DType::f64).to_vector<double>() == want);
    }
}

TEST_CASE("block-sparse attention matches the dense masked composite on every kind of layout") {
  SUBCASE("block-local, plain and causal, Tq != Tk, short last block") {
    check_layout(block_sparse::local_layout(13, 13, 4, false), 2, 2, 5, false, 10);
    check_layout(block_sparse::local_layout(13, 13, 4, true), 1, 2, 3, true, 20);
    check_layout(block_sparse::local_layout(6, 11, 4, true), 1, 1, 4, false, 30);
    check_layout(block_sparse::local_layout(11, 6, 4, false), 1, 1, 4, true, 40);  // first rows see nothing
  }
  SUBCASE("irregular: uneven blocks, permuted lists, an empty list") {
    check_layout(irregular(), 2, 2, 3, false, 50);
    check_layout(irregular(), 2, 1, 4, true, 60);
  }
  SUBCASE("empty blocks (repeated bounds) on both sides") {
    const Layout L = Layout::make({0, 2, 2, 5, 6}, {0, 3, 3, 5},
                                  {{{1, Source::keys, F}, {0, Source::keys, F}},
                                   {{2, Source::keys, F}},
                                   {{2, Source::keys, C}, {1, Source::keys, F}},
                                   {{1, Source::keys, F}}});  // the last query reads only an empty block
    check_layout(L, 1, 2, 3, true, 65);
  }
  SUBCASE("causal blocks, diagonal listed first") {
    check_layout(causal_blocks(14, 4), 1, 2, 4, false, 70);
    check_layout(causal_blocks(14, 5), 2, 1, 3, true, 80);
  }
  SUBCASE("one block (plain attention): its 20 backward key tiles cut into 7 chunks of 3") {
    check_layout(block_sparse::local_layout(40, 40, 64, false), 1, 1, 4, true, 85, {{4, 4, 4, 2}});
  }
  SUBCASE("large enough that backward chunks are whole key blocks") {
    check_layout(causal_blocks(300, 37), 2, 4, 8, true, 90, {{}, {16, 32, 16, 16}});
  }
}

TEST_CASE("fully masked rows (everything padded, empty lists) give zeros and zero gradients") {
  Generator g(3);
  const Layout L = irregular();
  const auto [q, k, v, go] = testing::random_problem(g, 2, 1, L.tq(), L.tk(), 3, DType::f64);
  AttentionMask m;
  std::vector<double> pad(18, 0.0);
  std::fill(pad.begin() + 9, pad.end(), 1.0);  // batch 1: every key padded
  m.key_padding = from_vector(pad, {2, 9}, DType::b8);
  Tensor lse;
  Result r =
      run([&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, L, m, 0.5, &lse); }, q, k, v, go);
  Tensor zero_q = zeros({1, 1, 11, 3}, DType::f64), zero_k = zeros({1, 1, 9, 3}, DType::f64);
  CHECK(identical(r.out.narrow(0, 1, 1).contiguous(), zero_q));
  CHECK(identical(r.dq.narrow(0, 1, 1).contiguous(), zero_q));
  CHECK(identical(r.dk.narrow(0, 1, 1).contiguous(), zero_k));
  CHECK(identical(r.dv.narrow(0, 1, 1).contiguous(), zero_k));
  // Query block 1 (row 3) has an empty list in every batch.
  CHECK(identical(r.out.narrow(2, 3, 1).contiguous(), zeros({2, 1, 1, 3}, DType::f64)));
  CHECK(identical(r.dq.narrow(2, 3, 1).contiguous(), zeros({2, 1, 1, 3}, DType::f64)));
  CHECK(std::isinf(lse.at({0, 0, 3})));
}

TEST_CASE("results are bit-identical on 1 and 3 threads") {
  Generator g(4);
  for (const Layout& L : {irregular(), causal_blocks(40, 6), block_sparse::local_layout(40, 40, 8, true)})
    for (DType dt : {DType::f32, DType::f64}) {
      INFO(L.describe(), " ", dtype_name(dt));
      const auto [q, k, v, go] = testing::random_problem(g, 2, 3, L.tq(), L.tk(), 8, dt);
      auto f = [&](auto& a, auto& b, auto& d) { return block_sparse_attention(a, b, d, L, {}, 0.4); };
      TileGuard tg({4, 4, 4, 4});
      const int saved = omp_get_max_threads();
      omp_set_num_threads(1);
      Result one = run(f, q, k, v, go);
      omp_set_num_threads(3);
      Result three;
      {
        cpu::ScopedParallelGrain forced(0);
        three = run(f, q, k, v, go);
      }
      omp_set_num_threads(saved);
      CHECK(identical(one.out, three.out));
      CHECK(identical(one.dq, three.dq));
      CHECK(identical(one.dk, three.dk));
      CHECK(identical(one.dv, three.dv));
    }
}

TEST_CASE("float64 gradcheck of the registered block_sparse_attention cases") {
  const OpDef* op = find_op("block_sparse_attention");
  REQUIRE(op != nullptr);
  for (size_t c = 0; c < op->cases.size(); ++c) {
    INFO(op->cases[c].label);
    Generator gen(300 + c);
    GradcheckResult r = gradcheck(op->cases[c].fn, op->cases[c].make_inputs(gen));
    CHECK_MESSAGE(r.ok, r.report());
  }
}

// Tensor behaviour a demanding user relies on: creation, element access, printing, views and
// their storage sharing, broadcasting, elementwise maths against std::, reductions against naive
// loops, matmul against a triple loop, and the indexing/joining ops.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>

#include "autograd/grad_mode.h"
#include "core/allocator.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Element at a logical multi-index (any strides, any dtype), as double.
double get(const Tensor& t, const Shape& idx) {
  REQUIRE(int64_t(idx.size()) == t.dim());
  int64_t off = 0;
  for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.strides()[d];
  switch (t.dtype()) {
    case DType::f32: return t.data<float>()[off];
    case DType::f64: return t.data<double>()[off];
    case DType::i64: return double(t.data<int64_t>()[off]);
    case DType::b8: return t.data<uint8_t>()[off];
  }
  return 0;
}

// Calls f(idx) for every multi-index of s in row-major order.
void for_each_index(const Shape& s, const std::function<void(const Shape&)>& f) {
  if (shape_numel(s) == 0) return;
  Shape idx(s.size(), 0);
  for (int64_t e = 0; e < shape_numel(s); ++e) {
    f(idx);
    for (size_t d = s.size(); d-- > 0;) {
      if (++idx[d] < s[d]) break;
      idx[d] = 0;
    }
  }
}

// Index into t for output position idx under NumPy broadcasting.
Shape broadcast_index(const Tensor& t, const Shape& idx) {
  Shape r(size_t(t.dim()));
  size_t lead = idx.size() - r.size();
  for (size_t d = 0; d < r.size(); ++d) r[d] = t.shape()[d] == 1 ? 0 : idx[lead + d];
  return r;
}

// Same values within a relative/absolute tolerance; NaNs must match NaNs, infinities must match.
bool close(double a, double b, double rtol = 1e-6, double atol = 1e-9) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= atol + rtol * std::fabs(b);
}

Tensor f64(const std::vector<double>& v, const Shape& s) { return from_vector(v, s); }
Tensor f32(const std::vector<float>& v, const Shape& s) { return from_vector(v, s); }
Tensor i64(const std::vector<int64_t>& v, const Shape& s) { return from_vector(v, s); }

}  // namespace

// ==== creation ==================================================================================

TEST_CASE("zeros / ones / full in every dtype") {
  for (DType t : {DType::f32, DType::f64, DType::i64, DType::b8}) {
    INFO("dtype ", dtype_name(t));
    Tensor z = zeros({2, 3}, t), o = ones({2, 3}, t), f = full({3}, 1.0, t);
    CHECK(z.dtype() == t);
    CHECK(z.shape() == Shape{2, 3});
    CHECK(z.strides() == Shape{3, 1});
    CHECK(z.numel() == 6);
    CHECK(z.element_size() == dtype_size(t));
    CHECK(z.is_contiguous());
    CHECK(z.device() == Device::cpu);
    CHECK(z.storage_offset() == 0);
    CHECK(!z.requires_grad());
    CHECK(z.is_leaf());
    for (double v : z.to_vector<double>()) CHECK(v == 0);
    for (double v : o.to_vector<double>()) CHECK(v == 1);
    for (double v : f.to_vector<double>()) CHECK(v == 1);
  }
  CHECK(full({2}, -2.5, DType::f32).to_vector<float>() == std::vector<float>{-2.5f, -2.5f});
  CHECK(full({2}, 7.0, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{7, 7});
  // A boolean holds 0 or 1: any non-zero value (0.5, -3, 2) is true, exactly as a C++ bool cast.
  CHECK(full({2}, 0.5, DType::b8).to_vector<uint8_t>() == std::vector<uint8_t>{1, 1});
  CHECK(full({1}, 2.0, DType::b8).to_vector<uint8_t>() == std::vector<uint8_t>{1});
  CHECK(full({1}, -3.0, DType::b8).item<bool>());
  CHECK(equal(full({3}, 2.0, DType::b8), ones({3}, DType::b8)));

  Tensor like = full_like(zeros({4, 1}, DType::f64), 3.0);
  CHECK(like.dtype() == DType::f64);
  CHECK(like.shape() == Shape{4, 1});
  CHECK(like.to_vector<double>() == std::vector<double>(4, 3.0));
  CHECK(zeros_like(ones({2}, DType::i64)).dtype() == DType::i64);
  CHECK(ones_like(zeros({2, 2}, DType::b8)).to_vector<uint8_t>() == std::vector<uint8_t>(4, 1));

  Tensor e = empty({0, 3});
  CHECK(e.numel() == 0);
  CHECK(e.to_vector<float>().empty());
  CHECK(zeros({}).dim() == 0);
  CHECK(zeros({}).numel() == 1);
}

TEST_CASE("scalar_tensor, arange, eye") {
  Tensor s = scalar_tensor(4.5, DType::f64);
  CHECK(s.dim() == 0);
  CHECK(s.shape().empty());
  CHECK(s.item<double>() == 4.5);

  Tensor a = arange(5);
  CHECK(a.dtype() == DType::i64);
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(0.0, 1.0, 0.25).to_vector<float>() == std::vector<float>{0, 0.25f, 0.5f, 0.75f});
  CHECK(arange(0.0, 1.0, 0.25).dtype() == DType::f32);
  CHECK(arange(5.0, 0.0, -2.0, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  CHECK(arange(1.0, 2.0, 0.3, DType::f64).numel() == 4);  // 1, 1.3, 1.6, 1.9
  CHECK(arange(0.0, 0.0).numel() == 0);
  CHECK(arange(3.0, 1.0).numel() == 0);  // wrong direction: empty, not negative
  CHECK(arange(0).numel() == 0);
  CHECK_THROWS_AS(arange(0.0, 1.0, 0.0), ValueError);
  CHECK_THROWS_AS(arange(0.0, kInf), ValueError);

  for (DType t : {DType::f32, DType::f64, DType::i64, DType::b8}) {
    Tensor e = eye(3, t);
    CHECK(e.dtype() == t);
    CHECK(e.shape() == Shape{3, 3});
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 3; ++j) CHECK(e.at({i, j}) == (i == j ? 1.0 : 0.0));
  }
  CHECK(eye(0).shape() == Shape{0, 0});
}

TEST_CASE("from_vector, to_vector and dtype conversions") {
  Tensor a = f32({1.5f, -2.25f, 3, 4, 5, 6}, {2, 3});
  CHECK(a.dtype() == DType::f32);
  CHECK(a.to_vector<float>() == std::vector<float>{1.5f, -2.25f, 3, 4, 5, 6});
  CHECK(a.to_vector<double>() == std::vector<double>{1.5, -2.25, 3, 4, 5, 6});
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 4, 5, 6});  // truncation toward zero
  CHECK(a.to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 1, 1, 1, 1});  // non-zero is true

  Tensor d = f64({0.1, 0.2}, {2});
  CHECK(d.dtype() == DType::f64);
  CHECK(d.to_vector<double>() == std::vector<double>{0.1, 0.2});
  Tensor i = i64({-1, 0, int64_t(1) << 40}, {3});
  CHECK(i.dtype() == DType::i64);
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{-1, 0, int64_t(1) << 40});

  Tensor b = from_vector(std::vector<double>{0, 0.5, -2, 0}, {2, 2}, DType::b8);
  CHECK(b.dtype() == DType::b8);
  CHECK(b.to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 1, 0});
  CHECK(from_vector(std::vector<double>{2.9, -2.9}, {2}, DType::i64).to_vector<int64_t>() ==
        std::vector<int64_t>{2, -2});

  // to(): a fresh tensor unless the dtype already matches.
  CHECK(a.to(DType::f32).same(a));
  Tensor a64 = a.to(DType::f64);
  CHECK(a64.dtype() == DType::f64);
  CHECK(a64.to_vector<double>() == a.to_vector<double>());
  CHECK(f32({0, 0.25f, -1}, {3}).to(DType::b8).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 1});
  CHECK(f32({0, 0.25f, -1}, {3}).to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 0, -1});
  CHECK(from_vector(std::vector<double>{1, 0, 1}, {3}, DType::b8).to(DType::f32).to_vector<float>() ==
        std::vector<float>{1, 0, 1});
  CHECK_THROWS_AS(from_vector(std::vector<float>{1, 2, 3}, {2, 2}), ShapeError);

  // Non-contiguous sources come out in logical row-major order.
  CHECK(a.t().to_vector<float>() == std::vector<float>{1.5f, 4, -2.25f, 5, 3, 6});
  CHECK(a.data<float>()[4] == 5.0f);
  CHECK_THROWS_AS(a.data<double>(), DTypeError);
}

TEST_CASE("item and at") {
  CHECK(scalar_tensor(2.5).item<float>() == 2.5f);
  CHECK(scalar_tensor(2.5, DType::f64).item<double>() == 2.5);
  CHECK(f32({7}, {1, 1}).item<float>() == 7.0f);  // any one-element tensor
  CHECK(scalar_tensor(0, DType::b8).item<bool>() == false);
  CHECK(scalar_tensor(1, DType::b8).item<bool>() == true);
  CHECK(scalar_tensor(0.25).item<bool>() == true);
  // i64 values beyond 2^53 must survive item<int64_t>() exactly (no trip through double).
  const int64_t big = (int64_t(1) << 53) + 1;
  CHECK(i64({big}, {1}).item<int64_t>() == big);
  CHECK(i64({-big}, {}).item<int64_t>() == -big);
  CHECK(i64({3}, {1}).item_double() == 3.0);
  CHECK_THROWS_AS(zeros({2}).item<float>(), ShapeError);
  CHECK_THROWS_AS(zeros({0}).item<float>(), ShapeError);

  Tensor x = arange(0.0, 12.0, 1.0, DType::f64).reshape({3, 4});
  CHECK(x.at({0, 0}) == 0);
  CHECK(x.at({2, 3}) == 11);
  CHECK(x.at({-1, -1}) == 11);
  CHECK(x.at({1, -4}) == 4);
  CHECK(x.t().at({3, 1}) == 7);  // strides honoured
  CHECK(scalar_tensor(3).at({}) == 3);
  CHECK(i64({5, 6}, {2}).at({1}) == 6);
  CHECK_THROWS_AS(x.at({3, 0}), IndexError);
  CHECK_THROWS_AS(x.at({0, -5}), IndexError);
  CHECK_THROWS_AS(x.at({0}), IndexError);
  CHECK_THROWS_AS(x.at({0, 0, 0}), IndexError);
}

TEST_CASE("size / stride / dim accessors") {
  Tensor x = zeros({2, 3, 4});
  CHECK(x.dim() == 3);
  CHECK(x.size(0) == 2);
  CHECK(x.size(-1) == 4);
  CHECK(x.stride(0) == 12);
  CHECK(x.stride(-2) == 4);
  CHECK_THROWS_AS(x.size(3), IndexError);
  CHECK_THROWS_AS(x.size(-4), IndexError);
  CHECK_THROWS_AS(x.stride(5), IndexError);
  // A 0-d tensor has no dims at all: size(0) must not read past the (empty) shape.
  CHECK_THROWS_AS(zeros({}).size(0), IndexError);
  CHECK_THROWS_AS(zeros({}).stride(-1), IndexError);
  CHECK(describe(x) == "f32[2, 3, 4]");
  CHECK(describe(zeros({}, DType::i64)) == "i64[]");
  CHECK(describe(Tensor()) == "undefined");
  CHECK(!Tensor().defined());
  CHECK_THROWS_AS(Tensor().shape(), Error);
}

TEST_CASE("printing") {
  std::ostringstream os;
  os << f32({1, 2.5f, -3, 4}, {2, 2});
  CHECK(os.str() == "Tensor(f32[2, 2], [1, 2.5, -3, 4])");

  std::ostringstream g;
  Tensor p = zeros({2}, DType::f64).set_requires_grad(true);
  g << p;
  CHECK(contains(g.str(), "requires_grad"));
  CHECK(contains(g.str(), "f64[2]"));

  std::ostringstream u;
  u << Tensor();
  CHECK(u.str() == "Tensor(undefined)");

  std::ostringstream big;
  big << arange(100);
  CHECK(contains(big.str(), "i64[100]"));
  CHECK(contains(big.str(), ", ...])"));
  CHECK(!contains(big.str(), "16"));  // only the first 16 values (0..15)

  // Large integers print as integers, not in scientific notation.
  std::ostringstream ints;
  ints << i64({1234567, -9876543210}, {2});
  CHECK(ints.str() == "Tensor(i64[2], [1234567, -9876543210])");

  std::ostringstream bools;
  bools << from_vector(std::vector<double>{1, 0}, {2}, DType::b8);
  CHECK(bools.str() == "Tensor(b8[2], [1, 0])");

  std::ostringstream sc;
  sc << scalar_tensor(0.5);
  CHECK(sc.str() == "Tensor(f32[], [0.5])");

  // Printing must not leave the caller's stream with a changed precision.
  std::ostringstream s;
  s.precision(12);
  s << f64({1.0 / 3}, {1});
  CHECK(s.precision() == 12);
  s.str("");
  s << 1.0 / 3;
  CHECK(s.str() == "0.333333333333");
}

// ==== views =====================================================================================

TEST_CASE("reshape of a contiguous tensor is a view; of a non-contiguous one a copy") {
  Tensor x = arange(0.0, 12.0, 1.0, DType::f64);
  Tensor r = x.reshape({3, 4});
  CHECK(r.shape() == Shape{3, 4});
  CHECK(r.raw_data() == x.raw_data());
  CHECK(r.impl().storage == x.impl().storage);
  r.select(0, 1).fill_(-1);  // writes through a view of a view reach the base
  CHECK(x.to_vector<double>() == std::vector<double>{0, 1, 2, 3, -1, -1, -1, -1, 8, 9, 10, 11});

  CHECK(x.reshape({-1, 6}).shape() == Shape{2, 6});
  CHECK(x.reshape({2, -1, 3}).shape() == Shape{2, 2, 3});
  CHECK(x.reshape({12}).same(x));
  CHECK_THROWS_AS(x.reshape({5, -1}), ShapeError);
  CHECK_THROWS_AS(x.reshape({-1, -1}), ShapeError);
  CHECK_THROWS_AS(x.reshape({0, -1}), ShapeError);
  CHECK_THROWS_AS(x.reshape({-2, 6}), ShapeError);
  std::string msg = message_of<ShapeError>([&] { x.reshape({5, 5}); });
  CHECK(contains(msg, "reshape"));
  CHECK(contains(msg, "[5, 5]"));
  CHECK(contains(msg, "12"));

  Tensor t = r.t();  // [4, 3], not contiguous
  CHECK(!t.is_contiguous());
  Tensor c = t.reshape({12});
  CHECK(c.is_contiguous());
  CHECK(c.impl().storage != x.impl().storage);
  CHECK(c.to_vector<double>() == std::vector<double>{0, -1, 8, 1, -1, 9, 2, -1, 10, 3, -1, 11});
  c.fill_(100);  // a copy: the base is untouched
  CHECK(x.at({0}) == 0);

  // Reshapes that only split or merge contiguous runs stay views even on non-contiguous input.
  Tensor base = arange(0.0, 24.0, 1.0, DType::f64).reshape({2, 3, 4});
  Tensor p = base.permute({1, 0, 2});  // [3, 2, 4], strides [4, 12, 1]
  Tensor split_last = p.view({3, 2, 2, 2});
  CHECK(split_last.impl().storage == base.impl().storage);
  CHECK(split_last.strides() == Shape{4, 12, 2, 1});
  for_each_index(split_last.shape(), [&](const Shape& i) {
    CHECK(get(split_last, i) == get(p, {i[0], i[1], i[2] * 2 + i[3]}));
  });
  CHECK(p.view({3, 2, 4, 1}).impl().storage == base.impl().storage);
  CHECK_THROWS_AS(p.view({6, 4}), ShapeError);  // would merge dims that are not adjacent in memory
  Tensor merged = p.reshape({6, 4});
  CHECK(merged.impl().storage != base.impl().storage);
  for_each_index(merged.shape(), [&](const Shape& i) { CHECK(get(merged, i) == get(p, {i[0] / 2, i[0] % 2, i[1]})); });

  // Narrowed rows: the row stride is larger than the row, yet splitting rows is still a view.
  Tensor n = base.reshape({6, 4}).narrow(1, 1, 2);  // [6, 2] strides [4, 1]
  Tensor nv = n.view({3, 2, 2});
  CHECK(nv.strides() == Shape{8, 4, 1});
  CHECK(nv.at({2, 1, 0}) == 21);
  CHECK_THROWS_AS(n.view({12}), ShapeError);
  CHECK(n.reshape({12}).to_vector<double>() ==
        std::vector<double>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22});

  // Empty and 0-d reshapes.
  CHECK(zeros({0, 3}).reshape({3, 0, 5}).shape() == Shape{3, 0, 5});
  CHECK(zeros({0, 3}).reshape({-1}).shape() == Shape{0});
  CHECK(scalar_tensor(5).reshape({1, 1}).shape() == Shape{1, 1});
  CHECK(f32({5}, {1, 1}).reshape({}).item<float>() == 5);
}

TEST_CASE("view refuses incompatible strides with a message suggesting reshape") {
  Tensor x = zeros({3, 4}).t();
  std::string msg = message_of<ShapeError>([&] { x.view({12}); });
  CHECK(contains(msg, "view"));
  CHECK(contains(msg, "reshape"));
  CHECK(contains(msg, "[4, 3]"));
  CHECK_NOTHROW(zeros({3, 4}).view({2, 6}));
  CHECK_NOTHROW(x.view({4, 3}));
  CHECK_NOTHROW(x.view({4, 1, 3}));  // inserting a size-1 dim is always possible
}

TEST_CASE("transpose and permute") {
  Tensor x = arange(0.0, 24.0, 1.0, DType::f64).reshape({2, 3, 4});
  Tensor t = x.transpose(0, 2);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK(t.strides() == Shape{1, 4, 12});
  CHECK(t.raw_data() == x.raw_data());
  CHECK(!t.is_contiguous());
  for_each_index(t.shape(), [&](const Shape& i) { CHECK(get(t, i) == get(x, {i[2], i[1], i[0]})); });
  CHECK(x.transpose(-1, -3).strides() == t.strides());
  CHECK(x.transpose(1, 1).strides() == x.strides());

  Tensor p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  for_each_index(p.shape(), [&](const Shape& i) { CHECK(get(p, i) == get(x, {i[1], i[2], i[0]})); });
  CHECK(x.permute({-1, 0, 1}).strides() == p.strides());
  CHECK(p.permute({1, 2, 0}).strides() == x.strides());  // inverse permutation
  CHECK(p.contiguous().is_contiguous());
  CHECK(p.contiguous().to_vector<double>() == p.to_vector<double>());

  // writes through the transpose are visible in the base
  t.select(0, 3).fill_(-7);  // x[:, :, 3]
  CHECK(x.at({1, 2, 3}) == -7);
  CHECK(x.at({0, 0, 3}) == -7);
  CHECK(x.at({0, 0, 2}) == 2);

  Tensor m = zeros({3, 5});
  CHECK(m.t().shape() == Shape{5, 3});
  CHECK(m.t().t().strides() == m.strides());
  CHECK_THROWS_AS(x.permute({0, 1}), ShapeError);
  CHECK_THROWS_AS(x.permute({0, 1, 1}), ShapeError);
  CHECK_THROWS_AS(x.permute({0, 1, 3}), IndexError);
  CHECK_THROWS_AS(x.transpose(0, 3), IndexError);
}

TEST_CASE("narrow, slice with step, select") {
  Tensor x = arange(0.0, 10.0, 1.0, DType::f64);
  Tensor n = x.narrow(0, 2, 3);
  CHECK(n.to_vector<double>() == std::vector<double>{2, 3, 4});
  CHECK(n.storage_offset() == 2);
  CHECK(n.raw_data() == static_cast<void*>(x.data<double>() + 2));
  CHECK(x.narrow(0, 10, 0).numel() == 0);
  CHECK_THROWS_AS(x.narrow(0, 8, 3), IndexError);
  CHECK_THROWS_AS(x.narrow(0, -1, 2), IndexError);

  CHECK(x.slice(0, 1, 8, 3).to_vector<double>() == std::vector<double>{1, 4, 7});
  CHECK(x.slice(0, 1, 8, 3).strides() == Shape{3});
  CHECK(x.slice(0, 0, 10, 4).to_vector<double>() == std::vector<double>{0, 4, 8});
  CHECK(x.slice(0, -3, 10).to_vector<double>() == std::vector<double>{7, 8, 9});
  CHECK(x.slice(0, 2, -5).to_vector<double>() == std::vector<double>{2, 3, 4});
  CHECK(x.slice(0, 5, 100).numel() == 5);   // end clamps
  CHECK(x.slice(0, -100, 2).numel() == 2);  // start clamps
  CHECK(x.slice(0, 7, 3).numel() == 0);     // empty, not negative
  CHECK(x.slice(0, 9, 10, 5).to_vector<double>() == std::vector<double>{9});
  CHECK_THROWS_AS(x.slice(0, 0, 5, 0), ValueError);
  CHECK_THROWS_AS(x.slice(0, 0, 5, -1), ValueError);
  CHECK_THROWS_AS(x.slice(1, 0, 5), IndexError);

  Tensor m = arange(0.0, 20.0, 1.0, DType::f64).reshape({4, 5});
  Tensor s = m.slice(1, 0, 5, 2).slice(0, 1, 4, 2);  // rows 1, 3; cols 0, 2, 4
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.to_vector<double>() == std::vector<double>{5, 7, 9, 15, 17, 19});
  s.fill_(-1);
  CHECK(m.at({1, 2}) == -1);
  CHECK(m.at({1, 1}) == 6);
  CHECK(m.at({3, 4}) == -1);

  Tensor row = m.select(0, 2);
  CHECK(row.shape() == Shape{5});
  CHECK(row.to_vector<double>() == std::vector<double>{10, 11, 12, 13, 14});
  Tensor col = m.select(1, -1);
  CHECK(col.shape() == Shape{4});
  CHECK(col.strides() == Shape{5});
  CHECK(col.to_vector<double>() == std::vector<double>{4, -1, 14, -1});  // rows 1 and 3 were filled above
  CHECK(m.select(0, 0).select(0, 0).dim() == 0);
  CHECK_THROWS_AS(m.select(0, 4), IndexError);
  CHECK_THROWS_AS(m.select(1, -6), IndexError);
  CHECK_THROWS_AS(m.select(2, 0), IndexError);
  // A 0-d tensor has nothing to select or narrow.
  CHECK_THROWS_AS(scalar_tensor(1).select(0, 0), IndexError);
  CHECK_THROWS_AS(scalar_tensor(1).narrow(0, 0, 1), IndexError);
  CHECK_THROWS_AS(scalar_tensor(1).slice(0, 0, 1), IndexError);
}

TEST_CASE("expand uses stride 0 and shares storage") {
  Tensor x = f64({1, 2, 3}, {3, 1});
  Tensor e = x.expand({2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.raw_data() == x.raw_data());
  for_each_index(e.shape(), [&](const Shape& i) { CHECK(get(e, i) == double(i[1] + 1)); });
  x.select(0, 1).fill_(20);  // visible in every expanded copy
  CHECK(e.at({1, 1, 3}) == 20);
  CHECK(x.expand({-1, 5}).shape() == Shape{3, 5});
  CHECK(x.expand({3, 1}).same(x));
  CHECK(scalar_tensor(2).expand({2, 2}).to_vector<float>() == std::vector<float>(4, 2.0f));
  CHECK(x.expand({3, 0}).numel() == 0);
  CHECK_THROWS_AS(x.expand({2, 4}), ShapeError);
  CHECK_THROWS_AS(x.expand({4}), ShapeError);
  CHECK_THROWS_AS(x.expand({-1, 3, 4}), ShapeError);
  CHECK_THROWS_AS(x.expand({3, -2}), ShapeError);
  Tensor c = e.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.strides() == Shape{12, 4, 1});
  CHECK(c.to_vector<double>() == e.to_vector<double>());
  // In-place arithmetic on an expanded view would hit the same memory several times: refused.
  Tensor w = zeros({3}).expand({2, 3});
  CHECK_THROWS_AS(w.add_(ones({2, 3})), ValueError);
  CHECK_THROWS_AS(w.copy_(arange(0.0, 6.0).reshape({2, 3})), ValueError);
}

TEST_CASE("squeeze, unsqueeze, flatten") {
  Tensor x = arange(0.0, 6.0).reshape({1, 2, 1, 3});
  CHECK(x.squeeze().shape() == Shape{2, 3});
  CHECK(x.squeeze(0).shape() == Shape{2, 1, 3});
  CHECK(x.squeeze(-2).shape() == Shape{1, 2, 3});
  CHECK(x.squeeze(1).shape() == x.shape());  // size 2: no-op
  CHECK(x.squeeze().raw_data() == x.raw_data());
  CHECK(x.unsqueeze(0).shape() == Shape{1, 1, 2, 1, 3});
  CHECK(x.unsqueeze(4).shape() == Shape{1, 2, 1, 3, 1});
  CHECK(x.unsqueeze(-1).shape() == Shape{1, 2, 1, 3, 1});
  CHECK(x.unsqueeze(-5).shape() == Shape{1, 1, 2, 1, 3});
  CHECK_THROWS_AS(x.unsqueeze(5), IndexError);
  CHECK_THROWS_AS(x.squeeze(4), IndexError);
  CHECK(scalar_tensor(1).unsqueeze(0).shape() == Shape{1});
  CHECK(scalar_tensor(1).squeeze().dim() == 0);
  CHECK(ones({1, 1}).squeeze().dim() == 0);

  Tensor y = zeros({2, 3, 4});
  CHECK(y.flatten().shape() == Shape{24});
  CHECK(y.flatten(1).shape() == Shape{2, 12});
  CHECK(y.flatten(0, 1).shape() == Shape{6, 4});
  CHECK(y.flatten(-2, -1).shape() == Shape{2, 12});
  CHECK(y.flatten(1, 1).shape() == y.shape());
  CHECK(y.flatten().raw_data() == y.raw_data());
  CHECK(scalar_tensor(3).flatten().shape() == Shape{1});
  CHECK_THROWS_AS(y.flatten(2, 1), IndexError);
  // flatten of a non-contiguous tensor copies, in logical order
  Tensor t = arange(0.0, 6.0).reshape({2, 3}).t();
  CHECK(t.flatten().to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  // unsqueeze of a transposed tensor stays a view
  CHECK(t.unsqueeze(1).raw_data() == t.raw_data());
  CHECK(t.unsqueeze(1).to_vector<float>() == t.to_vector<float>());
}

TEST_CASE("contiguous and clone") {
  Tensor x = arange(0.0, 6.0).reshape({2, 3});
  CHECK(x.contiguous().same(x));
  Tensor c = x.clone();
  CHECK(c.raw_data() != x.raw_data());
  CHECK(equal(c, x));
  c.fill_(0);
  CHECK(x.at({1, 2}) == 5);
  Tensor t = x.t().contiguous();
  CHECK(t.is_contiguous());
  CHECK(t.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  // size-1 dims with odd strides are still contiguous
  Tensor col = arange(0.0, 6.0).reshape({6, 1});
  CHECK(col.t().is_contiguous());
}

TEST_CASE("in-place ops bump the shared version counter") {
  Tensor x = zeros({2, 3});
  Tensor v = x.narrow(1, 0, 2);
  const uint64_t v0 = x.version();
  CHECK(v.version() == v0);
  x.fill_(1);
  CHECK(x.version() == v0 + 1);
  CHECK(v.version() == v0 + 1);  // shared by every view of the storage
  v.add_(ones({2, 2}), 2.0);
  CHECK(x.version() == v0 + 2);
  v.mul_(3.0);
  CHECK(x.version() == v0 + 3);
  x.mul_(f32({1, 2, 3}, {3}));
  CHECK(x.version() == v0 + 4);
  x.copy_(zeros({2, 3}));
  CHECK(x.version() == v0 + 5);
  x.zero_();
  CHECK(x.version() == v0 + 6);
  Tensor y = x + x;  // out-of-place ops leave it alone
  (void)x.reshape({6});
  (void)x.t().contiguous();
  CHECK(x.version() == v0 + 6);
  CHECK(y.version() == 0);
  CHECK(x.detach().version() == x.version());
}

TEST_CASE("in-place arithmetic values, broadcasting and conversions") {
  Tensor x = f32({1, 2, 3, 4, 5, 6}, {2, 3});
  x.add_(f32({10, 20, 30}, {3}));
  CHECK(x.to_vector<float>() == std::vector<float>{11, 22, 33, 14, 25, 36});
  x.add_(ones({2, 1}), -1.0);
  CHECK(x.to_vector<float>() == std::vector<float>{10, 21, 32, 13, 24, 35});
  x.mul_(f32({1, 0}, {2, 1}));
  CHECK(x.to_vector<float>() == std::vector<float>{10, 21, 32, 0, 0, 0});
  x.mul_(0.5);
  CHECK(x.to_vector<float>() == std::vector<float>{5, 10.5f, 16, 0, 0, 0});
  CHECK_THROWS_AS(x.add_(ones({4})), ShapeError);
  CHECK_THROWS_AS(x.add_(ones({3, 3})), ShapeError);
  CHECK_THROWS_AS(f32({1}, {1}).add_(ones({3})), ShapeError);  // would have to grow the target
  CHECK_THROWS_AS(x.add_(ones({3}, DType::f64)), DTypeError);

  // Strided targets
  Tensor m = zeros({3, 3}, DType::f64);
  m.t().add_(arange(0.0, 3.0, 1.0, DType::f64));  // m[j, i] += j
  CHECK(m.to_vector<double>() == std::vector<double>{0, 0, 0, 1, 1, 1, 2, 2, 2});

  // copy_: broadcasting source, dtype conversion, strided destination
  Tensor d = zeros({2, 3}, DType::f64);
  d.copy_(f32({1, 2, 3}, {3}));
  CHECK(d.to_vector<double>() == std::vector<double>{1, 2, 3, 1, 2, 3});
  d.t().copy_(arange(0.0, 6.0, 1.0, DType::i64).reshape({3, 2}));
  CHECK(d.to_vector<double>() == std::vector<double>{0, 2, 4, 1, 3, 5});
  Tensor bmask = zeros({3}, DType::b8);
  bmask.copy_(f32({0, 0.5f, -1}, {3}));
  CHECK(bmask.to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 1});
  // The source must broadcast to the destination, not the other way round.
  CHECK_THROWS_AS(zeros({3}).copy_(ones({2, 3})), ShapeError);
  CHECK_THROWS_AS(zeros({1}).copy_(ones({3})), ShapeError);
  CHECK_THROWS_AS(zeros({2, 3}).copy_(ones({3, 2})), ShapeError);
  Tensor e = zeros({0, 3});
  CHECK_NOTHROW(e.copy_(ones({3})));
  Tensor e2 = zeros({3, 0});  // contiguous strides [0, 1]: a zero stride, but no element to overlap
  CHECK_NOTHROW(e2.add_(zeros({3, 0})));
  CHECK_NOTHROW(e2.copy_(zeros({0})));
}

// ==== broadcasting ============================================================================

namespace {
struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> ref;
  bool positive_inputs = false;
};

std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, [](double a, double b) { return a + b; }},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, [](double a, double b) { return a - b; }},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, [](double a, double b) { return a * b; }},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, [](double a, double b) { return a / b; }},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double a, double b) { return std::pow(a, b); }, true},
      {"maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); },
       [](double a, double b) { return std::max(a, b); }},
      {"minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); },
       [](double a, double b) { return std::min(a, b); }},
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); },
       [](double a, double b) { return double(a == b); }},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); },
       [](double a, double b) { return double(a != b); }},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); },
       [](double a, double b) { return double(a < b); }},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); },
       [](double a, double b) { return double(a <= b); }},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); },
       [](double a, double b) { return double(a > b); }},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); },
       [](double a, double b) { return double(a >= b); }},
  };
}

// Small integers in [-3, 3] (or [1, 4] for positive inputs): ties for comparisons, exact arithmetic.
Tensor small_values(Generator& g, const Shape& s, bool positive) {
  Tensor r = randint(positive ? 1 : -3, positive ? 5 : 4, s, &g).to(DType::f64);
  return r;
}
}  // namespace

TEST_CASE("every binary op broadcasts like NumPy, including 0-d and empty operands") {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {3, 4}}, {{3, 1}, {1, 4}}, {{2, 3, 4}, {4}},  {{4}, {2, 3, 4}}, {{}, {2, 3}},
      {{2, 3}, {}},     {{}, {}},         {{2, 1, 4}, {3, 1}}, {{0, 3}, {1, 3}}, {{1}, {0}},
  };
  Generator gen(11);
  for (const BinaryCase& bc : binary_cases()) {
    for (const auto& [sa, sb] : shapes) {
      INFO(bc.name, " ", shape_str(sa), " with ", shape_str(sb));
      Tensor a = small_values(gen, sa, bc.positive_inputs), b = small_values(gen, sb, bc.positive_inputs);
      Tensor out = bc.op(a, b);
      Shape expect = broadcast_shapes("test", sa, sb);
      REQUIRE(out.shape() == expect);
      CHECK(out.is_contiguous());
      for_each_index(expect, [&](const Shape& i) {
        CHECK(close(get(out, i), bc.ref(get(a, broadcast_index(a, i)), get(b, broadcast_index(b, i)))));
      });
      // and with a transposed (non-contiguous) left operand of the same logical values
      if (a.dim() == 2) {
        Tensor at = a.t().contiguous().t();
        REQUIRE((!at.is_contiguous() || at.size(0) == 1 || at.size(1) == 1));
        CHECK(equal(bc.op(at, b), out));
      }
    }
  }
}

TEST_CASE("broadcast errors name the op and both shapes") {
  Tensor a = zeros({2, 3}), b = zeros({4});
  for (const BinaryCase& bc : binary_cases()) {
    INFO(bc.name);
    std::string msg = message_of<ShapeError>([&] { bc.op(a, b); });
    CHECK(msg.rfind(std::string(bc.name) + ":", 0) == 0);
    CHECK(contains(msg, "[2, 3]"));
    CHECK(contains(msg, "[4]"));
  }
  std::string msg = message_of<ShapeError>([&] { where(zeros({2, 3}, DType::b8), a, b); });
  CHECK(contains(msg, "where"));
  CHECK(contains(msg, "[2, 3]"));
  CHECK(contains(msg, "[4]"));
  CHECK_THROWS_AS(zeros({2}) + zeros({3}), ShapeError);
  CHECK_THROWS_AS(zeros({0}) + zeros({2}), ShapeError);
  CHECK(broadcast_shapes("x", {5, 1, 3}, {4, 1}) == Shape{5, 4, 3});
  CHECK(broadcast_shapes("x", {}, {}) == Shape{});
}

TEST_CASE("scalar operators") {
  Tensor x = f64({1, 2, 4}, {3});
  CHECK((x + 1.0).to_vector<double>() == std::vector<double>{2, 3, 5});
  CHECK((x - 1.0).to_vector<double>() == std::vector<double>{0, 1, 3});
  CHECK((x * 2.0).to_vector<double>() == std::vector<double>{2, 4, 8});
  CHECK((x / 2.0).to_vector<double>() == std::vector<double>{0.5, 1, 2});
  CHECK((1.0 + x).to_vector<double>() == std::vector<double>{2, 3, 5});
  CHECK((1.0 - x).to_vector<double>() == std::vector<double>{0, -1, -3});
  CHECK((2.0 * x).to_vector<double>() == std::vector<double>{2, 4, 8});
  CHECK((4.0 / x).to_vector<double>() == std::vector<double>{4, 2, 1});
  CHECK((-x).to_vector<double>() == std::vector<double>{-1, -2, -4});
  CHECK((x + x * x - x / x).to_vector<double>() == std::vector<double>{1, 5, 19});
  CHECK((f32({1}, {1}) + 0.5).dtype() == DType::f32);
  // Division by zero follows IEEE.
  std::vector<double> dz = (f64({1, -1, 0}, {3}) / 0.0).to_vector<double>();
  CHECK(dz[0] == kInf);
  CHECK(dz[1] == -kInf);
  CHECK(std::isnan(dz[2]));
}

// ==== elementwise vs std:: ======================================================================

TEST_CASE("unary ops match std:: in f32 and f64, and stay finite where they should") {
  const std::vector<double> xs = {-1000, -100, -30, -5, -1.5, -0.5, -1e-8, 0, 1e-8, 0.5, 1.5, 5, 30, 100, 1000};
  struct U {
    const char* name;
    std::function<Tensor(const Tensor&)> op;
    std::function<double(double)> ref;
  };
  const std::vector<U> ops = {
      {"exp", [](const Tensor& t) { return exp(t); }, [](double v) { return std::exp(v); }},
      {"tanh", [](const Tensor& t) { return tanh(t); }, [](double v) { return std::tanh(v); }},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, [](double v) { return 1 / (1 + std::exp(-v)); }},
      {"relu", [](const Tensor& t) { return relu(t); }, [](double v) { return v > 0 ? v : 0.0; }},
      {"abs", [](const Tensor& t) { return abs(t); }, [](double v) { return std::fabs(v); }},
      {"neg", [](const Tensor& t) { return neg(t); }, [](double v) { return -v; }},
      {"gelu", [](const Tensor& t) { return gelu(t); },
       [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }},
      {"gelu_tanh", [](const Tensor& t) { return gelu(t, true); },
       [](double v) {
         return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
       }},
      {"clamp", [](const Tensor& t) { return clamp(t, -2, 3); },
       [](double v) { return std::min(3.0, std::max(-2.0, v)); }},
  };
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = from_vector(xs, {int64_t(xs.size())}, dt);
    for (const U& u : ops) {
      INFO(u.name, " ", dtype_name(dt));
      Tensor y = u.op(x);
      CHECK(y.dtype() == dt);
      CHECK(y.shape() == x.shape());
      std::vector<double> got = y.to_vector<double>();
      std::vector<double> in = x.to_vector<double>();
      for (size_t i = 0; i < xs.size(); ++i) {
        INFO("x = ", in[i]);
        double want = u.ref(in[i]);
        if (dt == DType::f32) want = double(float(want));
        CHECK(close(got[i], want, dt == DType::f32 ? 2e-6 : 1e-13, dt == DType::f32 ? 1e-6 : 1e-14));
      }
    }
    // saturation: finite, and exactly at the limits
    std::vector<double> th = tanh(x).to_vector<double>(), sg = sigmoid(x).to_vector<double>();
    for (size_t i = 0; i < xs.size(); ++i) {
      CHECK(std::isfinite(th[i]));
      CHECK(std::isfinite(sg[i]));
      CHECK(sg[i] >= 0);
      CHECK(sg[i] <= 1);
    }
    CHECK(th.front() == -1);
    CHECK(th.back() == 1);
    CHECK(sg.front() == 0);
    CHECK(sg.back() == 1);
    std::vector<double> ge = gelu(x).to_vector<double>(), gt = gelu(x, true).to_vector<double>();
    for (size_t i = 0; i < xs.size(); ++i) {
      CHECK(std::isfinite(ge[i]));
      CHECK(std::isfinite(gt[i]));
      CHECK(std::fabs(ge[i] - gt[i]) < 1e-3);  // the two forms agree closely
    }
    CHECK(ge.back() == 1000);
    CHECK(ge.front() == 0);
    CHECK(exp(from_vector({-1000.0}, {1}, dt)).item<double>() == 0);
    CHECK(exp(from_vector({1000.0}, {1}, dt)).item<double>() == kInf);
  }
}

TEST_CASE("log / sqrt / rsqrt domains") {
  Tensor x = f64({0, 1, 4, -1}, {4});
  std::vector<double> l = log(x).to_vector<double>();
  CHECK(l[0] == -kInf);
  CHECK(l[1] == 0);
  CHECK(l[2] == doctest::Approx(std::log(4.0)));
  CHECK(std::isnan(l[3]));
  std::vector<double> s = sqrt(x).to_vector<double>();
  CHECK(s[0] == 0);
  CHECK(s[1] == 1);
  CHECK(s[2] == 2);
  CHECK(std::isnan(s[3]));
  std::vector<double> r = rsqrt(x).to_vector<double>();
  CHECK(r[0] == kInf);
  CHECK(r[2] == 0.5);
  CHECK(log(f32({1e-30f}, {1})).item<float>() == doctest::Approx(std::log(1e-30)).epsilon(1e-6));
}

TEST_CASE("NaN propagates through elementwise ops, maximum and minimum") {
  Tensor n = f64({kNaN, 1}, {2});
  for (Tensor y : {exp(n), tanh(n), sigmoid(n), gelu(n), clamp(n, 0, 1), abs(n), relu(n), n + 1.0})
    CHECK(std::isnan(y.to_vector<double>()[0]));
  Tensor o = f64({1, kNaN}, {2});
  for (Tensor y : {maximum(n, o), minimum(n, o), maximum(o, n), minimum(o, n)}) {
    std::vector<double> v = y.to_vector<double>();
    CHECK(std::isnan(v[0]));
    CHECK(std::isnan(v[1]));
  }
}

TEST_CASE("clamp") {
  Tensor x = f32({-3, -1, 0, 1, 3}, {5});
  CHECK(clamp(x, -1, 1).to_vector<float>() == std::vector<float>{-1, -1, 0, 1, 1});
  CHECK(clamp(x, 0, 0).to_vector<float>() == std::vector<float>{0, 0, 0, 0, 0});
  CHECK(clamp(x, -kInf, 0.5).to_vector<float>() == std::vector<float>{-3, -1, 0, 0.5f, 0.5f});
  CHECK(clamp(x.reshape({5, 1}).expand({5, 2}), -1, 1).shape() == Shape{5, 2});
  CHECK_THROWS_AS(clamp(x, 1, -1), ValueError);
}

TEST_CASE("pow forms") {
  Tensor x = f64({-2, -0.5, 0, 0.5, 2, 3}, {6});
  for (double p : {0.0, 1.0, 2.0, 3.0, -1.0, 0.5, -2.0}) {
    INFO("p = ", p);
    std::vector<double> got = pow(x, p).to_vector<double>(), in = x.to_vector<double>();
    std::vector<double> via_tensor = pow(x, scalar_tensor(p, DType::f64)).to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(close(got[i], std::pow(in[i], p)));
      CHECK(close(via_tensor[i], std::pow(in[i], p)));
    }
  }
  CHECK(pow(f64({2, 3}, {2}), f64({3, 2}, {2})).to_vector<double>() == std::vector<double>{8, 9});
  CHECK(pow(scalar_tensor(2.0, DType::f64), f64({0, 1, 10}, {3})).to_vector<double>() ==
        std::vector<double>{1, 2, 1024});
  CHECK(allclose(pow(f64({4, 9}, {2}), 0.5), sqrt(f64({4, 9}, {2}))));
  CHECK(pow(f32({2}, {1}), 10.0).item<float>() == 1024.0f);
}

TEST_CASE("where and masked_fill") {
  Tensor c = from_vector(std::vector<double>{1, 0, 0, 1}, {2, 2}, DType::b8);
  Tensor a = f64({1, 2, 3, 4}, {2, 2}), b = f64({-1, -2, -3, -4}, {2, 2});
  CHECK(where(c, a, b).to_vector<double>() == std::vector<double>{1, -2, -3, 4});
  // broadcasting in all three operands
  Tensor crow = from_vector(std::vector<double>{1, 0}, {2, 1}, DType::b8);
  CHECK(where(crow, a, scalar_tensor(0, DType::f64)).to_vector<double>() == std::vector<double>{1, 2, 0, 0});
  CHECK(where(crow, f64({7, 8, 9}, {3}), f64({0}, {1})).shape() == Shape{2, 3});
  // integer and boolean payloads
  CHECK(where(c, i64({1, 2, 3, 4}, {2, 2}), i64({0}, {1})).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 4});
  CHECK(where(c, c, logical_not(c)).to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 1, 1});
  CHECK_THROWS_AS(where(a, a, b), DTypeError);
  CHECK_THROWS_AS(where(c, a, zeros({2, 2})), DTypeError);

  Tensor m = masked_fill(a, c, -kInf);
  CHECK(m.to_vector<double>() == std::vector<double>{-kInf, 2, 3, -kInf});
  CHECK(a.at({0, 0}) == 1);  // out of place
  CHECK(masked_fill(a, crow, 0).to_vector<double>() == std::vector<double>{0, 0, 3, 4});
  CHECK(masked_fill(a.t(), c, 9).to_vector<double>() == std::vector<double>{9, 3, 2, 9});
  CHECK_THROWS_AS(masked_fill(f64({1, 2}, {2}), c, 0), ShapeError);  // mask may not grow the tensor
}

TEST_CASE("comparisons give b8 and handle NaN and infinities") {
  Tensor a = f32({1, 2, NAN, INFINITY}, {4}), b = f32({1, 3, NAN, INFINITY}, {4});
  Tensor e = eq(a, b);
  CHECK(e.dtype() == DType::b8);
  CHECK(!e.requires_grad());
  CHECK(e.to_vector<uint8_t>() == std::vector<uint8_t>{1, 0, 0, 1});
  CHECK(ne(a, b).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 1, 0});
  CHECK(lt(a, b).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 0, 0});
  CHECK(le(a, b).to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 0, 1});
  CHECK(gt(b, a).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 0, 0});
  CHECK(ge(b, a).to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 0, 1});
  CHECK(logical_not(e).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 1, 0});
  CHECK(eq(i64({1, 2}, {2}), i64({2}, {1})).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1});
  CHECK(eq(e, e).to_vector<uint8_t>() == std::vector<uint8_t>{1, 1, 1, 1});
  CHECK_THROWS_AS(logical_not(a), DTypeError);
  CHECK_THROWS_AS(eq(a, zeros({4}, DType::f64)), DTypeError);

  CHECK(allclose(f64({1, 2}, {2}), f64({1 + 1e-9, 2}, {2})));
  CHECK(!allclose(f64({1, 2}, {2}), f64({1.1, 2}, {2})));
  CHECK(!allclose(f64({kNaN}, {1}), f64({kNaN}, {1})));
  CHECK(!allclose(f64({1, 1}, {2}), f64({1}, {1})));
  CHECK_THROWS_AS(allclose(f64({1, 1}, {2}), f64({1, 1, 1}, {3})), ShapeError);
  CHECK(equal(f64({1, 2}, {2}), f64({1, 2}, {2})));
  CHECK(!equal(f64({1, 2}, {2}), f32({1, 2}, {2})));
  CHECK(!equal(f64({1, 2}, {2}), f64({1, 2}, {1, 2})));
}

// ==== reductions ==============================================================================

namespace {
enum class Red { sum, mean, max, min, argmax, argmin, logsumexp, var_unbiased, var_biased };

Tensor run(Red r, const Tensor& x, int64_t d, bool keep) {
  switch (r) {
    case Red::sum: return sum(x, d, keep);
    case Red::mean: return mean(x, d, keep);
    case Red::max: return max(x, d, keep);
    case Red::min: return min(x, d, keep);
    case Red::argmax: return argmax(x, d, keep);
    case Red::argmin: return argmin(x, d, keep);
    case Red::logsumexp: return logsumexp(x, d, keep);
    case Red::var_unbiased: return var(x, d, true, keep);
    case Red::var_biased: return var(x, d, false, keep);
  }
  return Tensor();
}

double naive(Red r, const std::vector<double>& v) {
  const double n = double(v.size());
  double s = 0, best = v[0];
  int64_t at = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    s += v[i];
    if ((r == Red::max || r == Red::argmax) ? v[i] > best : v[i] < best) {
      best = v[i];
      at = int64_t(i);
    }
  }
  switch (r) {
    case Red::sum: return s;
    case Red::mean: return s / n;
    case Red::max:
    case Red::min: return best;
    case Red::argmax:
    case Red::argmin: return double(at);
    case Red::logsumexp: {
      double m = *std::max_element(v.begin(), v.end()), acc = 0;
      for (double x : v) acc += std::exp(x - m);
      return m + std::log(acc);
    }
    case Red::var_unbiased:
    case Red::var_biased: {
      double acc = 0;
      for (double x : v) acc += (x - s / n) * (x - s / n);
      return acc / (n - (r == Red::var_unbiased ? 1 : 0));
    }
  }
  return 0;
}

const char* red_name(Red r) {
  const char* names[] = {"sum", "mean", "max", "min", "argmax", "argmin", "logsumexp", "var(unbiased)", "var(biased)"};
  return names[int(r)];
}
}  // namespace

TEST_CASE("reductions along every axis with and without keepdim match a naive reference") {
  Generator gen(21);
  const std::vector<Red> reds = {Red::sum,    Red::mean,   Red::max,       Red::min,         Red::argmax,
                                 Red::argmin, Red::logsumexp, Red::var_unbiased, Red::var_biased};
  for (DType dt : {DType::f64, DType::f32}) {
    // contiguous [3,4,5], a permuted view, a strided slice
    Tensor base = randn({3, 4, 5}, dt, &gen);
    Tensor perm = randn({5, 3, 4}, dt, &gen).permute({1, 2, 0});
    Tensor strided = randn({6, 4, 10}, dt, &gen).slice(0, 0, 6, 2).slice(2, 1, 10, 2);
    for (const Tensor& x : {base, perm, strided}) {
      REQUIRE(x.shape() == Shape{3, 4, 5});
      for (Red r : reds) {
        for (int64_t d : {0, 1, 2, -1, -3}) {
          for (bool keep : {false, true}) {
            INFO(red_name(r), " dim ", d, " keepdim ", keep, " ", dtype_name(dt), " contiguous ", x.is_contiguous());
            Tensor y = run(r, x, d, keep);
            const int64_t w = d < 0 ? d + 3 : d;
            Shape expect = x.shape();
            if (keep) expect[size_t(w)] = 1;
            else expect.erase(expect.begin() + w);
            REQUIRE(y.shape() == expect);
            CHECK(y.dtype() == ((r == Red::argmax || r == Red::argmin) ? DType::i64 : dt));
            for_each_index(expect, [&](const Shape& oi) {
              Shape xi = oi;
              if (!keep) xi.insert(xi.begin() + w, 0);
              std::vector<double> lane;
              for (int64_t k = 0; k < x.shape()[size_t(w)]; ++k) {
                xi[size_t(w)] = k;
                lane.push_back(get(x, xi));
              }
              CHECK(close(get(y, oi), naive(r, lane), dt == DType::f32 ? 1e-5 : 1e-12, 1e-6));
            });
          }
        }
      }
    }
    // full reductions
    std::vector<double> all = perm.to_vector<double>();
    CHECK(sum(perm).dim() == 0);
    CHECK(close(sum(perm).item<double>(), naive(Red::sum, all), 1e-5, 1e-5));
    CHECK(close(mean(perm).item<double>(), naive(Red::mean, all), 1e-5, 1e-6));
    CHECK(perm.sum().item<double>() == sum(perm).item<double>());
    CHECK(perm.mean(1).shape() == Shape{3, 5});
    CHECK(max(perm).item<double>() == naive(Red::max, all));
    CHECK(min(perm).item<double>() == naive(Red::min, all));
  }
}

TEST_CASE("sum over several dims, empty tensors and 0-d tensors") {
  Tensor x = arange(0.0, 24.0, 1.0, DType::f64).reshape({2, 3, 4});
  Tensor s = sum(x, Shape{0, 2});
  CHECK(s.shape() == Shape{3});
  CHECK(s.to_vector<double>() == std::vector<double>{60, 92, 124});
  CHECK(sum(x, Shape{2, 0}, true).shape() == Shape{1, 3, 1});
  CHECK(sum(x, Shape{-1, -3}).to_vector<double>() == s.to_vector<double>());
  CHECK_THROWS_AS(sum(x, Shape{0, -3}), IndexError);
  CHECK_THROWS_AS(sum(x, Shape{3}), IndexError);

  CHECK(sum(zeros({0, 3})).item<float>() == 0);
  CHECK(sum(zeros({0, 3}), 0).to_vector<float>() == std::vector<float>{0, 0, 0});
  CHECK(sum(zeros({0, 3}), 1).shape() == Shape{0});
  CHECK(logsumexp(zeros({2, 0}), 1).to_vector<float>() == std::vector<float>{-INFINITY, -INFINITY});
  CHECK_THROWS_AS(mean(zeros({0})), ValueError);  // no elements: refused rather than NaN
  CHECK_THROWS_AS(mean(zeros({2, 0}), 1), ValueError);
  CHECK_THROWS_AS(max(zeros({0})), ValueError);
  CHECK_THROWS_AS(argmin(zeros({3, 0}), 1), ValueError);
  CHECK_THROWS_AS(var(zeros({3, 1}), 1), ValueError);  // unbiased needs 2 samples
  CHECK(var(f64({2}, {1}), 0, false).item<double>() == 0);

  Tensor s0 = scalar_tensor(3.5, DType::f64);
  CHECK(sum(s0).item<double>() == 3.5);
  CHECK(sum(s0, 0).item<double>() == 3.5);
  CHECK(mean(s0, -1).item<double>() == 3.5);
  CHECK(max(s0).item<double>() == 3.5);
  CHECK(argmax(s0, 0).item<int64_t>() == 0);
  CHECK(logsumexp(s0, 0).item<double>() == 3.5);
  CHECK(softmax(s0, 0).item<double>() == 1);
  CHECK(log_softmax(s0, 0).item<double>() == 0);
  CHECK_THROWS_AS(sum(s0, 1), IndexError);
  CHECK_THROWS_AS(max(s0, 1), IndexError);
  CHECK_THROWS_AS(softmax(s0, 2), IndexError);

  // Accumulation in double keeps f32 sums of many small values accurate.
  Tensor many = full({1 << 20}, 0.1, DType::f32);
  CHECK(sum(many).item<double>() == doctest::Approx(0.1f * double(1 << 20)).epsilon(1e-6));
  CHECK(mean(many).item<float>() == doctest::Approx(0.1f).epsilon(1e-6));

  CHECK(sum_to(ones({2, 3, 4}), {3, 1}).to_vector<float>() == std::vector<float>{8, 8, 8});
  CHECK(sum_to(ones({2, 3}), {}).item<float>() == 6);
  CHECK(sum_to(ones({2, 3}), {2, 3}).shape() == Shape{2, 3});
  CHECK_THROWS_AS(sum_to(ones({2, 3}), {4}), ShapeError);
}

TEST_CASE("max / argmax: NaN propagates, ties pick the first index") {
  Tensor x = f64({1, kNaN, 3, 2, 5, 5}, {2, 3});
  std::vector<double> m = max(x, 1).to_vector<double>();
  CHECK(std::isnan(m[0]));
  CHECK(m[1] == 5);
  CHECK(argmax(x, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 1});
  CHECK(argmin(x, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  CHECK(std::isnan(min(x, 1).to_vector<double>()[0]));
  CHECK(std::isnan(max(x).item<double>()));
  CHECK(std::isnan(min(x).item<double>()));
  Tensor trailing = f64({1, 2, kNaN}, {3});
  CHECK(std::isnan(max(trailing).item<double>()));
  CHECK(argmax(trailing, 0).item<int64_t>() == 2);
  // NaN down a column (a strided lane)
  std::vector<double> col = max(x, 0).to_vector<double>();
  CHECK(col[0] == 2);
  CHECK(std::isnan(col[1]));
  CHECK(col[2] == 5);
  CHECK(argmax(f64({2, 7, 7, 1}, {4}), 0).item<int64_t>() == 1);
  CHECK(argmin(f64({2, 1, 7, 1}, {4}), 0).item<int64_t>() == 1);
  CHECK(max(f64({-kInf, -kInf}, {2})).item<double>() == -kInf);
  CHECK(argmax(f64({-kInf, -kInf}, {2}), 0).item<int64_t>() == 0);
  CHECK_THROWS_AS(argmax(i64({1, 2}, {2}), 0), DTypeError);
}

TEST_CASE("softmax and log_softmax: normalised, stable for huge values, -inf entries") {
  Generator gen(3);
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Tensor x = randn({4, 6}, dt, &gen) * 3.0;
    for (int64_t d : {0, 1, -1}) {
      Tensor s = softmax(x, d), ls = log_softmax(x, d);
      CHECK(s.shape() == x.shape());
      CHECK(allclose(sum(s, d), ones_like(sum(s, d)), 1e-5, 1e-6));
      CHECK(allclose(exp(ls), s, 1e-5, 1e-7));
      CHECK(allclose(ls, x - logsumexp(x, d, true), 1e-5, 1e-5));
      // invariant to a constant shift, and identical for a transposed view
      CHECK(allclose(softmax(x + 1000.0, d), s, 5e-4, 1e-6));
      CHECK(allclose(softmax(x.t().contiguous().t(), d), s, 1e-6, 1e-9));
    }
    // Huge values: no overflow, and the result equals the shifted problem's.
    Tensor huge = from_vector({1e4, 1e4 + 1, 1e4 - 1, 1e4 + 2}, {1, 4}, dt);
    Tensor small = from_vector({0.0, 1.0, -1.0, 2.0}, {1, 4}, dt);
    CHECK(allclose(softmax(huge, 1), softmax(small, 1), 1e-5, 1e-7));
    CHECK(allclose(log_softmax(huge, 1), log_softmax(small, 1), 1e-5, 1e-6));
    CHECK(allclose(logsumexp(huge, 1), logsumexp(small, 1) + 1e4, 1e-6, 1e-6));
    Tensor neg_huge = from_vector({-1e4, -1e4 + 1}, {2}, dt);
    CHECK(allclose(softmax(neg_huge, 0), softmax(from_vector({0.0, 1.0}, {2}, dt), 0), 1e-5, 1e-7));

    // -inf entries get exactly zero probability; the rest renormalise.
    Tensor masked = from_vector({0.0, -kInf, 0.0, -kInf}, {4}, dt);
    CHECK(softmax(masked, 0).to_vector<double>() == std::vector<double>{0.5, 0, 0.5, 0});
    std::vector<double> lm = log_softmax(masked, 0).to_vector<double>();
    CHECK(lm[0] == doctest::Approx(std::log(0.5)));
    CHECK(lm[1] == -kInf);
    CHECK(logsumexp(masked, 0).item<double>() == doctest::Approx(std::log(2.0)));

    // A fully -inf (fully masked) row: logsumexp is log(0) = -inf, log_softmax is -inf throughout,
    // and softmax gives zeros (attention over nothing contributes nothing) - never NaN. PyTorch
    // gives NaN for the softmax; attnlab's choice is documented in the attention layer's tests.
    Tensor dead = from_vector({-kInf, -kInf, 1.0, 2.0}, {2, 2}, dt);
    std::vector<double> lse = logsumexp(dead, 1).to_vector<double>();
    CHECK(lse[0] == -kInf);
    CHECK(lse[1] == doctest::Approx(2 + std::log(1 + std::exp(-1.0))));
    std::vector<double> sd = softmax(dead, 1).to_vector<double>();
    CHECK(sd[0] == 0);
    CHECK(sd[1] == 0);
    CHECK(sd[2] + sd[3] == doctest::Approx(1));  // other rows unaffected
    std::vector<double> lsd = log_softmax(dead, 1).to_vector<double>();
    CHECK(lsd[0] == -kInf);
    CHECK(lsd[1] == -kInf);
    CHECK(lsd[3] == doctest::Approx(-std::log(1 + std::exp(-1.0))));

    // +inf dominates: logsumexp is +inf, not NaN.
    CHECK(logsumexp(from_vector({kInf, 1.0}, {2}, dt), 0).item<double>() == kInf);
    CHECK(logsumexp(from_vector({kInf, kInf}, {2}, dt), 0).item<double>() == kInf);
    // NaN propagates.
    CHECK(std::isnan(logsumexp(from_vector({kNaN, 1.0}, {2}, dt), 0).item<double>()));
    CHECK(std::isnan(logsumexp(from_vector({1.0, kNaN}, {2}, dt), 0).item<double>()));
    // A NaN anywhere in a row makes the whole row NaN (not zeros, not -inf).
    Tensor nan_row = from_vector({1.0, kNaN}, {2}, dt), nan_masked = from_vector({kNaN, -kInf}, {2}, dt);
    for (Tensor y :
         {softmax(nan_row, 0), log_softmax(nan_row, 0), softmax(nan_masked, 0), log_softmax(nan_masked, 0)}) {
      std::vector<double> v = y.to_vector<double>();
      CHECK(std::isnan(v[0]));
      CHECK(std::isnan(v[1]));
    }
  }
}

// ==== matmul ==================================================================================

namespace {
// C = A @ B by a triple loop over logical indices, for 2-D A and B.
std::vector<double> naive_mm(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  std::vector<double> c(size_t(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) acc += get(a, {i, p}) * get(b, {p, j});
      c[size_t(i * n + j)] = acc;
    }
  return c;
}

void check_mm(const Tensor& c, const std::vector<double>& ref, double tol) {
  std::vector<double> got = c.to_vector<double>();
  REQUIRE(got.size() == ref.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(close(got[i], ref[i], tol, tol));
}

uint64_t allocations() {
  AllocatorStats s = cpu_allocator::stats();
  return s.fresh_allocations + s.cache_hits;
}
}  // namespace

TEST_CASE("matmul 2-D against a triple loop, f32 and f64, including transposed views without copies") {
  Generator gen(5);
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 1e-5 : 1e-12;
    INFO(dtype_name(dt));
    Tensor a = randn({5, 7}, dt, &gen), b = randn({7, 3}, dt, &gen);
    Tensor c = matmul(a, b);
    CHECK(c.shape() == Shape{5, 3});
    CHECK(c.dtype() == dt);
    check_mm(c, naive_mm(a, b), tol);

    // Transposed operands go to BLAS as flags: exactly one allocation (the output).
    Tensor at = randn({7, 5}, dt, &gen).t(), bt = randn({3, 7}, dt, &gen).t();
    REQUIRE(!at.is_contiguous());
    for (auto [x, y] : {std::pair{at, b}, std::pair{a, bt}, std::pair{at, bt}}) {
      uint64_t before = allocations();
      Tensor r = matmul(x, y);
      CHECK(allocations() - before == 1);
      check_mm(r, naive_mm(x, y), tol);
    }
    // Row-strided (narrowed columns) operands: leading dimension larger than the row.
    Tensor wide = randn({5, 10}, dt, &gen);
    Tensor an = wide.narrow(1, 2, 7);
    uint64_t before = allocations();
    Tensor rn = matmul(an, b);
    CHECK(allocations() - before == 1);
    check_mm(rn, naive_mm(an, b), tol);
    check_mm(matmul(b.t(), an.t()), naive_mm(b.t(), an.t()), tol);
    // Every-other-row and every-other-column views: still correct (whatever the copies).
    Tensor big = randn({10, 14}, dt, &gen);
    Tensor rows = big.slice(0, 0, 10, 2).narrow(1, 0, 7);  // [5, 7], row stride 28
    check_mm(matmul(rows, b), naive_mm(rows, b), tol);
    Tensor cols = big.slice(1, 0, 14, 2).narrow(0, 0, 7);  // [7, 7], column stride 2
    check_mm(matmul(cols, b), naive_mm(cols, b), tol);
    check_mm(matmul(a, cols), naive_mm(a, cols), tol);
    // An expanded operand (stride 0)
    Tensor ex = randn({1, 7}, dt, &gen).expand({4, 7});
    check_mm(matmul(ex, b), naive_mm(ex, b), tol);
    // single rows / columns (m = 1, n = 1)
    check_mm(matmul(a.narrow(0, 1, 1), b), naive_mm(a.narrow(0, 1, 1), b), tol);
    check_mm(matmul(a, b.narrow(1, 2, 1)), naive_mm(a, b.narrow(1, 2, 1)), tol);
    check_mm(matmul(b.t().narrow(0, 0, 1), bt.narrow(1, 0, 1)), naive_mm(b.t().narrow(0, 0, 1), bt.narrow(1, 0, 1)),
             tol);
  }
}

TEST_CASE("batched matmul with broadcast batch dims") {
  Generator gen(6);
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 1e-5 : 1e-12;
    Tensor a = randn({2, 1, 3, 4}, dt, &gen), b = randn({5, 4, 2}, dt, &gen);
    Tensor c = matmul(a, b);
    REQUIRE(c.shape() == Shape{2, 5, 3, 2});
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 5; ++j)
        check_mm(c.select(0, i).select(0, j), naive_mm(a.select(0, i).select(0, 0), b.select(0, j)), tol);
    // 2-D with 3-D, and transposed batch members
    Tensor m = randn({4, 2}, dt, &gen);
    Tensor bt = randn({3, 2, 4}, dt, &gen).transpose(1, 2);  // [3, 4, 2] non-contiguous
    Tensor ab = matmul(randn({3, 3, 4}, dt, &gen), m);
    CHECK(ab.shape() == Shape{3, 3, 2});
    Tensor l = randn({3, 4}, dt, &gen);
    Tensor lb = matmul(l, bt);
    REQUIRE(lb.shape() == Shape{3, 3, 2});
    for (int64_t i = 0; i < 3; ++i) check_mm(lb.select(0, i), naive_mm(l, bt.select(0, i)), tol);
    // a permuted batch (batch stride smaller than matrix strides)
    Tensor pa = randn({3, 4, 2}, dt, &gen).permute({2, 0, 1});  // [2, 3, 4]
    Tensor pc = matmul(pa, m);
    for (int64_t i = 0; i < 2; ++i) check_mm(pc.select(0, i), naive_mm(pa.select(0, i), m), tol);
  }
}

TEST_CASE("matmul with 1-D operands, k = 0 and empty dims") {
  Tensor v = f64({1, 2, 3}, {3}), w = f64({4, 5, 6}, {3});
  Tensor dot = matmul(v, w);
  CHECK(dot.dim() == 0);
  CHECK(dot.item<double>() == 32);
  Tensor m = arange(0.0, 6.0, 1.0, DType::f64).reshape({3, 2});  // [[0,1],[2,3],[4,5]]
  Tensor vm = matmul(v, m);
  CHECK(vm.shape() == Shape{2});
  CHECK(vm.to_vector<double>() == std::vector<double>{16, 22});
  Tensor mv = matmul(m.t(), v);
  CHECK(mv.shape() == Shape{2});
  CHECK(mv.to_vector<double>() == std::vector<double>{16, 22});
  Tensor bm = stack({m, m * 2.0}, 0);  // [2, 3, 2]
  CHECK(matmul(v, bm).shape() == Shape{2, 2});
  CHECK(matmul(v, bm).to_vector<double>() == std::vector<double>{16, 22, 32, 44});
  CHECK(matmul(bm.transpose(1, 2), v).shape() == Shape{2, 2});
  CHECK(matmul(bm.transpose(1, 2), v).to_vector<double>() == std::vector<double>{16, 22, 32, 44});
  CHECK(matmul(f32({2}, {1}), f32({3}, {1})).item<float>() == 6);

  // k = 0: a sum over nothing is zero, and BLAS must not be handed garbage.
  Tensor z = matmul(zeros({3, 0}), zeros({0, 4}));
  CHECK(z.shape() == Shape{3, 4});
  CHECK(z.to_vector<float>() == std::vector<float>(12, 0.0f));
  CHECK(matmul(zeros({0}, DType::f64), zeros({0}, DType::f64)).item<double>() == 0);
  CHECK(matmul(zeros({2, 3, 0}), zeros({0, 5})).to_vector<float>() == std::vector<float>(30, 0.0f));
  CHECK(matmul(zeros({0, 3}), zeros({3, 4})).shape() == Shape{0, 4});
  CHECK(matmul(zeros({3, 3}), zeros({3, 0})).shape() == Shape{3, 0});
  CHECK(matmul(zeros({0, 2, 3}), zeros({3, 4})).shape() == Shape{0, 2, 4});

  std::string msg = message_of<ShapeError>([] { matmul(zeros({2, 3}), zeros({4, 5})); });
  CHECK(contains(msg, "matmul"));
  CHECK(contains(msg, "[2, 3]"));
  CHECK(contains(msg, "[4, 5]"));
  CHECK_THROWS_AS(matmul(zeros({3}), zeros({4})), ShapeError);
  CHECK_THROWS_AS(matmul(zeros({3}), zeros({4, 2})), ShapeError);
  CHECK_THROWS_AS(matmul(zeros({2, 3}), zeros({2})), ShapeError);
  CHECK_THROWS_AS(matmul(zeros({2, 2, 3}), zeros({3, 3, 4})), ShapeError);  // batch 2 vs 3
  CHECK_THROWS_AS(matmul(zeros({}), zeros({3})), ShapeError);
  CHECK_THROWS_AS(matmul(zeros({2, 2}), zeros({2, 2}, DType::f64)), DTypeError);
  CHECK_THROWS_AS(matmul(zeros({2, 2}, DType::i64), zeros({2, 2}, DType::i64)), DTypeError);
}

// ==== indexing and joining ======================================================================

TEST_CASE("gather") {
  Tensor x = arange(0.0, 12.0, 1.0, DType::f64).reshape({3, 4});
  Tensor g1 = gather(x, 1, i64({0, 3, 1, 1, 2, 0}, {3, 2}));
  CHECK(g1.shape() == Shape{3, 2});
  CHECK(g1.to_vector<double>() == std::vector<double>{0, 3, 5, 5, 10, 8});
  Tensor g0 = gather(x, 0, i64({2, 0, 1, 2}, {1, 4}));
  CHECK(g0.to_vector<double>() == std::vector<double>{8, 1, 6, 11});
  CHECK(gather(x, -1, i64({3}, {1, 1})).item<double>() == 3);  // index smaller than x in other dims
  CHECK(gather(x.t(), 0, i64({3, 0}, {1, 2})).to_vector<double>() == std::vector<double>{3, 4});
  CHECK(gather(arange(4), 0, i64({3, 3, 0}, {3})).to_vector<int64_t>() == std::vector<int64_t>{3, 3, 0});
  CHECK(gather(x, 1, zeros({3, 0}, DType::i64)).shape() == Shape{3, 0});
  std::string msg = message_of<IndexError>([&] { gather(x, 1, i64({4}, {1, 1})); });
  CHECK(contains(msg, "gather"));
  CHECK(contains(msg, "4"));
  CHECK_THROWS_AS(gather(x, 1, i64({-1}, {1, 1})), IndexError);
  CHECK_THROWS_AS(gather(x, 2, i64({0}, {1, 1})), IndexError);
  CHECK_THROWS_AS(gather(x, 1, i64({0}, {1})), ShapeError);
  CHECK_THROWS_AS(gather(x, 1, i64({0, 0, 0, 0}, {4, 1})), ShapeError);
  CHECK_THROWS_AS(gather(x, 1, zeros({1, 1})), DTypeError);
  CHECK_THROWS_AS(gather(scalar_tensor(1), 0, i64({0}, {})), IndexError);
}

TEST_CASE("scatter_add") {
  Tensor x = zeros({2, 4}, DType::f64);
  Tensor idx = i64({0, 0, 3, 2, 2, 1}, {2, 3});
  Tensor src = f64({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor y = scatter_add(x, 1, idx, src);
  CHECK(y.to_vector<double>() == std::vector<double>{3, 0, 0, 3, 0, 6, 9, 0});
  CHECK(x.to_vector<double>() == std::vector<double>(8, 0.0));  // out of place
  Tensor y0 = scatter_add(ones({3, 2}, DType::f64), 0, i64({2, 2}, {1, 2}), f64({5, 7, 9, 9}, {2, 2}));
  CHECK(y0.to_vector<double>() == std::vector<double>{1, 1, 1, 1, 6, 8});  // src larger than index: ignored rest
  CHECK(scatter_add(x.t().contiguous().t(), 1, idx, src).to_vector<double>() == y.to_vector<double>());
  CHECK_THROWS_AS(scatter_add(x, 1, i64({4}, {1, 1}), src), IndexError);
  CHECK_THROWS_AS(scatter_add(x, 1, i64({-1}, {1, 1}), src), IndexError);
  CHECK_THROWS_AS(scatter_add(x, 1, idx, src.to(DType::f32)), DTypeError);
  CHECK_THROWS_AS(scatter_add(x, 1, idx, zeros({2, 2}, DType::f64)), ShapeError);
}

TEST_CASE("index_select and index_add") {
  Tensor x = arange(0.0, 12.0, 1.0, DType::f64).reshape({4, 3});
  Tensor s0 = index_select(x, 0, i64({3, 0, 3}, {3}));
  CHECK(s0.shape() == Shape{3, 3});
  CHECK(s0.to_vector<double>() == std::vector<double>{9, 10, 11, 0, 1, 2, 9, 10, 11});
  Tensor s1 = index_select(x, 1, i64({2, 1}, {2}));
  CHECK(s1.to_vector<double>() == std::vector<double>{2, 1, 5, 4, 8, 7, 11, 10});
  CHECK(index_select(x.t(), 0, i64({1}, {1})).to_vector<double>() == std::vector<double>{1, 4, 7, 10});
  CHECK(index_select(arange(5), 0, i64({4, 4}, {2})).to_vector<int64_t>() == std::vector<int64_t>{4, 4});
  CHECK(index_select(x, 0, zeros({0}, DType::i64)).shape() == Shape{0, 3});
  s0.fill_(0);  // a copy, not a view
  CHECK(x.at({3, 0}) == 9);
  CHECK_THROWS_AS(index_select(x, 0, i64({4}, {1})), IndexError);
  CHECK_THROWS_AS(index_select(x, 1, i64({-1}, {1})), IndexError);
  CHECK_THROWS_AS(index_select(x, 0, i64({0}, {1, 1})), ShapeError);
  CHECK_THROWS_AS(index_select(x, 0, zeros({1})), DTypeError);
  CHECK_THROWS_AS(index_select(scalar_tensor(1), 0, i64({0}, {1})), IndexError);

  Tensor a = index_add(zeros({4, 2}, DType::f64), 0, i64({1, 1, 3}, {3}), f64({1, 2, 3, 4, 5, 6}, {3, 2}));
  CHECK(a.to_vector<double>() == std::vector<double>{0, 0, 4, 6, 0, 0, 5, 6});
  Tensor a1 = index_add(ones({2, 3}, DType::f64), -1, i64({2}, {1}), f64({7, 8}, {2, 1}));
  CHECK(a1.to_vector<double>() == std::vector<double>{1, 1, 8, 1, 1, 9});
  CHECK_THROWS_AS(index_add(zeros({4, 2}), 0, i64({4}, {1}), zeros({1, 2})), IndexError);
  CHECK_THROWS_AS(index_add(zeros({4, 2}), 0, i64({0}, {1}), zeros({2, 2})), ShapeError);
  CHECK_THROWS_AS(index_add(zeros({4, 2}), 0, i64({0}, {1}), zeros({1, 2}, DType::f64)), DTypeError);
}

TEST_CASE("concat, split, stack") {
  Tensor a = arange(0.0, 6.0).reshape({2, 3}), b = arange(6.0, 8.0).reshape({2, 1});
  Tensor c = concat({a, b}, 1);
  CHECK(c.shape() == Shape{2, 4});
  CHECK(c.to_vector<float>() == std::vector<float>{0, 1, 2, 6, 3, 4, 5, 7});
  CHECK(concat({a, b}, -1).to_vector<float>() == c.to_vector<float>());
  CHECK(concat({a, a.t().contiguous().t()}, 0).to_vector<float>() ==
        std::vector<float>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5});
  CHECK(concat({a, zeros({0, 3})}, 0).shape() == Shape{2, 3});
  CHECK(concat({a}, 0).to_vector<float>() == a.to_vector<float>());
  CHECK(concat({i64({1}, {1}), i64({2, 3}, {2})}, 0).to_vector<int64_t>() == std::vector<int64_t>{1, 2, 3});
  CHECK_THROWS_AS(concat({a, b}, 0), ShapeError);
  CHECK_THROWS_AS(concat({a, zeros({6})}, 0), ShapeError);
  CHECK_THROWS_AS(concat({a, a.to(DType::f64)}, 0), DTypeError);
  CHECK_THROWS_AS(concat({scalar_tensor(1), scalar_tensor(2)}, 0), ShapeError);
  CHECK_THROWS_AS(concat({}, 0), ValueError);
  CHECK_THROWS_AS(concat({a, a}, 2), IndexError);

  Tensor x = arange(0.0, 10.0);
  std::vector<Tensor> parts = split(x, 4, 0);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0].to_vector<float>() == std::vector<float>{0, 1, 2, 3});
  CHECK(parts[2].to_vector<float>() == std::vector<float>{8, 9});
  CHECK(parts[1].raw_data() == static_cast<void*>(x.data<float>() + 4));  // views
  std::vector<Tensor> sized = split(a, std::vector<int64_t>{1, 0, 2}, 1);
  REQUIRE(sized.size() == 3);
  CHECK(sized[0].shape() == Shape{2, 1});
  CHECK(sized[1].shape() == Shape{2, 0});
  CHECK(sized[2].to_vector<float>() == std::vector<float>{1, 2, 4, 5});
  CHECK(split(x, 20, 0).size() == 1);
  CHECK_THROWS_AS(split(x, std::vector<int64_t>{3, 3}, 0), ShapeError);
  CHECK_THROWS_AS(split(x, std::vector<int64_t>{11, -1}, 0), ValueError);
  CHECK_THROWS_AS(split(x, 0, 0), ValueError);
  CHECK_THROWS_AS(split(x, 2, 1), IndexError);
  CHECK_THROWS_AS(split(scalar_tensor(1), 1, 0), IndexError);
  CHECK_THROWS_AS(split(scalar_tensor(1), std::vector<int64_t>{1}, 0), IndexError);

  Tensor s = stack({a, a * 2.0}, 0);
  CHECK(s.shape() == Shape{2, 2, 3});
  CHECK(s.at({1, 1, 2}) == 10);
  Tensor s1 = stack({a, a * 2.0}, 1);
  CHECK(s1.shape() == Shape{2, 2, 3});
  CHECK(s1.at({1, 1, 2}) == 10);
  CHECK(s1.at({1, 0, 2}) == 5);
  Tensor sl = stack({a, a * 2.0}, -1);
  CHECK(sl.shape() == Shape{2, 3, 2});
  CHECK(sl.at({0, 2, 1}) == 4);
  CHECK(stack({scalar_tensor(1), scalar_tensor(2)}, 0).to_vector<float>() == std::vector<float>{1, 2});
  CHECK_THROWS_AS(stack({a, b}, 0), ShapeError);
  CHECK_THROWS_AS(stack({}, 0), ValueError);
  CHECK_THROWS_AS(stack({a, a}, 3), IndexError);
}

TEST_CASE("one_hot") {
  Tensor oh = one_hot(i64({2, 0, 1, 2}, {2, 2}), 3);
  CHECK(oh.shape() == Shape{2, 2, 3});
  CHECK(oh.dtype() == DType::f32);
  CHECK(oh.to_vector<float>() == std::vector<float>{0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1});
  CHECK(one_hot(i64({1}, {1}), 2, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  CHECK(one_hot(i64({1}, {1}), 2, DType::b8).dtype() == DType::b8);
  CHECK(one_hot(i64({3}, {}), 4).shape() == Shape{4});
  CHECK(one_hot(arange(3), 3).to_vector<float>() == eye(3).to_vector<float>());
  std::string msg = message_of<IndexError>([] { one_hot(i64({0, 3}, {2}), 3); });
  CHECK(contains(msg, "one_hot"));
  CHECK(contains(msg, "3"));
  CHECK_THROWS_AS(one_hot(i64({-1}, {1}), 3), IndexError);
  CHECK_THROWS_AS(one_hot(i64({0}, {1}), 0), ValueError);
  CHECK_THROWS_AS(one_hot(zeros({1}), 3), DTypeError);
}

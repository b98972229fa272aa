// Sizes that overflow 64 bits or exceed the machine's memory are refused before any allocation,
// with a MemoryError naming the function that asked and the size; no wrap-around, no hang.
#include <doctest/doctest.h>

#include "core/allocator.h"
#include "core/tensor.h"
#include "layers/layers.h"
#include "support.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;

namespace {
constexpr int64_t k2_62 = int64_t(1) << 62;
}

TEST_CASE("a tensor whose byte count overflows 64 bits is refused, naming the caller") {
  // 2^62 floats are 2^64 bytes: the old code allocated 0 bytes (the count wrapped) and wrote 2^62 floats.
  const std::string msg = message_of<MemoryError>([] { empty({k2_62}, DType::f32); });
  CHECK(contains(msg, "f32[4611686018427387904]"));
  CHECK(contains(msg, "overflows 64 bits"));
  CHECK(contains(msg, "test_sizes.cpp:"));  // the requesting call site
  CHECK_THROWS_AS(empty({k2_62, k2_62}, DType::f64), MemoryError);
  CHECK_THROWS_AS(zeros({INT64_MAX}, DType::f32), MemoryError);
  CHECK_THROWS_AS(randn({int64_t(1) << 32 | 1, (int64_t(1) << 32) - 1}), MemoryError);
  CHECK_THROWS_AS(full({3, -1}, 1.0), ShapeError);
  // Zero elements are zero bytes, whatever the other dims.
  CHECK(empty({k2_62, 0, k2_62}).numel() == 0);
}

TEST_CASE("a tensor larger than the machine's memory is refused before any memory is touched") {
  const std::string msg = message_of<MemoryError>([] { empty({int64_t(1) << 50}, DType::f64); });
  CHECK(contains(msg, "needs 8 PiB"));
  CHECK(contains(msg, "more than this machine's memory"));
}

TEST_CASE("layers built with absurd sizes fail with the layer's name instead of crashing or hanging") {
  // attnlab audit {"layer":"layer_norm","d_model":2^62}: SIGSEGV before; d_model 2^63-1: a hang.
  CHECK(contains(message_of<MemoryError>([] { LayerNorm ln(k2_62); }), "LayerNorm"));
  CHECK_THROWS_AS(LayerNorm(INT64_MAX), MemoryError);
  Generator g(1);
  // vocab 2^32+1 with d_model 2^32-1: 2^64-1 elements.
  CHECK_THROWS_AS(Embedding((int64_t(1) << 32) + 1, (int64_t(1) << 32) - 1, g), MemoryError);
}

TEST_CASE("views whose element count overflows are refused; the allocator refuses absurd requests") {
  CHECK_THROWS_AS(shape_numel({k2_62, 4}), ShapeError);
  CHECK(shape_numel({k2_62, 0, 4}) == 0);
  CHECK_THROWS_AS(ones({1}).expand({k2_62, 4}).numel(), ShapeError);  // a view is free; counting it is not
  CHECK_THROWS_AS(ones({1}).expand({k2_62, 4}).contiguous(), MemoryError);
  CHECK_THROWS_AS(cpu_allocator::size_class(size_t(1) << 63), MemoryError);
  CHECK_THROWS_AS(cpu_allocator::size_class(SIZE_MAX), MemoryError);
  CHECK(cpu_allocator::size_class(5000) >= 5000);
}

TEST_CASE("arange with an absurd element count is refused before its count is cast") {
  CHECK_THROWS_AS(arange(0.0, 1e300, 1.0), MemoryError);  // the cast to int64 was undefined behaviour
  CHECK_THROWS_AS(arange(0.0, 1.0, 1e-300), MemoryError);
  CHECK(arange(0.0, 3.0, 1.0).numel() == 3);
  CHECK(arange(3.0, 0.0, 1.0).numel() == 0);
}

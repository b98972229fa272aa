// The counter-based RNG (reproducibility, streams, thread-count independence, distribution
// moments) and the caching CPU allocator (block reuse, size classes, statistics).
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/allocator.h"
#include "core/rng.h"
#include "core/tensor.h"

#if ATTNLAB_ASAN
#include <sanitizer/asan_interface.h>
#endif

using namespace attnlab;

namespace {

struct Moments {
  double mean = 0, var = 0, min = INFINITY, max = -INFINITY;
  bool all_finite = true;
};
Moments moments(const Tensor& t) {
  std::vector<double> v = t.to_vector<double>();
  Moments m;
  double s = 0, s2 = 0;
  for (double x : v) {
    s += x;
    s2 += x * x;
    m.min = std::min(m.min, x);
    m.max = std::max(m.max, x);
    m.all_finite = m.all_finite && std::isfinite(x);
  }
  const double n = double(v.size());
  m.mean = s / n;
  m.var = s2 / n - m.mean * m.mean;
  return m;
}

// Number of positions where two same-shaped tensors agree exactly.
int64_t agreeing(const Tensor& a, const Tensor& b) { return sum(eq(a, b).to(DType::f64)).item<int64_t>(); }

// Restores the OpenMP thread count when a test changes it.
struct ThreadCountGuard {
  int saved = omp_get_max_threads();
  ~ThreadCountGuard() { omp_set_num_threads(saved); }
};

}  // namespace

// ==== RNG =====================================================================================

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  using A4 = std::array<uint32_t, 4>;
  CHECK(philox4x32({0, 0, 0, 0}, {0, 0}) == A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}) ==
        A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  CHECK(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}) ==
        A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
  // Generator::bits lays out (counter, stream) and the seed as documented.
  Generator g(0x299f31d0a4093822ull, 0x0370734413198a2eull);
  CHECK(g.bits(0x85a308d3243f6a88ull) == A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("uniform conversions stay strictly inside (0, 1)") {
  // The largest 24-bit value plus one half rounds to exactly 1.0f without the cap: gumbel would
  // then return -log(-log(1)) = +inf and rand would wrap to 0.
  CHECK(u32_to_open_float(0xffffffffu) < 1.0f);
  CHECK(u32_to_open_float(0xffffff00u) < 1.0f);
  CHECK(u32_to_open_float(0) > 0.0f);
  CHECK(std::isfinite(-std::log(-std::log(u32_to_open_float(0xffffffffu)))));
  CHECK(std::isfinite(-std::log(-std::log(u32_to_open_float(0)))));
  CHECK(u64_to_open_double(0xffffffffu, 0xffffffffu) < 1.0);
  CHECK(u64_to_open_double(0, 0) > 0.0);
  CHECK(std::isfinite(-std::log(-std::log(u64_to_open_double(0xffffffffu, 0xffffffffu)))));
  // Neighbouring inputs stay ordered (the cap only touches the very top).
  CHECK(u32_to_open_float(0x00000100u) > u32_to_open_float(0));
  CHECK(u32_to_open_float(0) == 0.5f / 16777216.0f);
  CHECK(u32_to_open_float(0x7fffffffu) < 0.5f);
}

TEST_CASE("same seed and stream give bit-identical tensors; other seeds and streams do not") {
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Generator a(123, 7), b(123, 7);
    CHECK(equal(rand({1000}, dt, &a), rand({1000}, dt, &b)));
    CHECK(equal(randn({10, 100}, dt, &a), randn({10, 100}, dt, &b)));
    CHECK(equal(gumbel({1000}, dt, &a), gumbel({1000}, dt, &b)));
    CHECK(a.offset() == b.offset());

    Generator s1(123, 1), s2(123, 2), other_seed(124, 1);
    Tensor r1 = randn({1000}, dt, &s1), r2 = randn({1000}, dt, &s2), r3 = randn({1000}, dt, &other_seed);
    CHECK(agreeing(r1, r2) == 0);
    CHECK(agreeing(r1, r3) == 0);
  }
  Generator a(9), b(9);
  CHECK(equal(randint(-5, 5, {1000}, &a), randint(-5, 5, {1000}, &b)));
}

TEST_CASE("the generator's offset: successive draws differ, rewinding repeats, splitting is seamless") {
  Generator g(42);
  CHECK(g.offset() == 0);
  Tensor first = rand({100}, DType::f32, &g);
  CHECK(g.offset() == 100);  // one counter per element
  Tensor second = rand({100}, DType::f32, &g);
  CHECK(agreeing(first, second) < 5);
  g.set_offset(0);
  CHECK(equal(rand({100}, DType::f32, &g), first));
  g.manual_seed(42);
  CHECK(g.offset() == 0);
  CHECK(equal(rand({100}, DType::f32, &g), first));
  g.manual_seed(43);
  CHECK(agreeing(rand({100}, DType::f32, &g), first) < 5);

  // Element i uses counter offset + i: one draw of n + m equals a draw of n then one of m.
  Generator whole(5, 3), parts(5, 3);
  Tensor w = randn({70000}, DType::f64, &whole);
  Tensor p1 = randn({30000}, DType::f64, &parts), p2 = randn({40000}, DType::f64, &parts);
  CHECK(equal(w, concat({p1, p2}, 0)));
  CHECK(whole.offset() == parts.offset());
  // A shape is only a layout: [n] and [a, b] with a * b = n give the same values.
  Generator r1(8), r2(8);
  CHECK(equal(rand({6, 5}, DType::f64, &r1).reshape({30}), rand({30}, DType::f64, &r2)));

  // The global generator obeys manual_seed.
  manual_seed(2024);
  Tensor d1 = randn({50});
  manual_seed(2024);
  CHECK(equal(randn({50}), d1));
  CHECK(default_generator().offset() == 50);
  CHECK(default_generator().seed() == 2024);
}

TEST_CASE("random tensors do not depend on the OpenMP thread count") {
  ThreadCountGuard guard;
  const Shape big{1 << 18};  // well above the parallel grain
  std::vector<std::vector<Tensor>> draws;
  for (int threads : {1, 2, 4}) {
    omp_set_num_threads(threads);
    Generator g(77, 1);
    draws.push_back({rand(big, DType::f32, &g), randn(big, DType::f32, &g), gumbel(big, DType::f64, &g),
                     randn(big, DType::f64, &g), randint(0, 1000, big, &g)});
  }
  for (size_t k = 0; k < draws[0].size(); ++k) {
    INFO("draw ", k);
    CHECK(equal(draws[0][k], draws[1][k]));
    CHECK(equal(draws[0][k], draws[2][k]));
  }
}

TEST_CASE("distribution moments on 1e6 samples") {
  const Shape n{1000000};
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    Generator g(2718, 0);
    // Tolerances are about 5 standard errors of each estimate.
    Moments u = moments(rand(n, dt, &g));
    CHECK(u.min >= 0.0);
    CHECK(u.max < 1.0);
    CHECK(u.min < 1e-5);
    CHECK(u.max > 1 - 1e-5);
    CHECK(std::fabs(u.mean - 0.5) < 0.0015);
    CHECK(std::fabs(u.var - 1.0 / 12) < 0.0008);

    Moments z = moments(randn(n, dt, &g));
    CHECK(z.all_finite);
    CHECK(std::fabs(z.mean) < 0.005);
    CHECK(std::fabs(std::sqrt(z.var) - 1) < 0.004);
    CHECK(z.max > 4);  // the tails are there
    CHECK(z.min < -4);

    Moments gm = moments(gumbel(n, dt, &g));
    CHECK(gm.all_finite);
    CHECK(std::fabs(gm.mean - 0.5772156649) < 0.0065);
    CHECK(std::fabs(gm.var - 3.141592653589793 * 3.141592653589793 / 6) < 0.02);
  }
  Generator g(31);
  Tensor r = randint(-3, 4, {100000}, &g);
  CHECK(r.dtype() == DType::i64);
  std::vector<int64_t> counts(7, 0);
  int64_t outside = 0;
  for (int64_t v : r.to_vector<int64_t>()) {
    if (v < -3 || v >= 4) ++outside;
    else counts[size_t(v + 3)]++;
  }
  CHECK(outside == 0);
  for (int64_t c : counts) CHECK(std::fabs(double(c) - 100000.0 / 7) < 600);  // ~5 sigma
  CHECK_THROWS_AS(randint(2, 1, {3}), ValueError);
  CHECK(randint(5, 6, {4}).to_vector<int64_t>() == std::vector<int64_t>(4, 5));
}

// ==== allocator ===============================================================================

TEST_CASE("size classes") {
  using cpu_allocator::size_class;
  CHECK(size_class(0) == 64);
  CHECK(size_class(1) == 64);
  CHECK(size_class(64) == 64);
  CHECK(size_class(65) == 128);
  CHECK(size_class(4096) == 4096);
  CHECK(size_class(4097) == 4608);
  CHECK(size_class(1 << 20) == size_t(1) << 20);
  for (size_t n : {size_t(1), size_t(100), size_t(4000), size_t(4097), size_t(5000), size_t(12345), size_t(65537),
                   size_t(1000000), size_t(123456789)}) {
    INFO("n = ", n);
    size_t c = size_class(n);
    CHECK(c >= n);
    CHECK(c % 64 == 0);
    CHECK(size_class(c) == c);  // a class is its own class
    if (n > 4096) CHECK(double(c - n) <= 0.125 * double(n));
    CHECK(size_class(n + 1) >= c);  // monotone
  }
}

TEST_CASE("a freed block is reused by the next request of its size class" * doctest::skip(!cpu_allocator::kCaching)) {
  const Shape s{12345};  // 49380 bytes: a class no other test case here keeps busy
  { Tensor warm = empty(s); }
  const AllocatorStats a = cpu_allocator::stats();
  for (int i = 0; i < 50; ++i) {
    Tensor t = empty(s);
    t.fill_(double(i));
  }
  const AllocatorStats b = cpu_allocator::stats();
  CHECK(b.fresh_allocations == a.fresh_allocations);
  CHECK(b.cache_hits == a.cache_hits + 50);
  CHECK(b.bytes_in_use == a.bytes_in_use);
  CHECK(b.bytes_cached == a.bytes_cached);

  // A steady-state loop of ops touches no fresh memory after its first iteration.
  Tensor x = ones({300, 7});
  uint64_t fresh_after_first = 0;
  for (int i = 0; i < 20; ++i) {
    Tensor y = sum(exp(x * 0.5) + x, 1);
    if (i == 0) fresh_after_first = cpu_allocator::stats().fresh_allocations;
  }
  CHECK(cpu_allocator::stats().fresh_allocations == fresh_after_first);

  // Different request sizes in one class share blocks.
  REQUIRE(cpu_allocator::size_class(4097) == cpu_allocator::size_class(4600));
  void* p = cpu_allocator::allocate(4097);
  cpu_allocator::deallocate(p, 4097);
  const uint64_t hits = cpu_allocator::stats().cache_hits;
  void* q = cpu_allocator::allocate(4600);
  CHECK(q == p);
  CHECK(cpu_allocator::stats().cache_hits == hits + 1);
  cpu_allocator::deallocate(q, 4600);
}

TEST_CASE("allocator statistics are consistent") {
  using cpu_allocator::stats;
  const AllocatorStats base = stats();
  CHECK(base.peak_bytes_in_use >= base.bytes_in_use);
  const size_t bytes = 1000 * sizeof(double);
  {
    Tensor t = empty({1000}, DType::f64);
    CHECK(stats().bytes_in_use == base.bytes_in_use + cpu_allocator::size_class(bytes));
    CHECK(stats().peak_bytes_in_use >= stats().bytes_in_use);
    Tensor v = t.reshape({10, 100}).t();  // views allocate nothing
    CHECK(stats().bytes_in_use == base.bytes_in_use + cpu_allocator::size_class(bytes));
    Tensor z = empty({0});  // an empty tensor still holds a minimal block
    CHECK(stats().bytes_in_use == base.bytes_in_use + cpu_allocator::size_class(bytes) + 64);
  }
  CHECK(stats().bytes_in_use == base.bytes_in_use);

  cpu_allocator::reset_peak();
  CHECK(stats().peak_bytes_in_use == stats().bytes_in_use);
  const size_t big = size_t(3) << 20;
  { Tensor t = empty({int64_t(big)}, DType::b8); }
  CHECK(stats().peak_bytes_in_use >= base.bytes_in_use + big);
  CHECK(stats().bytes_in_use == base.bytes_in_use);

  cpu_allocator::empty_cache();
  CHECK(stats().bytes_cached == 0);
  const uint64_t fresh = stats().fresh_allocations;
  { Tensor t = empty({int64_t(big)}, DType::b8); }
  CHECK(stats().fresh_allocations == fresh + 1);  // nothing cached to reuse
  if (cpu_allocator::kCaching) CHECK(stats().bytes_cached >= cpu_allocator::size_class(big));
}

TEST_CASE("under AddressSanitizer, freed tensor memory is poisoned, and so is the byte past a request") {
#if ATTNLAB_ASAN
  // A cached block stayed addressable after its tensor died, so ASan could not see a use after free
  // of tensor memory; with the cache bypassed in ASan builds it sees both kinds of error.
  const float* p;
  {
    Tensor t = empty({1000});
    p = t.data<float>();
    CHECK_FALSE(__asan_address_is_poisoned(p));
    CHECK(__asan_address_is_poisoned(p + 1000));  // the size class's slack is not addressable
  }
  CHECK(__asan_address_is_poisoned(p));
#else
  MESSAGE("not an AddressSanitizer build");
#endif
}

TEST_CASE("allocations are aligned for SIMD, and huge blocks for huge pages") {
  for (int64_t n : {1, 3, 17, 1000, 100000}) {
    Tensor t = empty({n});
    CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % 64 == 0);
  }
  void* p = cpu_allocator::allocate(size_t(4) << 20);
  CHECK(reinterpret_cast<uintptr_t>(p) % (size_t(2) << 20) == 0);
  cpu_allocator::deallocate(p, size_t(4) << 20);
}

TEST_CASE("the allocator is safe to use from several threads") {
  const size_t base = cpu_allocator::stats().bytes_in_use;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      std::vector<void*> held;
      for (int i = 0; i < 500; ++i) {
        size_t n = size_t(64 + (i * 37 + t * 101) % 9000);
        void* p = cpu_allocator::allocate(n);
        static_cast<char*>(p)[0] = char(i);
        cpu_allocator::deallocate(p, n);
        if (i % 50 == 0) held.push_back(cpu_allocator::allocate(4096));
      }
      for (void* p : held) cpu_allocator::deallocate(p, 4096);
    });
  for (std::thread& th : threads) th.join();
  CHECK(cpu_allocator::stats().bytes_in_use == base);
}

// Parallel regions that OpenMP runs with fewer threads than asked for (OMP_DYNAMIC, a thread limit,
// a call from inside another parallel region) must still cover all the work, and give the same numbers.
#include <doctest/doctest.h>
#include <omp.h>

#include <vector>

#include "autograd/grad_mode.h"
#include "core/cpu/loops.h"
#include "core/rng.h"
#include "layers/functional.h"

using namespace attnlab;

namespace {
struct ThreadSettingsGuard {
  int threads = omp_get_max_threads(), levels = omp_get_max_active_levels();
  ~ThreadSettingsGuard() {
    omp_set_num_threads(threads);
    omp_set_max_active_levels(levels);
  }
};

struct LayerNormGrads {
  Tensor dx, dw, db;
};

LayerNormGrads layer_norm_grads(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& g) {
  Tensor lx = x.detach().clone().set_requires_grad(true), lw = w.detach().clone().set_requires_grad(true),
         lb = b.detach().clone().set_requires_grad(true);
  layer_norm(lx, lw, lb).backward(g);
  return {lx.grad(), lw.grad(), lb.grad()};
}
}  // namespace

TEST_CASE("parallel_parts runs every part once, even with a team smaller than the parts") {
  ThreadSettingsGuard guard;
  omp_set_num_threads(2);
  omp_set_max_active_levels(1);  // a region inside a region gets a team of one
  for (int parts : {1, 2, 3, 7}) {
    std::vector<int> runs(size_t(parts), 0);
    cpu::parallel_parts(parts, [&](int p) { ++runs[size_t(p)]; });
    CHECK(runs == std::vector<int>(size_t(parts), 1));
    std::vector<int> nested(size_t(parts), 0);
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      cpu::parallel_parts(parts, [&](int p) { ++nested[size_t(p)]; });
    }
    CHECK(nested == std::vector<int>(size_t(parts), 1));
  }
}

TEST_CASE("layer_norm's weight and bias gradients are complete when called inside a parallel region") {
  ThreadSettingsGuard guard;
  omp_set_num_threads(2);
  omp_set_max_active_levels(1);
  Generator gen(3);
  // Rows x columns above the parallel grain, so the threaded column sums run.
  Tensor x = randn({8, 64, 64}, DType::f64, &gen), w = randn({64}, DType::f64, &gen), b = randn({64}, DType::f64, &gen),
         g = randn({8, 64, 64}, DType::f64, &gen);
  REQUIRE(x.numel() >= cpu::parallel_grain());
  LayerNormGrads ref = layer_norm_grads(x, w, b, g);
  LayerNormGrads inner;
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    inner = layer_norm_grads(x, w, b, g);
  }
  CHECK(allclose(inner.dw, ref.dw, 1e-12, 1e-12));
  CHECK(allclose(inner.db, ref.db, 1e-12, 1e-12));
  CHECK(allclose(inner.dx, ref.dx, 1e-12, 1e-12));
  // The column sums are plain sums of the rows: check db against that directly.
  CHECK(allclose(ref.db, sum(g.reshape({-1, 64}), 0), 1e-10, 1e-10));
}

TEST_CASE("ScopedParallelGrain forces and restores the parallel branch threshold") {
  const int64_t before = cpu::parallel_grain();
  {
    cpu::ScopedParallelGrain forced(0);
    CHECK(cpu::parallel_grain() == 0);
  }
  CHECK(cpu::parallel_grain() == before);
}

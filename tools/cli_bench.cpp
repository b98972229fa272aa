// attnlab-bench (`tools/attnlab bench [SECTION...] [options]`): the framework against direct
// baselines on the same data, side by side in one run. See --help.
//
// Sections live in the registry kSections below; a section is a function of the shared Context
// that prints its own table and appends rows to ctx.results[section]. To add one (attention, lm…):
// write `void section_x(Context&)`, use compare() for each framework-vs-baseline pair, add a line
// to kSections. Timing method (tools/bench_util.h): warm-up, then --reps interleaved repetitions
// with alternating order (A B | B A …), each measurement at least --min-time-ms long; tables show
// median per-call times and the median of per-repetition paired ratios.
#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attention/entmax.h"
#include "attention/entmax_attention.h"
#include "attention/flash.h"
#include "attention/graph_entmax.h"
#include "attention/local.h"
#include "attention/routing_attention.h"
#include "attention/sinkformer.h"
#include "attention/sinkhorn_attention.h"
#include "attention/sparsefinder.h"
#include "autograd/grad_mode.h"
#include "core/allocator.h"
#include "core/cpu/blas.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "layers/transformer.h"
#include "optim/adam.h"
#include "tools/bench_util.h"
#include "tools/cli_common.h"
#include "tools/pytorch_baseline.h"

namespace attnlab {
namespace {

using bench::fmt;
using nlohmann::json;

struct Options {
  std::vector<std::string> sections;  // empty: all
  int64_t reps = -1, warmup = -1;     // -1: default for the mode
  double min_time_ms = -1;
  bool quick = false;
  int64_t threads = 0;      // 0: leave OpenMP / OpenBLAS defaults
  int64_t max_n = 0;        // attention, entmax, sinkformer, routing: largest n (0: the section's default)
  int64_t torch_max_n = 0;  // sinkformer, routing: largest n run in PyTorch (0: 2048; routing 16384)
  std::string json_path;
};

struct Context {
  Options opt;
  bench::TimingConfig timing;
  json results = json::object();  // section name -> array of rows
  uint64_t seed = 20240601;
};

struct Section {
  const char* name;
  const char* summary;
  void (*run)(Context&);
};

// ---- shared pieces ---------------------------------------------------------------------------

struct Comparison {
  bench::Measurement direct, framework;
  double ratio = 0;  // direct time / attnlab time, median of paired repetitions (> 1: attnlab faster)
};

Comparison compare(const Context& ctx, std::function<void()> direct, std::function<void()> framework) {
  auto ms = bench::run_interleaved(ctx.timing, {{"direct", std::move(direct)}, {"attnlab", std::move(framework)}});
  return {ms[0], ms[1], bench::paired_ratio(ms[0], ms[1])};
}

json measurement_json(const bench::Measurement& m) {
  return {{"median_ms", m.median_ms},
          {"min_ms", m.min_ms},
          {"per_rep_ms", m.per_rep_ms},
          {"calls_per_rep", m.calls_per_rep},
          {"minor_faults_per_call", m.minor_faults_per_call},
          {"allocs_per_call", m.allocs_per_call},
          {"fresh_allocations", m.fresh_allocations},
          {"cache_hits", m.cache_hits}};
}

json comparison_json(const Comparison& c) {
  return {{"direct", measurement_json(c.direct)},
          {"attnlab", measurement_json(c.framework)},
          {"ratio_direct_over_attnlab", c.ratio},
          {"ratio_of_medians", c.direct.median_ms / c.framework.median_ms}};
}

std::string shape_text(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  r += ']';
  return r;
}

Tensor random_tensor(const Context& ctx, const Shape& s, uint64_t stream) {
  Generator g(ctx.seed, stream);
  return randn(s, DType::f32, &g);
}

double max_abs_diff(const Tensor& t, const bench::Buffer<float>& b) {
  Tensor c = t.contiguous();
  return bench::max_abs_diff(c.data<float>(), b.data(), c.numel());
}

void print_allocator_delta(const AllocatorStats& before) {
  AllocatorStats now = cpu_allocator::stats();
  std::printf("allocator over the section: %llu fresh allocations, %llu cache hits\n",
              (unsigned long long)(now.fresh_allocations - before.fresh_allocations),
              (unsigned long long)(now.cache_hits - before.cache_hits));
}

// ---- matmul ----------------------------------------------------------------------------------

void section_matmul(Context& ctx) {
  std::printf("\n== matmul: attnlab::matmul (output allocated per call) vs cblas_sgemm into a preallocated buffer\n");
  std::printf("   ratio = direct time / attnlab time (median of paired reps); target >= 0.90 at n >= 512\n\n");
  const AllocatorStats stats0 = cpu_allocator::stats();
  bench::Table table({{"case", 10, true},
                      {"shape", 24, true},
                      {"direct ms", 9},
                      {"attnlab ms", 10},
                      {"direct GF/s", 11},
                      {"attnlab GF/s", 12},
                      {"ratio", 6},
                      {"target", 6},
                      {"max|diff|", 9},
                      {"alloc/call", 10},
                      {"pf/call", 7}});
  table.header();
  json rows = json::array();
  auto report = [&](const std::string& name, const std::string& shape, int64_t n_for_target, double flops, double diff,
                    const Comparison& c) {
    const char* target = n_for_target >= 512 ? (c.ratio >= 0.9 ? "ok" : "LOW") : "-";
    table.row({name, shape, fmt("%.3f", c.direct.median_ms), fmt("%.3f", c.framework.median_ms),
               fmt("%.1f", flops / c.direct.median_ms * 1e-6), fmt("%.1f", flops / c.framework.median_ms * 1e-6),
               fmt("%.3f", c.ratio), target, fmt("%.1e", diff), fmt("%.2f", c.framework.allocs_per_call),
               fmt("%.2f", c.framework.minor_faults_per_call)});
    json r = comparison_json(c);
    r["case"] = name;
    r["shape"] = shape;
    r["flops"] = flops;
    r["direct_gflops"] = flops / c.direct.median_ms * 1e-6;
    r["attnlab_gflops"] = flops / c.framework.median_ms * 1e-6;
    r["max_abs_diff"] = diff;
    rows.push_back(r);
  };

  const std::vector<int64_t> sizes =
      ctx.opt.quick ? std::vector<int64_t>{128, 256} : std::vector<int64_t>{256, 512, 1024, 2048};
  uint64_t stream = 0;
  for (int64_t n : sizes) {
    Tensor a = random_tensor(ctx, {n, n}, stream++), b = random_tensor(ctx, {n, n}, stream++);
    bench::Buffer<float> c(size_t(n * n));
    const float *pa = a.data<float>(), *pb = b.data<float>();
    const int in = int(n);
    auto direct = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in, in, 1.0f, pa, in, pb, in, 0.0f, c.data(), in);
    };
    auto framework = [&] { Tensor out = matmul(a, b); };
    direct();
    double diff = max_abs_diff(matmul(a, b), c);
    report("square", fmt("[%lld,%lld]@[%lld,%lld]", (long long)n, (long long)n, (long long)n, (long long)n), n,
           2.0 * double(n) * double(n) * double(n), diff, compare(ctx, direct, framework));
  }

  {  // a.t() @ b: the transposed view must reach BLAS as a flag (no copy: 1 allocation per call).
    const int64_t n = ctx.opt.quick ? 256 : 1024;
    Tensor at = random_tensor(ctx, {n, n}, stream++), b = random_tensor(ctx, {n, n}, stream++);
    Tensor a = at.t();
    bench::Buffer<float> c(size_t(n * n));
    const float *pat = at.data<float>(), *pb = b.data<float>();
    const int in = int(n);
    auto direct = [&] {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, in, in, 1.0f, pat, in, pb, in, 0.0f, c.data(), in);
    };
    auto framework = [&] { Tensor out = matmul(a, b); };
    direct();
    double diff = max_abs_diff(matmul(a, b), c);
    report("a.t()@b", fmt("[%lld,%lld]^T@[%lld,%lld]", (long long)n, (long long)n, (long long)n, (long long)n), n,
           2.0 * double(n) * double(n) * double(n), diff, compare(ctx, direct, framework));
  }

  {  // batched [B, M, K] @ [B, K, N] vs a loop of B sgemm calls.
    const int64_t B = 8, M = 256, K = 64, N = 256;
    Tensor a = random_tensor(ctx, {B, M, K}, stream++), b = random_tensor(ctx, {B, K, N}, stream++);
    bench::Buffer<float> c(size_t(B * M * N));
    const float *pa = a.data<float>(), *pb = b.data<float>();
    auto direct = [&] {
      for (int64_t i = 0; i < B; ++i)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(M), int(N), int(K), 1.0f, pa + i * M * K, int(K),
                    pb + i * K * N, int(N), 0.0f, c.data() + i * M * N, int(N));
    };
    auto framework = [&] { Tensor out = matmul(a, b); };
    direct();
    double diff = max_abs_diff(matmul(a, b), c);
    report("batched", "[8,256,64]@[8,64,256]", 0, 2.0 * double(B * M * N * K), diff, compare(ctx, direct, framework));
  }
  print_allocator_delta(stats0);
  ctx.results["matmul"] = rows;
}

// ---- ops -------------------------------------------------------------------------------------
// Direct baselines: plain OpenMP loops over raw buffers, writing into preallocated memory.

void direct_add(const float* x, const float* y, float* o, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}

void direct_exp(const float* x, float* o, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) o[i] = std::exp(x[i]);
}

void direct_add_row(const float* x, const float* row, float* o, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* orow = o + r * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) orow[j] = xr[j] + row[j];
  }
}

void direct_sum_last(const float* x, float* o, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < cols; ++j) acc += double(xr[j]);
    o[r] = float(acc);
  }
}

// Each thread owns a band of columns and walks all rows through it (row-contiguous reads).
void direct_sum_first(const float* x, float* o, int64_t rows, int64_t cols) {
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t c0 = cols * t / nt, c1 = cols * (t + 1) / nt, w = c1 - c0;
    std::vector<double> acc(size_t(w), 0.0);
    double* pacc = acc.data();
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * cols + c0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) pacc[j] += double(xr[j]);
    }
    for (int64_t j = 0; j < w; ++j) o[c0 + j] = float(pacc[j]);
  }
}

void direct_softmax_last(const float* x, float* o, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* orow = o + r * cols;
    float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < cols; ++j) m = std::max(m, xr[j]);
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) {
      float e = std::exp(xr[j] - m);
      orow[j] = e;
      s += double(e);
    }
    const float inv = float(1.0 / s);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) orow[j] *= inv;
  }
}

void section_ops(Context& ctx) {
  std::printf("\n== ops: attnlab ops (output allocated per call) vs plain OpenMP loops into preallocated buffers\n");
  std::printf(
      "   GB/s = nominal bytes (inputs read once + output written once) / time; ratio = direct / attnlab time\n\n");
  const AllocatorStats stats0 = cpu_allocator::stats();
  bench::Table table({{"op", 16, true},
                      {"shape", 22, true},
                      {"direct ms", 9},
                      {"attnlab ms", 10},
                      {"direct GB/s", 11},
                      {"attnlab GB/s", 12},
                      {"ratio", 6},
                      {"max|diff|", 9},
                      {"alloc/call", 10},
                      {"pf/call", 7}});
  table.header();
  json rows = json::array();
  auto report = [&](const std::string& name, const std::string& shape, double bytes, double diff, const Comparison& c) {
    table.row({name, shape, fmt("%.3f", c.direct.median_ms), fmt("%.3f", c.framework.median_ms),
               fmt("%.2f", bytes / c.direct.median_ms * 1e-6), fmt("%.2f", bytes / c.framework.median_ms * 1e-6),
               fmt("%.3f", c.ratio), fmt("%.1e", diff), fmt("%.2f", c.framework.allocs_per_call),
               fmt("%.2f", c.framework.minor_faults_per_call)});
    json r = comparison_json(c);
    r["op"] = name;
    r["shape"] = shape;
    r["bytes"] = bytes;
    r["direct_gbps"] = bytes / c.direct.median_ms * 1e-6;
    r["attnlab_gbps"] = bytes / c.framework.median_ms * 1e-6;
    r["max_abs_diff"] = diff;
    rows.push_back(r);
  };

  const int64_t N = ctx.opt.quick ? (int64_t(1) << 20) : (int64_t(16) << 20);
  const int64_t R = ctx.opt.quick ? 1024 : 4096, C = R;
  const double f = sizeof(float);
  uint64_t stream = 100;

  {
    Tensor x = random_tensor(ctx, {N}, stream++), y = random_tensor(ctx, {N}, stream++);
    bench::Buffer<float> o{size_t(N)};
    const float *px = x.data<float>(), *py = y.data<float>();
    auto direct = [&] { direct_add(px, py, o.data(), N); };
    auto framework = [&] { Tensor out = add(x, y); };
    direct();
    double diff = max_abs_diff(add(x, y), o);
    report("add", shape_text({N}) + "+" + shape_text({N}), 3 * f * double(N), diff, compare(ctx, direct, framework));

    auto direct_e = [&] { direct_exp(px, o.data(), N); };
    auto framework_e = [&] { Tensor out = exp(x); };
    direct_e();
    diff = max_abs_diff(exp(x), o);
    report("exp", shape_text({N}), 2 * f * double(N), diff, compare(ctx, direct_e, framework_e));
  }
  {
    Tensor x = random_tensor(ctx, {R, C}, stream++), v = random_tensor(ctx, {C}, stream++);
    bench::Buffer<float> o(size_t(R * C)), red(size_t(std::max(R, C)));
    const float *px = x.data<float>(), *pv = v.data<float>();
    const double nx = double(R * C);

    auto d_badd = [&] { direct_add_row(px, pv, o.data(), R, C); };
    auto f_badd = [&] { Tensor out = add(x, v); };
    d_badd();
    double diff = max_abs_diff(add(x, v), o);
    report("broadcast add", shape_text({R, C}) + "+" + shape_text({C}), f * (2 * nx + double(C)), diff,
           compare(ctx, d_badd, f_badd));

    auto d_sum1 = [&] { direct_sum_last(px, red.data(), R, C); };
    auto f_sum1 = [&] { Tensor out = sum(x, -1); };
    d_sum1();
    diff = max_abs_diff(sum(x, -1), red);
    report("sum(dim=-1)", shape_text({R, C}), f * (nx + double(R)), diff, compare(ctx, d_sum1, f_sum1));

    auto d_sum0 = [&] { direct_sum_first(px, red.data(), R, C); };
    auto f_sum0 = [&] { Tensor out = sum(x, 0); };
    d_sum0();
    diff = max_abs_diff(sum(x, 0), red);
    report("sum(dim=0)", shape_text({R, C}), f * (nx + double(C)), diff, compare(ctx, d_sum0, f_sum0));

    auto d_sm = [&] { direct_softmax_last(px, o.data(), R, C); };
    auto f_sm = [&] { Tensor out = softmax(x, -1); };
    d_sm();
    diff = max_abs_diff(softmax(x, -1), o);
    report("softmax(dim=-1)", shape_text({R, C}), 2 * f * nx, diff, compare(ctx, d_sm, f_sm));
  }
  print_allocator_delta(stats0);
  ctx.results["ops"] = rows;
}

// ---- lm: training tokens/s against PyTorch ------------------------------------------------------

// One training step of the causal LM of ../shared/baselines/lm_bench.py (pre-LN, GELU, FFN 4d,
// learned positions, untied head without bias, cross-entropy, Adam lr 3e-4) on random byte tokens.
void section_lm(Context& ctx) {
  struct Shape4 {
    int64_t layers, d, heads, seq, batch;
  };
  std::vector<Shape4> configs = ctx.opt.quick ? std::vector<Shape4>{{2, 64, 2, 64, 4}}
                                              : std::vector<Shape4>{{2, 128, 4, 256, 16}, {4, 256, 4, 512, 8}};
  std::printf(
      "\n== lm: causal LM training step (fwd + bwd + Adam), tokens/s; PyTorch = shared/baselines/lm_bench.py\n");
  std::printf(
      "   interleaved: attnlab, PyTorch, attnlab, PyTorch (each a median over its steps); ratio = attnlab / "
      "PyTorch\n\n");
  std::printf("%-22s %12s %12s %12s %12s %8s\n", "config", "attnlab ms", "attnlab tok/s", "torch ms", "torch tok/s",
              "ratio");
  json rows = json::array();
  const int steps = ctx.opt.quick ? 2 : 6;
  for (const Shape4& c : configs) {
    ModelConfig mc;
    mc.vocab_size = 256;
    mc.d_model = c.d;
    mc.n_layers = c.layers;
    mc.n_heads = c.heads;
    mc.d_ff = 4 * c.d;
    mc.max_len = c.seq;
    CausalLM model(mc);
    AdamOptions ao;
    ao.lr = 3e-4;
    Adam opt(model.parameters(), ao);
    Generator g(ctx.seed, 5);
    Tensor x = randint(0, 256, {c.batch, c.seq + 1}, &g);
    Tensor inp = x.narrow(1, 0, c.seq).contiguous(), tgt = x.narrow(1, 1, c.seq).contiguous();
    auto ours = [&] {
      std::vector<double> ts;
      for (int i = 0; i < steps + 1; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        opt.zero_grad();
        Tensor loss = model.loss(inp, tgt);
        loss.backward();
        opt.step();
        (void)loss.item<float>();
        if (i > 0)
          ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      return bench::median(ts);
    };
    char args[256];
    std::snprintf(args, sizeof args,
                  "--layers %lld --d %lld --heads %lld --seq %lld --batch %lld --steps %d --threads %d",
                  (long long)c.layers, (long long)c.d, (long long)c.heads, (long long)c.seq, (long long)c.batch, steps,
                  ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads());
    std::vector<double> a_ms, t_ms;
    std::string why;
    for (int rep = 0; rep < 2; ++rep) {
      a_ms.push_back(ours());
      if (auto j = run_pytorch_baseline("lm_bench.py", args, &why))
        t_ms.push_back((*j)["step_ms_median"].get<double>());
    }
    const double tokens = double(c.batch * c.seq);
    double am = bench::median(a_ms), tm = t_ms.empty() ? NAN : bench::median(t_ms);
    char name[64];
    std::snprintf(name, sizeof name, "%lldx%lld s%lld b%lld", (long long)c.layers, (long long)c.d, (long long)c.seq,
                  (long long)c.batch);
    std::printf("%-22s %12.1f %12.0f %12.1f %12.0f %8.2f\n", name, am, tokens / am * 1e3, tm, tokens / tm * 1e3,
                tm / am);
    if (t_ms.empty()) std::printf("   (PyTorch column empty: %s)\n", why.c_str());
    rows.push_back({{"config", name},
                    {"attnlab_step_ms", a_ms},
                    {"pytorch_step_ms", t_ms},
                    {"attnlab_tokens_per_s", tokens / am * 1e3},
                    {"pytorch_tokens_per_s", tokens / tm * 1e3},
                    {"ratio", tm / am}});
  }
  ctx.results["lm"] = rows;
}

// ---- attention: fused softmax and block-local attention against PyTorch ----------------------------

// Median time of fn over at least 3 calls and min_ms (at most 20 calls), after one warm-up call.
double median_call_ms(const std::function<void()>& fn, double min_ms) {
  fn();
  std::vector<double> ts;
  const double start = bench::now_ms();
  while (ts.size() < 20 && (ts.size() < 3 || bench::now_ms() - start < min_ms)) {
    const double t0 = bench::now_ms();
    fn();
    ts.push_back(bench::now_ms() - t0);
  }
  return bench::median(ts);
}

// Wall time of one call of fn.
double timed_ms(const std::function<void()>& fn) {
  const double t0 = bench::now_ms();
  fn();
  return bench::now_ms() - t0;
}

// Peak bytes the caching allocator held during one call of fn, above what was in use before it.
double peak_extra_mib(const std::function<void()>& fn) {
  const size_t before = cpu_allocator::stats().bytes_in_use;
  cpu_allocator::reset_peak();
  fn();
  return double(cpu_allocator::stats().peak_bytes_in_use - before) / 1048576.0;
}

// q, k, v [1, 8, n, 64] f32, non-causal (as shared/baselines/attn_bench.py): vanilla = fused softmax
// attention (attnlab flash_attention; PyTorch materialises n×n), block_local = blocks of 64.
void section_attention(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64, block = 64;
  std::vector<int64_t> sizes;
  for (int64_t n : ctx.opt.quick ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{512, 1024, 2048, 4096, 8192})
    if (n <= (ctx.opt.max_n > 0 ? ctx.opt.max_n : 8192)) sizes.push_back(n);
  const int rounds = ctx.opt.quick ? 1 : 2;
  const double min_fwd_ms = ctx.opt.quick ? 100 : 1000, min_fb_ms = ctx.opt.quick ? 200 : 1500;
  const int threads = ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads();
  std::printf(
      "\n== attention: q, k, v [%lld, %lld, n, %lld] f32, non-causal; attnlab fused kernels vs PyTorch "
      "(shared/baselines/attn_bench.py, %d threads)\n",
      (long long)B, (long long)H, (long long)d, threads);
  std::printf(
      "   per size %d round(s) interleaved (attnlab, PyTorch, ...); times are medians, ratio = PyTorch / "
      "attnlab (median of paired rounds)\n"
      "   peak = extra memory of one call beyond the inputs, outputs and gradients included (attnlab: caching\n"
      "   allocator peak; PyTorch: resident-set high-water mark); targets: vanilla fwd+bwd >= 4x @2K, "
      "block_local >= 2x @8K\n\n",
      rounds);
  bench::Table table({{"impl", 11, true},
                      {"n", 5},
                      {"fwd ms", 8},
                      {"torch fwd", 9},
                      {"ratio", 6},
                      {"f+b ms", 8},
                      {"torch f+b", 9},
                      {"ratio", 6},
                      {"target", 6},
                      {"GF/s f+b", 8},
                      {"peak MiB f/f+b", 14},
                      {"torch MiB f/f+b", 15},
                      {"KiB/token", 9},
                      {"max|diff|", 9}});
  table.header();
  json rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  for (const char* impl : {"vanilla", "block_local"}) {
    const bool local = std::string(impl) == "block_local";
    for (int64_t n : sizes) {
      Generator gen(ctx.seed, 900 + uint64_t(n));
      Tensor q = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
      Tensor k = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
      Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
      Tensor g = randn({B, H, n, d}, DType::f32, &gen);
      const double scale = 1.0 / std::sqrt(double(d));
      auto attend = [&] {
        return local ? local_attention(q, k, v, {}, block, scale) : flash_attention(q, k, v, {}, scale);
      };
      auto fwd = [&] {
        NoGradGuard ng;
        Tensor out = attend();
      };
      auto fwdbwd = [&] {
        q.zero_grad();
        k.zero_grad();
        v.zero_grad();
        attend().backward(g);
      };
      // Agreement with the composite reference (n×n materialised: small n only).
      std::string diff = "-";
      if (n <= 1024) {
        NoGradGuard ng;
        Tensor ref = local ? local_attention_composite(q, k, v, {}, block, scale)
                           : softmax_attention_composite(q, k, v, {}, scale);
        Tensor ours = attend().detach();
        diff = fmt("%.1e",
                   bench::max_abs_diff(ours.contiguous().data<float>(), ref.contiguous().data<float>(), ours.numel()));
      }
      const double peak_f = peak_extra_mib(fwd), peak_fb = peak_extra_mib(fwdbwd);
      std::vector<double> a_f, a_fb, t_f, t_fb, r_f, r_fb;
      double t_peak_f = NAN, t_peak_fb = NAN;
      char args[160];
      std::snprintf(args, sizeof args, "%s %lld --b %lld --h %lld --d %lld --bs %lld --threads %d", impl, (long long)n,
                    (long long)B, (long long)H, (long long)d, (long long)block, threads);
      for (int r = 0; r < rounds; ++r) {
        a_f.push_back(median_call_ms(fwd, min_fwd_ms));
        a_fb.push_back(median_call_ms(fwdbwd, min_fb_ms));
        if (!torch_ok) continue;
        if (auto j = run_pytorch_baseline("attn_bench.py", args, &why_missing)) {
          t_f.push_back((*j)["fwd_ms"].get<double>());
          t_fb.push_back((*j)["fwdbwd_ms"].get<double>());
          t_peak_f = (*j)["peak_fwd_nograd_MiB"].get<double>();
          t_peak_fb = (*j)["peak_fwdbwd_MiB"].get<double>();
          r_f.push_back(t_f.back() / a_f.back());
          r_fb.push_back(t_fb.back() / a_fb.back());
        } else {
          torch_ok = false;  // say why once, then report attnlab alone
          std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
        }
      }
      const double af = bench::median(a_f), afb = bench::median(a_fb);
      const double tf = t_f.empty() ? NAN : bench::median(t_f), tfb = t_fb.empty() ? NAN : bench::median(t_fb);
      const double rf = r_f.empty() ? NAN : bench::median(r_f), rfb = r_fb.empty() ? NAN : bench::median(r_fb);
      const bool target_size = local ? n == 8192 : n == 2048;
      const double target = local ? 2.0 : 4.0;
      const char* verdict = !target_size || std::isnan(rfb) ? "-" : (rfb >= target ? "ok" : "LOW");
      // Matmul FLOPs of one fwd+bwd with the backward's recomputation: 7 products of 2·n·w·d per head.
      const double width = local ? double(std::min(block, n)) : double(n);
      const double flops = 7.0 * 2.0 * double(B * H) * double(n) * width * double(d);
      table.row({impl, std::to_string(n), fmt("%.2f", af), fmt("%.2f", tf), fmt("%.2f", rf), fmt("%.2f", afb),
                 fmt("%.2f", tfb), fmt("%.2f", rfb), verdict, fmt("%.0f", flops / afb * 1e-6),
                 fmt("%.1f/%.1f", peak_f, peak_fb), fmt("%.0f/%.0f", t_peak_f, t_peak_fb),
                 fmt("%.1f", peak_fb * 1024.0 / double(n)), diff});
      rows.push_back({{"impl", impl},
                      {"n", n},
                      {"attnlab_fwd_ms", a_f},
                      {"attnlab_fwdbwd_ms", a_fb},
                      {"pytorch_fwd_ms", t_f},
                      {"pytorch_fwdbwd_ms", t_fb},
                      {"ratio_fwd", rf},
                      {"ratio_fwdbwd", rfb},
                      {"target_ratio", target_size ? json(target) : json(nullptr)},
                      {"attnlab_fwdbwd_gflops", flops / afb * 1e-6},
                      {"attnlab_peak_fwd_MiB", peak_f},
                      {"attnlab_peak_fwdbwd_MiB", peak_fb},
                      {"pytorch_peak_fwd_MiB", t_peak_f},
                      {"pytorch_peak_fwdbwd_MiB", t_peak_fb},
                      {"max_abs_diff_vs_composite", diff}});
    }
  }
  ctx.results["attention"] = rows;
}

// ---- sinkformer: streaming Sinkhorn attention against PyTorch's unrolled autograd -----------------

// q, k, v [1, 8, n, 64] f32, 8 Sinkhorn iterations as attn_bench.py counts them: a row normalisation,
// then 8 (column, row) pairs = 17 normalisations. PyTorch keeps ~2 n×n tensors per normalisation for
// its autograd (10.8 GiB and ~70 s per call at 4K), so it runs up to --torch-max-n (default 2048).
// "x softmax" = fwd+bwd time over attnlab's fused softmax (flash_attention) at the same n: each
// normalisation is one streaming pass over S, so about the number of passes is the floor.
void section_sinkformer(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64, sinkhorn_iters = 8, normalisations = 2 * sinkhorn_iters + 1;
  std::vector<int64_t> sizes;
  for (int64_t n : ctx.opt.quick ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{1024, 2048, 4096, 8192, 16384})
    if (n <= (ctx.opt.max_n ? ctx.opt.max_n : 16384)) sizes.push_back(n);
  const int64_t torch_max_n = ctx.opt.torch_max_n ? ctx.opt.torch_max_n : (ctx.opt.quick ? 512 : 2048);
  const double min_ms = ctx.opt.quick ? 100 : 1000;
  const int threads = ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads();
  std::printf(
      "\n== sinkformer: q, k, v [%lld, %lld, n, %lld] f32, %lld Sinkhorn iterations (%lld normalisations); "
      "attnlab fused vs PyTorch unrolled autograd (attn_bench.py sinkformer, %d threads, n <= %lld)\n"
      "   ratio = PyTorch / attnlab fwd+bwd; x softmax = attnlab fwd+bwd / attnlab fused softmax fwd+bwd; "
      "peak = extra memory beyond inputs, outputs, gradients;\n   target: >= 10x PyTorch and <= 64 MiB extra at 2K\n\n",
      (long long)B, (long long)H, (long long)d, (long long)sinkhorn_iters, (long long)normalisations, threads,
      (long long)torch_max_n);
  bench::Table table({{"backward", 9, true},
                      {"n", 6},
                      {"fwd ms", 9},
                      {"f+b ms", 9},
                      {"torch f+b", 9},
                      {"ratio", 6},
                      {"softmax f+b", 11},
                      {"x softmax", 9},
                      {"target", 6},
                      {"peak MiB f/f+b", 14},
                      {"torch MiB", 9},
                      {"CG it", 5},
                      {"max|diff|", 9}});
  table.header();
  json rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  for (int64_t n : sizes) {
    Generator gen(ctx.seed, 1900 + uint64_t(n));
    Tensor q = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor k = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor g = randn({B, H, n, d}, DType::f32, &gen);
    const double scale = 1.0 / std::sqrt(double(d));
    auto fwdbwd_of = [&](const std::function<Tensor()>& attend) {
      return [&, attend] {
        q.zero_grad();
        k.zero_grad();
        v.zero_grad();
        attend().backward(g);
      };
    };
    // Calls take seconds at 8K+: there the first call of each kind is the warm-up, the peak-memory
    // measurement and the timing. Where PyTorch runs, rounds alternate attnlab and PyTorch and the
    // ratio is the median of the paired ones (the host is shared and noisy).
    const bool long_calls = n >= 8192, with_torch = torch_ok && n <= torch_max_n;
    const int rounds = with_torch && !ctx.opt.quick ? 2 : 1;
    struct Variant {
      const char* name;
      SinkhornOptions o;
      std::function<Tensor()> attend;
      double peak_f = 0, peak_fb = 0, af = 0;
      int64_t cg = 0;
      std::string diff = "-";
      std::vector<double> afb, ratio;
    };
    std::vector<Variant> variants;
    for (SinkhornBackward bw : {SinkhornBackward::unrolled, SinkhornBackward::implicit}) {
      Variant va;
      va.name = bw == SinkhornBackward::unrolled ? "unrolled" : "implicit";
      va.o.iterations = normalisations;
      va.o.backward = bw;
      va.o.tol = 1e-4;  // f32: the products' rounding sets the floor
      va.o.max_cg_iter = 100;
      variants.push_back(va);
    }
    std::vector<double> softmax_fb, t_fb;
    double t_peak = NAN;
    fwdbwd_of([&] { return flash_attention(q, k, v, {}, scale); })();  // the gradients exist before any peak
    for (Variant& va : variants) {
      va.attend = [&, o = va.o] { return sinkformer_attention(q, k, v, {}, scale, o); };
      auto fwd = [&] {
        NoGradGuard ng;
        Tensor out = va.attend();
      };
      if (n <= 1024) {
        NoGradGuard ng;
        Tensor ref = sinkformer_attention_composite(q, k, v, {}, scale, normalisations);
        Tensor ours = va.attend().detach();
        va.diff = fmt(
            "%.1e", bench::max_abs_diff(ours.contiguous().data<float>(), ref.contiguous().data<float>(), ours.numel()));
      }
      const double first_f = timed_ms([&] { va.peak_f = peak_extra_mib(fwd); });
      const double first_fb = timed_ms([&] { va.peak_fb = peak_extra_mib(fwdbwd_of(va.attend)); });
      va.cg = va.o.backward == SinkhornBackward::implicit ? sinkformer::last_backward_stats().cg_iterations : 0;
      va.af = long_calls ? first_f : median_call_ms(fwd, min_ms);
      if (long_calls) va.afb.push_back(first_fb);
    }
    for (int r = 0; r < rounds; ++r) {
      softmax_fb.push_back(
          median_call_ms(fwdbwd_of([&] { return flash_attention(q, k, v, {}, scale); }), long_calls ? 0 : min_ms));
      if (!long_calls)
        for (Variant& va : variants) va.afb.push_back(median_call_ms(fwdbwd_of(va.attend), min_ms));
      if (!with_torch || !torch_ok) continue;
      char args[160];
      std::snprintf(args, sizeof args, "sinkformer %lld --b %lld --h %lld --d %lld --iters %lld --threads %d",
                    (long long)n, (long long)B, (long long)H, (long long)d, (long long)sinkhorn_iters, threads);
      if (auto j = run_pytorch_baseline("attn_bench.py", args, &why_missing)) {
        t_fb.push_back((*j)["fwdbwd_ms"].get<double>());
        t_peak = (*j)["peak_fwdbwd_MiB"].get<double>();
        for (Variant& va : variants) va.ratio.push_back(t_fb.back() / va.afb.back());
      } else {
        torch_ok = false;
        std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
      }
    }
    const double smfb = bench::median(softmax_fb), tfb = t_fb.empty() ? NAN : bench::median(t_fb);
    for (const Variant& va : variants) {
      const double afb = bench::median(va.afb), ratio = va.ratio.empty() ? NAN : bench::median(va.ratio);
      const char* verdict = n != 2048 || std::isnan(ratio) ? "-" : (ratio >= 10 && va.peak_fb <= 64 ? "ok" : "LOW");
      table.row({va.name, std::to_string(n), fmt("%.1f", va.af), fmt("%.1f", afb), fmt("%.0f", tfb), fmt("%.1f", ratio),
                 fmt("%.1f", smfb), fmt("%.1f", afb / smfb), verdict, fmt("%.1f/%.1f", va.peak_f, va.peak_fb),
                 fmt("%.0f", t_peak), va.o.backward == SinkhornBackward::implicit ? std::to_string(va.cg) : "-",
                 va.diff});
      rows.push_back({{"backward", va.name},
                      {"n", n},
                      {"normalisations", normalisations},
                      {"attnlab_fwd_ms", va.af},
                      {"attnlab_fwdbwd_ms", va.afb},
                      {"pytorch_fwdbwd_ms", t_fb},
                      {"ratio_fwdbwd", std::isnan(ratio) ? json(nullptr) : json(ratio)},
                      {"softmax_fwdbwd_ms", softmax_fb},
                      {"over_softmax", afb / smfb},
                      {"attnlab_peak_fwd_MiB", va.peak_f},
                      {"attnlab_peak_fwdbwd_MiB", va.peak_fb},
                      {"pytorch_peak_fwdbwd_MiB", std::isnan(t_peak) ? json(nullptr) : json(t_peak)},
                      {"cg_iterations", va.cg},
                      {"max_abs_diff_vs_composite", va.diff}});
    }
  }
  ctx.results["sinkformer"] = rows;
}

// ---- sinkhorn: Sparse Sinkhorn attention against PyTorch ------------------------------------------

// q, k, v [1, 8, n, 64] f32, blocks of 64, each query block attending to its own block and its softly
// sorted block (encoder form, as attn_bench.py sparse_sinkhorn). attnlab: SortNet on summed keys, 8
// Sinkhorn iterations (16 normalisations), temperature 0.75, no noise; PyTorch: mean q/k summaries,
// a row step then 8 (column, row) pairs (17 normalisations). Both are linear in n: "us/tok" should
// stay flat from 2K to 64K.
void section_sinkhorn(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64, bs = 64, iters = 8;
  std::vector<int64_t> sizes;
  for (int64_t n :
       ctx.opt.quick ? std::vector<int64_t>{512, 1024} : std::vector<int64_t>{2048, 4096, 8192, 16384, 32768, 65536})
    if (n <= (ctx.opt.max_n ? ctx.opt.max_n : 65536)) sizes.push_back(n);
  const double min_ms = ctx.opt.quick ? 100 : 1000;
  const int threads = ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads();
  std::printf(
      "\n== sinkhorn: Sparse Sinkhorn attention, q, k, v [%lld, %lld, n, %lld] f32, blocks of %lld, own + sorted "
      "block, %lld iterations; attnlab vs PyTorch (attn_bench.py sparse_sinkhorn, %d threads)\n"
      "   ratio = PyTorch / attnlab fwd+bwd; us/tok = attnlab fwd+bwd per position; peak = extra memory beyond "
      "inputs, outputs, gradients;\n   target: >= 2x PyTorch at 8K, us/tok flat from 2K to 64K\n\n",
      (long long)B, (long long)H, (long long)d, (long long)bs, (long long)iters, threads);
  bench::Table table({{"n", 6},
                      {"fwd ms", 9},
                      {"f+b ms", 9},
                      {"us/tok", 7},
                      {"torch f+b", 9},
                      {"ratio", 6},
                      {"target", 6},
                      {"peak MiB f/f+b", 14},
                      {"torch MiB", 9}});
  table.header();
  json rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  for (int64_t n : sizes) {
    Generator gen(ctx.seed, 2100 + uint64_t(n));
    const int64_t nb = n / bs;
    Tensor q = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor k = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor w = (randn({1, H, d, nb}, DType::f32, &gen) * (0.125 / double(bs))).set_requires_grad(true);
    Tensor b = zeros({1, H, 1, nb}, DType::f32).set_requires_grad(true);
    Tensor g = randn({B, H, n, d}, DType::f32, &gen);
    SparseSinkhornOptions o;
    o.block = bs;
    o.max_blocks = nb;
    o.iterations = iters;
    o.scale = 1.0 / std::sqrt(double(d));
    auto attend = [&] { return sparse_sinkhorn_attention(q, k, v, {}, {w, b}, o, nullptr, false); };
    auto fwd = [&] {
      NoGradGuard ng;
      Tensor out = attend();
    };
    auto fwdbwd = [&] {
      for (Tensor* t : {&q, &k, &v, &w, &b}) t->zero_grad();
      attend().backward(g);
    };
    fwdbwd();  // the gradients exist before any peak
    const bool long_calls = n >= 32768;
    double peak_f = 0, peak_fb = 0;
    const double first_f = timed_ms([&] { peak_f = peak_extra_mib(fwd); });
    const double first_fb = timed_ms([&] { peak_fb = peak_extra_mib(fwdbwd); });
    const double af = long_calls ? first_f : median_call_ms(fwd, min_ms);
    const double afb = long_calls ? first_fb : median_call_ms(fwdbwd, min_ms);
    double tfb = NAN, t_peak = NAN;
    if (torch_ok && !ctx.opt.quick) {
      char args[160];
      std::snprintf(args, sizeof args,
                    "sparse_sinkhorn %lld --b %lld --h %lld --d %lld --bs %lld --iters %lld --threads %d", (long long)n,
                    (long long)B, (long long)H, (long long)d, (long long)bs, (long long)iters, threads);
      if (auto j = run_pytorch_baseline("attn_bench.py", args, &why_missing)) {
        tfb = (*j)["fwdbwd_ms"].get<double>();
        t_peak = (*j)["peak_fwdbwd_MiB"].get<double>();
      } else {
        torch_ok = false;
        std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
      }
    }
    const double ratio = tfb / afb, us_tok = afb * 1e3 / double(n);
    const char* verdict = n != 8192 || std::isnan(ratio) ? "-" : (ratio >= 2 ? "ok" : "LOW");
    table.row({std::to_string(n), fmt("%.1f", af), fmt("%.1f", afb), fmt("%.2f", us_tok), fmt("%.0f", tfb),
               fmt("%.1f", ratio), verdict, fmt("%.1f/%.1f", peak_f, peak_fb), fmt("%.0f", t_peak)});
    rows.push_back({{"n", n},
                    {"attnlab_fwd_ms", af},
                    {"attnlab_fwdbwd_ms", afb},
                    {"attnlab_us_per_token", us_tok},
                    {"pytorch_fwdbwd_ms", std::isnan(tfb) ? json(nullptr) : json(tfb)},
                    {"ratio_fwdbwd", std::isnan(ratio) ? json(nullptr) : json(ratio)},
                    {"attnlab_peak_fwd_MiB", peak_f},
                    {"attnlab_peak_fwdbwd_MiB", peak_fb},
                    {"pytorch_peak_fwdbwd_MiB", std::isnan(t_peak) ? json(nullptr) : json(t_peak)}});
  }
  ctx.results["sinkhorn"] = rows;
}

// ---- entmax: sparsemax, 1.5-entmax and bisection against PyTorch ---------------------------------

void entmax_attention_table(Context& ctx);

// Rows of z = 2·randn (as shared/baselines/sparsemax_bench.py), normalised along the last dim, f32.
// PyTorch sorts every row (sparsemax, 1.5-entmax) or runs 30 bisection steps on the whole row; attnlab
// finds τ from the few entries that can be in the support. Each attnlab row names the PyTorch op it
// is compared with ("-": no counterpart).
void section_entmax(Context& ctx) {
  const int64_t rows = ctx.opt.quick ? 512 : 4096;
  const std::vector<int64_t> sizes =
      ctx.opt.quick ? std::vector<int64_t>{512, 1024} : std::vector<int64_t>{512, 1024, 2048, 4096};
  const int rounds = ctx.opt.quick ? 1 : 2;
  const double min_ms = ctx.opt.quick ? 100 : 600;
  const int threads = ctx.opt.threads > 0 ? ctx.opt.threads : omp_get_max_threads();
  std::printf(
      "\n== entmax: %lld rows x n, f32, z = 2 randn, along the last dim; attnlab ops vs PyTorch "
      "(shared/baselines/sparsemax_bench.py: sort-based with analytic backward; bisection 30 steps), %d "
      "threads\n",
      (long long)rows, threads);
  std::printf(
      "   ns per element (median call); ratio = PyTorch / attnlab (median of %d interleaved round(s)); "
      "target >= 5x for sparsemax, entmax15, bisect; support = mean support size per row\n\n",
      rounds);
  struct Op {
    const char* name;
    const char* torch;  // the op's name in sparsemax_bench.py, or nullptr
    bool target;
    std::function<Tensor(const Tensor&)> fn;
  };
  const std::vector<Op> ops = {
      {"softmax", "softmax", false, [](const Tensor& z) { return softmax(z, -1); }},
      {"sparsemax", "sparsemax_sort", true, [](const Tensor& z) { return sparsemax(z, -1); }},
      {"entmax15", "entmax15_sort", true, [](const Tensor& z) { return entmax15(z, -1); }},
      {"bisect a=1.5", "entmax15_bisect30", true, [](const Tensor& z) { return entmax_bisect(z, 1.5); }},
      {"bisect a=1.25", nullptr, false, [](const Tensor& z) { return entmax_bisect(z, 1.25); }},
  };
  bench::Table table({{"op", 13, true},
                      {"n", 5},
                      {"fwd ns/el", 9},
                      {"torch fwd", 9},
                      {"ratio", 6},
                      {"f+b ns/el", 9},
                      {"torch f+b", 9},
                      {"ratio", 6},
                      {"target", 6},
                      {"support", 7},
                      {"torch supp", 10}});
  table.header();
  json out_rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  for (int64_t n : sizes) {
    Generator gen(ctx.seed, 1300 + uint64_t(n));
    Tensor z = (randn({rows, n}, DType::f32, &gen) * 2.0).set_requires_grad(true);
    Tensor g = randn({rows, n}, DType::f32, &gen);
    const double elems = double(rows) * double(n);
    std::vector<std::vector<double>> a_f(ops.size()), a_fb(ops.size()), t_f(ops.size()), t_fb(ops.size());
    std::vector<double> t_support(ops.size(), NAN);
    char args[128];
    std::snprintf(args, sizeof args, "--rows %lld --ns %lld --threads %d", (long long)rows, (long long)n, threads);
    for (int r = 0; r < rounds; ++r) {
      for (size_t i = 0; i < ops.size(); ++i) {
        const Op& op = ops[i];
        a_f[i].push_back(median_call_ms(
            [&] {
              NoGradGuard ng;
              Tensor p = op.fn(z);
            },
            min_ms));
        a_fb[i].push_back(median_call_ms(
            [&] {
              z.zero_grad();
              op.fn(z).backward(g);
            },
            min_ms));
      }
      if (!torch_ok) continue;
      if (auto lines = run_pytorch_baseline_lines("sparsemax_bench.py", args, &why_missing)) {
        for (size_t i = 0; i < ops.size(); ++i)
          for (const json& j : *lines)
            if (ops[i].torch && j.value("op", "") == ops[i].torch && j.contains("fwdbwd_ms")) {
              t_f[i].push_back(j["fwd_ms"].get<double>());
              t_fb[i].push_back(j["fwdbwd_ms"].get<double>());
              t_support[i] = j.value("mean_support", NAN);
            }
      } else {
        torch_ok = false;  // say why once, then report attnlab alone
        std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      double support = 0;
      {
        NoGradGuard ng;
        Tensor p = op.fn(z);
        support = sum(gt(p, zeros({}, DType::f32)).to(DType::f32)).item<double>() / double(rows);
      }
      auto ratio = [](const std::vector<double>& torch, const std::vector<double>& ours) {
        std::vector<double> r;
        for (size_t k = 0; k < std::min(torch.size(), ours.size()); ++k) r.push_back(torch[k] / ours[k]);
        return r.empty() ? NAN : bench::median(r);
      };
      const double af = bench::median(a_f[i]) * 1e6 / elems, afb = bench::median(a_fb[i]) * 1e6 / elems;
      const double tf = t_f[i].empty() ? NAN : bench::median(t_f[i]) * 1e6 / elems;
      const double tfb = t_fb[i].empty() ? NAN : bench::median(t_fb[i]) * 1e6 / elems;
      const double rf = ratio(t_f[i], a_f[i]), rfb = ratio(t_fb[i], a_fb[i]);
      const char* verdict = !op.target || std::isnan(rf) ? "-" : (std::min(rf, rfb) >= 5.0 ? "ok" : "LOW");
      table.row({op.name, std::to_string(n), fmt("%.2f", af), fmt("%.2f", tf), fmt("%.1f", rf), fmt("%.2f", afb),
                 fmt("%.2f", tfb), fmt("%.1f", rfb), verdict, fmt("%.1f", support), fmt("%.1f", t_support[i])});
      out_rows.push_back({{"op", op.name},
                          {"pytorch_op", op.torch ? json(op.torch) : json(nullptr)},
                          {"rows", rows},
                          {"n", n},
                          {"attnlab_fwd_ms", a_f[i]},
                          {"attnlab_fwdbwd_ms", a_fb[i]},
                          {"pytorch_fwd_ms", t_f[i]},
                          {"pytorch_fwdbwd_ms", t_fb[i]},
                          {"attnlab_fwd_ns_per_elem", af},
                          {"attnlab_fwdbwd_ns_per_elem", afb},
                          {"ratio_fwd", rf},
                          {"ratio_fwdbwd", rfb},
                          {"target_ratio", op.target ? json(5.0) : json(nullptr)},
                          {"attnlab_mean_support", support},
                          {"pytorch_mean_support", t_support[i]}});
    }
  }
  ctx.results["entmax"] = out_rows;
  entmax_attention_table(ctx);
}

// ---- entmax attention: the fused sparse kernel against our fused softmax and PyTorch ---------------

// q, k [1, 8, n, 64] with a positional structure: q_i = c·f(i) + ε, k_j = c·f(j) + ε with sinusoidal
// features f (32 frequencies, periods 4 … 1024), so scores peak near i = j and 1.5-entmax keeps a band
// of keys around the diagonal — the shape of a trained char-LM's local heads, without a trained model.
Tensor peaked(Generator& gen, int64_t B, int64_t H, int64_t n, int64_t d, double c) {
  Tensor x = randn({B, H, n, d}, DType::f32, &gen) * 0.3;
  float* p = x.data<float>();
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t m = 0; m < d / 2; ++m) {
        const double w = 2 * M_PI / (4.0 * std::pow(256.0, double(m) / double(d / 2)));
        p[(bh * n + i) * d + 2 * m] += float(c * std::cos(w * double(i)));
        p[(bh * n + i) * d + 2 * m + 1] += float(c * std::sin(w * double(i)));
      }
  return x;
}

// Forward+backward of 1.5-entmax attention (fused) against our fused softmax attention on the same
// q, k, v, and against attn_bench.py entmax15 (PyTorch: n×n scores, sorted rows) where it fits.
void entmax_attention_table(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64;
  const int64_t max_n = ctx.opt.max_n > 0 ? ctx.opt.max_n : 16384, torch_max_n = 4096;
  std::vector<int64_t> sizes;
  for (int64_t n :
       ctx.opt.quick ? std::vector<int64_t>{512, 1024} : std::vector<int64_t>{1024, 2048, 4096, 8192, 16384})
    if (n <= max_n) sizes.push_back(n);
  const double min_ms = ctx.opt.quick ? 100 : 1000;
  const int threads = ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads();
  std::printf(
      "\n== entmax attention: q, k, v [%lld, %lld, n, %lld] f32, non-causal, 1.5-entmax, fused forward+backward\n"
      "   vs our fused softmax (same inputs) and PyTorch attn_bench.py entmax15 (n×n, sorted; n <= %lld, %d threads)\n"
      "   random: q, k, v randn, scale 1/8; peaked: positional q, k (a band around the diagonal, as local heads)\n"
      "   zero tiles = share of 64×64 tiles with no weight (skipped by the output pass and the backward);\n"
      "   vs softmax = softmax time / entmax time; targets: >= 10x PyTorch @4K random, >= 0.5 @2K random,\n"
      "   > 1 @16K peaked with >= 70%% zero tiles; peak = allocator peak of one fwd+bwd beyond inputs\n\n",
      (long long)B, (long long)H, (long long)d, (long long)torch_max_n, threads);
  bench::Table table({{"input", 7, true},
                      {"n", 5},
                      {"support", 7},
                      {"zero tiles", 10},
                      {"f+b ms", 9},
                      {"softmax ms", 10},
                      {"vs softmax", 10},
                      {"torch ms", 9},
                      {"vs torch", 8},
                      {"target", 6},
                      {"peak MiB", 8},
                      {"KiB/token", 9}});
  table.header();
  json rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  for (const char* input : {"random", "peaked"}) {
    const bool peak = std::string(input) == "peaked";
    for (int64_t n : sizes) {
      Generator gen(ctx.seed, 1700 + uint64_t(n));
      Tensor q = (peak ? peaked(gen, B, H, n, d, 1.0) : randn({B, H, n, d}, DType::f32, &gen)).set_requires_grad(true);
      Tensor k = (peak ? peaked(gen, B, H, n, d, 1.0) : randn({B, H, n, d}, DType::f32, &gen)).set_requires_grad(true);
      Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
      Tensor g = randn({B, H, n, d}, DType::f32, &gen);
      const double scale = 1.0 / std::sqrt(double(d));
      EntmaxAttentionStats st;
      {
        NoGradGuard ng;
        entmax_attention(q, k, v, {}, scale, {1.5, {}}, &st);
      }
      const double support = sum(st.support.to(DType::f64)).item<double>() / double(B * H * n);
      const double zero_tiles = 1.0 - sum(st.tiles.to(DType::f64)).item<double>() / double(st.tiles.numel());
      auto run = [&](bool entmax) {
        return [&, entmax] {
          q.zero_grad();
          k.zero_grad();
          v.zero_grad();
          (entmax ? entmax_attention(q, k, v, {}, scale, {1.5, {}}) : flash_attention(q, k, v, {}, scale)).backward(g);
        };
      };
      const double peak_fb = peak_extra_mib(run(true));
      const double ms = median_call_ms(run(true), min_ms), soft = median_call_ms(run(false), min_ms);
      double torch_ms = NAN;
      if (!peak && torch_ok && n <= torch_max_n) {
        char args[160];
        std::snprintf(args, sizeof args, "entmax15 %lld --b %lld --h %lld --d %lld --threads %d", (long long)n,
                      (long long)B, (long long)H, (long long)d, threads);
        if (auto j = run_pytorch_baseline("attn_bench.py", args, &why_missing)) {
          torch_ms = (*j)["fwdbwd_ms"].get<double>();
        } else {
          torch_ok = false;
          std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
        }
      }
      const double vs_soft = soft / ms, vs_torch = torch_ms / ms;
      std::string verdict = "-";
      if (!peak && n == 4096 && !std::isnan(vs_torch)) verdict = vs_torch >= 10 ? "ok" : "LOW";
      if (!peak && n == 2048) verdict = vs_soft >= 0.5 ? "ok" : "LOW";
      if (peak && n == 16384) verdict = vs_soft > 1 && zero_tiles >= 0.7 ? "ok" : "LOW";
      table.row({input, std::to_string(n), fmt("%.1f", support), fmt("%.1f%%", 100 * zero_tiles), fmt("%.1f", ms),
                 fmt("%.1f", soft), fmt("%.2f", vs_soft), fmt("%.1f", torch_ms), fmt("%.1f", vs_torch), verdict,
                 fmt("%.1f", peak_fb), fmt("%.1f", peak_fb * 1024.0 / double(n))});
      rows.push_back({{"input", input},
                      {"n", n},
                      {"mean_support", support},
                      {"zero_tile_fraction", zero_tiles},
                      {"attnlab_entmax15_fwdbwd_ms", ms},
                      {"attnlab_softmax_fwdbwd_ms", soft},
                      {"softmax_over_entmax", vs_soft},
                      {"pytorch_entmax15_fwdbwd_ms", torch_ms},
                      {"pytorch_over_attnlab", vs_torch},
                      {"attnlab_peak_fwdbwd_MiB", peak_fb}});
    }
  }
  ctx.results["entmax_attention"] = rows;
}

// ---- routing: k-means routing attention on cluster segments against PyTorch ----------------------

// q, v [1, 8, n, 64] f32, non-causal (as attn_bench.py routing), k = round(√n) centroids, windows of
// w = n / k: the whole method's forward+backward as a layer runs it (LN of the shared q/k, routing by
// centroid scores and top-w, sort, block-sparse engine on the segments, scatter-mean back) on random
// inputs and centroids. Time grows as n·k·d (routing) + k·w²·d (attention) = O(n^1.5 d); the fitted
// exponent of time vs n is printed. PyTorch (attn_bench.py routing) gathers copies the same way but
// without a fused kernel.
void section_routing(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64;
  std::vector<int64_t> sizes;
  for (int64_t n :
       ctx.opt.quick ? std::vector<int64_t>{1024, 2048} : std::vector<int64_t>{2048, 4096, 8192, 16384, 32768, 65536})
    if (n <= (ctx.opt.max_n > 0 ? ctx.opt.max_n : 65536)) sizes.push_back(n);
  const int64_t torch_max_n = ctx.opt.torch_max_n ? ctx.opt.torch_max_n : (ctx.opt.quick ? 2048 : 16384);
  const double min_ms = ctx.opt.quick ? 100 : 1000;
  const int threads = ctx.opt.threads > 0 ? int(ctx.opt.threads) : omp_get_max_threads();
  std::printf(
      "\n== routing: q, v [%lld, %lld, n, %lld] f32, non-causal, k = round(sqrt n) clusters of w = n / k; "
      "attnlab (LN, route, sort, block-sparse engine, scatter-mean) vs PyTorch attn_bench.py routing "
      "(%d threads, n <= %lld)\n   ratio = PyTorch / attnlab fwd+bwd; peak = extra memory of one fwd+bwd; "
      "target: >= 2x PyTorch @8K, time ~ n^1.5\n\n",
      (long long)B, (long long)H, (long long)d, threads, (long long)torch_max_n);
  bench::Table table({{"n", 6},
                      {"k x w", 10},
                      {"fwd ms", 9},
                      {"f+b ms", 9},
                      {"torch f+b", 9},
                      {"ratio", 6},
                      {"target", 6},
                      {"peak MiB", 9},
                      {"torch MiB", 9}});
  table.header();
  json rows = json::array();
  std::string why_missing;
  bool torch_ok = true;
  std::vector<double> log_n, log_t;
  for (int64_t n : sizes) {
    const int64_t k = std::max<int64_t>(1, std::llround(std::sqrt(double(n)))), w = n / k;
    Generator gen(ctx.seed, 2900 + uint64_t(n));
    Tensor q = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor g = randn({B, H, n, d}, DType::f32, &gen);
    Tensor mu = routing_layer_norm(randn({H, k, d}, DType::f32, &gen));
    const double scale = 1.0 / std::sqrt(double(d));
    auto attend = [&] {
      Tensor xhat = routing_layer_norm(q);
      return routing_attention(xhat, v, routing::route(xhat, mu, w), false, {}, scale);
    };
    auto fwd = [&] {
      NoGradGuard ng;
      Tensor out = attend();
    };
    auto fwdbwd = [&] {
      q.zero_grad();
      v.zero_grad();
      attend().backward(g);
    };
    const double peak = peak_extra_mib(fwdbwd);
    const double af = median_call_ms(fwd, min_ms), afb = median_call_ms(fwdbwd, min_ms);
    log_n.push_back(std::log(double(n)));
    log_t.push_back(std::log(afb));
    double tfb = NAN, tpeak = NAN;
    if (torch_ok && n <= torch_max_n) {
      char args[160];
      std::snprintf(args, sizeof args, "routing %lld --b %lld --h %lld --d %lld --threads %d", (long long)n,
                    (long long)B, (long long)H, (long long)d, threads);
      if (auto j = run_pytorch_baseline("attn_bench.py", args, &why_missing)) {
        tfb = (*j)["fwdbwd_ms"].get<double>();
        tpeak = (*j)["peak_fwdbwd_MiB"].get<double>();
      } else {
        torch_ok = false;
        std::printf("   (PyTorch column empty: %s)\n", why_missing.c_str());
      }
    }
    const double ratio = tfb / afb;
    const char* verdict = n != 8192 || std::isnan(ratio) ? "-" : (ratio >= 2.0 ? "ok" : "LOW");
    table.row({std::to_string(n), fmt("%lldx%lld", (long long)k, (long long)w), fmt("%.2f", af), fmt("%.2f", afb),
               fmt("%.2f", tfb), fmt("%.2f", ratio), verdict, fmt("%.1f", peak), fmt("%.0f", tpeak)});
    rows.push_back({{"n", n},
                    {"clusters", k},
                    {"window", w},
                    {"attnlab_fwd_ms", af},
                    {"attnlab_fwdbwd_ms", afb},
                    {"attnlab_peak_fwdbwd_MiB", peak},
                    {"pytorch_fwdbwd_ms", tfb},
                    {"pytorch_peak_fwdbwd_MiB", tpeak},
                    {"ratio_fwdbwd", ratio}});
  }
  // Least-squares slope of log time against log n.
  if (log_n.size() >= 2) {
    const double m = double(log_n.size());
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (size_t i = 0; i < log_n.size(); ++i)
      sx += log_n[i], sy += log_t[i], sxx += log_n[i] * log_n[i], sxy += log_n[i] * log_t[i];
    const double slope = (m * sxy - sx * sy) / (m * sxx - sx * sx);
    std::printf("\n   fitted growth: fwd+bwd time ~ n^%.2f (O(n^1.5 d) expected)\n", slope);
    ctx.results["routing_growth_exponent"] = slope;
  }
  ctx.results["routing"] = rows;
}

// ---- sparsefinder: entmax attention on a predicted graph against dense fused entmax -------------------

// Peaked q, k (support concentrated around the diagonal, as a trained char-LM's local heads) and graphs
// of a window around the diagonal at three widths and the exact support: the graph kernel's cost
// follows its edges, the dense fused kernel's the n×n scores (less its zero tiles).
void section_sparsefinder(Context& ctx) {
  const int64_t B = 1, H = 8, d = 64;
  const int64_t max_n = ctx.opt.max_n > 0 ? ctx.opt.max_n : 16384;
  std::vector<int64_t> sizes;
  for (int64_t n : ctx.opt.quick ? std::vector<int64_t>{512, 1024} : std::vector<int64_t>{2048, 4096, 8192, 16384})
    if (n <= max_n) sizes.push_back(n);
  const double min_ms = ctx.opt.quick ? 100 : 500;
  std::printf(
      "\n== sparsefinder: 1.5-entmax attention on a graph (graph_entmax_attention, compressed rows) vs dense fused\n"
      "   entmax attention, q, k, v [%lld, %lld, n, %lld] f32, peaked (positional) q, k, forward+backward;\n"
      "   graph = a window of w keys around each query (fixed w: time per token flat in n for the graph, growing\n"
      "   for dense), or the exact support (a perfect predictor); sparsity = share of the n² pairs not computed;\n"
      "   vs dense = dense time / graph time; max|diff| = largest output difference to dense entmax\n\n",
      (long long)B, (long long)H, (long long)d);
  bench::Table table({{"n", 6},
                      {"window", 7},
                      {"sparsity", 9},
                      {"graph f+b ms", 12},
                      {"dense f+b ms", 12},
                      {"vs dense", 8},
                      {"max|diff|", 9}});
  table.header();
  json rows = json::array();
  for (int64_t n : sizes) {
    Generator gen(ctx.seed, 2300 + uint64_t(n));
    Tensor q = peaked(gen, B, H, n, d, 1.0).set_requires_grad(true);
    Tensor k = peaked(gen, B, H, n, d, 1.0).set_requires_grad(true);
    Tensor v = randn({B, H, n, d}, DType::f32, &gen).set_requires_grad(true);
    Tensor g = randn({B, H, n, d}, DType::f32, &gen);
    const double scale = 1.0 / std::sqrt(double(d));
    auto fb = [&](std::function<Tensor()> f) {
      return [&, f] {
        q.zero_grad();
        k.zero_grad();
        v.zero_grad();
        f().backward(g);
      };
    };
    Tensor dense_out;
    {
      NoGradGuard ng;
      dense_out = entmax_attention(q, k, v, {}, scale, {1.5, {}});
    }
    const double dense = median_call_ms(fb([&] { return entmax_attention(q, k, v, {}, scale, {1.5, {}}); }), min_ms);
    // The windows, and (n <= 4096: it is found by an O(n² d) scalar pass) the exact support itself, the
    // graph of a perfect predictor: its output is dense entmax's.
    std::vector<int64_t> windows = {65, 257, 1025};
    if (n <= 4096) windows.push_back(0);
    for (int64_t w : windows) {
      auto graph = std::make_shared<const AttentionGraph>(
          w > 0 ? sparsefinder::window_graph(B, H, n, n, w, 0, {})
                : sparsefinder::entmax_support(q.detach(), k.detach(), {}, scale, 1.5));
      const double sparsity = 1.0 - double(graph->edges()) / (double(B * H) * double(n) * double(n));
      const double ms = median_call_ms(fb([&] { return graph_entmax_attention(q, k, v, graph, 1.5, scale); }), min_ms);
      Tensor out;
      {
        NoGradGuard ng;
        out = graph_entmax_attention(q, k, v, graph, 1.5, scale);
      }
      const double diff = bench::max_abs_diff(out.data<float>(), dense_out.data<float>(), out.numel());
      table.row({std::to_string(n), w > 0 ? std::to_string(w) : "support", fmt("%.3f", sparsity), fmt("%.1f", ms),
                 fmt("%.1f", dense), fmt("%.2f", dense / ms), fmt("%.1e", diff)});
      rows.push_back({{"n", n},
                      {"graph", w > 0 ? "window " + std::to_string(w) : "exact support"},
                      {"sparsity", sparsity},
                      {"graph_fwdbwd_ms", ms},
                      {"dense_entmax_fwdbwd_ms", dense},
                      {"max_abs_diff", diff}});
    }
  }
  ctx.results["sparsefinder"] = rows;
}

// ---- registry and driver -------------------------------------------------------------------

const Section kSections[] = {
    {"matmul", "attnlab::matmul vs direct cblas_sgemm: square n, a.t()@b, batched", section_matmul},
    {"ops", "elementwise, broadcast, reductions, softmax vs plain OpenMP loops", section_ops},
    {"lm", "causal LM training tokens/s vs PyTorch (shared/baselines/lm_bench.py)", section_lm},
    {"attention", "fused softmax / block-local attention fwd, fwd+bwd, memory vs PyTorch (attn_bench.py)",
     section_attention},
    {"entmax",
     "sparsemax, 1.5-entmax, bisection fwd and fwd+bwd ns/element vs PyTorch (sparsemax_bench.py); entmax "
     "attention fwd+bwd vs our softmax and PyTorch (attn_bench.py entmax15)",
     section_entmax},
    {"entmax-attn", "entmax attention alone (part of entmax)", entmax_attention_table},
    {"sinkformer", "streaming Sinkhorn attention fwd+bwd, both backward modes, memory vs PyTorch (attn_bench.py)",
     section_sinkformer},
    {"routing", "routing attention fwd+bwd, memory, growth exponent vs PyTorch (attn_bench.py routing)",
     section_routing},
    {"sparsefinder", "entmax attention on a graph (windows, the exact support) vs dense fused entmax, fwd+bwd",
     section_sparsefinder},
    {"sinkhorn", "Sparse Sinkhorn attention fwd+bwd, time per token and memory vs PyTorch (attn_bench.py)",
     section_sinkhorn},
};

std::string section_list() {
  std::string out;
  for (const Section& s : kSections) out += fmt("  %-10s %s\n", s.name, s.summary);
  return out;
}

// Declares the flags on cmd, writing into o.
void add_options(cli::Command& cmd, Options& o, bool& list) {
  const int64_t max = 1000000;
  cmd.app.add_option("SECTION", o.sections, "sections to run (default: all)")->each([](const std::string& a) {
    bool known = a == "all";
    for (const Section& s : kSections) known = known || a == s.name;
    if (!known) throw cli::UsageError("unknown section '" + a + "'");
  });
  cmd.integer("--reps", o.reps, 1, max, "interleaved repetitions per comparison (default 7; --quick: 3)");
  cmd.integer("--warmup", o.warmup, 0, max, "untimed calls per variant first (default 2; --quick: 1)");
  cmd.number("--min-time-ms", o.min_time_ms, NumberRange::at_least(0),
             "minimum length of one measurement (default 50; --quick: 5)")
      ->type_name("MS");
  cmd.flag("--quick", o.quick, "small sizes, for a smoke run");
  cmd.integer("--max-n", o.max_n, 1, max,
              "attention: largest sequence length (default 8192; entmax attention and\n"
              "sinkformer 16384; PyTorch's vanilla attention needs ~6 GiB and ~14 s per call at 8192)");
  cmd.integer("--torch-max-n", o.torch_max_n, 1, max,
              "sinkformer: largest n run in PyTorch (default 2048: its unrolled autograd\n"
              "needs 10.8 GiB and ~70 s per call at 4096)");
  cmd.integer("--threads", o.threads, 1, max, "set OpenMP and OpenBLAS thread counts (default: leave as configured)");
  cmd.text("--json", o.json_path, "also write machine-readable results to FILE")->type_name("FILE");
  cmd.flag("--list", list, "list the sections and exit");
}

std::string local_time() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&t));
  return buf;
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

int bench(Context& ctx) {
  Options& o = ctx.opt;
  if (o.sections.empty() || std::find(o.sections.begin(), o.sections.end(), "all") != o.sections.end()) {
    o.sections.clear();
    for (const Section& s : kSections)
      if (std::string(s.name) != "entmax-attn") o.sections.push_back(s.name);  // entmax runs it
  }
  ctx.timing.reps = o.reps > 0 ? int(o.reps) : (o.quick ? 3 : 7);  // flags bounded to 10^6
  ctx.timing.warmup = o.warmup >= 0 ? int(o.warmup) : (o.quick ? 1 : 2);
  ctx.timing.min_time_ms = o.min_time_ms >= 0 ? o.min_time_ms : (o.quick ? 5 : 50);
  if (o.threads > 0) {
    omp_set_num_threads(int(o.threads));
    cpu::set_blas_threads(int(o.threads));
  }
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  const std::string date = local_time();
  const int omp_threads = omp_get_max_threads(), blas_threads = cpu::blas_threads();
  std::printf(
      "# attnlab-bench  %s  host %s  |  OpenMP threads %d, BLAS threads %d (%s)  |  %s sizes, %d reps "
      "interleaved (order alternating), %d warm-up, >= %.0f ms per measurement, medians\n",
      date.c_str(), host, omp_threads, blas_threads, openblas_get_config(), o.quick ? "quick" : "full", ctx.timing.reps,
      ctx.timing.warmup, ctx.timing.min_time_ms);
  std::fflush(stdout);

  const double t0 = bench::now_ms();
  for (const std::string& name : o.sections)
    for (const Section& s : kSections)
      if (name == s.name) s.run(ctx);

  const AllocatorStats st = cpu_allocator::stats();
  const double requests = double(st.fresh_allocations + st.cache_hits);
  std::printf("\n== caching allocator (whole run)\n");
  std::printf(
      "fresh allocations %llu, cache hits %llu (hit rate %.1f%%), in use %.1f MiB, peak %.1f MiB, cached %.1f MiB\n",
      (unsigned long long)st.fresh_allocations, (unsigned long long)st.cache_hits,
      requests > 0 ? 100.0 * double(st.cache_hits) / requests : 0.0, double(st.bytes_in_use) / 1048576.0,
      double(st.peak_bytes_in_use) / 1048576.0, double(st.bytes_cached) / 1048576.0);
  std::printf("threads: omp_get_max_threads() = %d, BLAS threads = %d (OMP_NUM_THREADS=%s, OPENBLAS_NUM_THREADS=%s)\n",
              omp_get_max_threads(), cpu::blas_threads(), env_or("OMP_NUM_THREADS", "unset").c_str(),
              env_or("OPENBLAS_NUM_THREADS", "unset").c_str());
  std::printf("total wall time %.1f s\n", (bench::now_ms() - t0) / 1000.0);

  if (!o.json_path.empty()) {
    json doc = {{"meta",
                 {{"date", date},
                  {"host", host},
                  {"omp_threads", omp_threads},
                  {"blas_threads", blas_threads},
                  {"openblas_config", openblas_get_config()},
                  {"quick", o.quick},
                  {"reps", ctx.timing.reps},
                  {"warmup", ctx.timing.warmup},
                  {"min_time_ms", ctx.timing.min_time_ms},
                  {"ratio", "direct time / attnlab time, median of paired interleaved repetitions"}}},
                {"sections", ctx.results},
                {"allocator",
                 {{"fresh_allocations", st.fresh_allocations},
                  {"cache_hits", st.cache_hits},
                  {"bytes_in_use", st.bytes_in_use},
                  {"peak_bytes_in_use", st.peak_bytes_in_use},
                  {"bytes_cached", st.bytes_cached}}}};
    std::ofstream f(o.json_path);
    if (!f) {
      std::fprintf(stderr, "attnlab-bench: cannot write %s\n", o.json_path.c_str());
      return 1;
    }
    f << doc.dump(2) << "\n";
    std::printf("results written to %s\n", o.json_path.c_str());
  }
  return 0;
}

int run(int argc, char** argv) {
  cli::Command cmd("attnlab bench", "usage: attnlab bench [SECTION...] [options]      (also: attnlab-bench ...)\n",
                   "Times attnlab against direct baselines (raw cblas / plain OpenMP loops into preallocated\n"
                   "buffers) side by side: warm-up, then interleaved repetitions with alternating order, each\n"
                   "measurement at least --min-time-ms long. Tables show median per-call times and the median\n"
                   "of the per-repetition ratios direct/attnlab (>= 1: attnlab as fast as the baseline).\n"
                   "\n"
                   "sections (default: all):\n" +
                       section_list() + fmt("  %-10s every section above, in order", "all"));
  Context ctx;
  bool list = false;
  add_options(cmd, ctx.opt, list);
  return cmd.run(argc, argv, [&] {
    if (list) {
      std::printf("%s", section_list().c_str());
      return 0;
    }
    return bench(ctx);
  });
}

}  // namespace
}  // namespace attnlab

int main(int argc, char** argv) { return attnlab::run(argc, argv); }

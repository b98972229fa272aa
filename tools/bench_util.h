// Timing helpers for attnlab-bench (tools/cli_bench.cpp): interleaved repetitions with medians,
// pre-touched baseline buffers, page-fault and allocator accounting, and streaming aligned tables.
//
// The host is noisy (docs: 10–40 % drift between minutes), so variants are never timed in
// separate blocks: every repetition times each variant once, the order alternating per repetition
// (A B | B A | A B …) to cancel drift and cache-order bias. One measurement runs a variant as many
// times as fill TimingConfig::min_time_ms and records the per-call time. Comparisons report the
// median per-call time of each variant and the median of the per-repetition (paired) ratios.
#pragma once
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "core/allocator.h"

namespace attnlab::bench {

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Minor page faults of the whole process so far (a fresh 4 KiB page costs ~3 µs here).
inline long minor_faults() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// Preallocated, pre-touched memory for direct baselines: aligned like the caching allocator's blocks
// (2 MiB + MADV_HUGEPAGE from 2 MiB up, 64 B below) so the baseline and the framework see the same
// page sizes, and zero-filled so timed runs never page-fault on it.
template <class T>
class Buffer {
 public:
  explicit Buffer(size_t n) : n_(n) {
    size_t bytes = std::max<size_t>(n * sizeof(T), 64);
    size_t align = bytes >= (size_t(2) << 20) ? (size_t(2) << 20) : 64;
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes) != 0) throw std::bad_alloc();
    if (align > 64) madvise(p, bytes, MADV_HUGEPAGE);
    std::memset(p, 0, bytes);
    p_ = static_cast<T*>(p);
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) const { return p_[i]; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

inline double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= m)) m = d;  // NaN wins
  }
  return m;
}

struct TimingConfig {
  int reps = 7;              // interleaved repetitions (one measurement per variant each)
  int warmup = 2;            // untimed calls per variant before the first repetition
  double min_time_ms = 50;   // one measurement repeats the call until it has run this long
};

struct Variant {
  std::string name;
  std::function<void()> fn;
};

struct Measurement {
  std::string name;
  std::vector<double> per_rep_ms;  // per-call time of each repetition, in repetition order
  double median_ms = 0, min_ms = 0;
  int64_t calls_per_rep = 0;
  // Over all timed calls (warm-up excluded):
  double minor_faults_per_call = 0;
  double allocs_per_call = 0;  // caching-allocator requests per call (fresh + cache hits)
  uint64_t fresh_allocations = 0;
  uint64_t cache_hits = 0;
};

// Times every variant reps times, interleaved with alternating order; see the file comment.
inline std::vector<Measurement> run_interleaved(const TimingConfig& cfg, const std::vector<Variant>& vs) {
  const size_t nv = vs.size();
  std::vector<Measurement> out(nv);
  std::vector<double> single(nv, std::numeric_limits<double>::infinity());
  // Warm-up, interleaved too; the fastest warm-up call sizes the measurement.
  for (int w = 0; w < std::max(1, cfg.warmup); ++w)
    for (size_t v = 0; v < nv; ++v) {
      double t0 = now_ms();
      vs[v].fn();
      single[v] = std::min(single[v], now_ms() - t0);
    }
  for (size_t v = 0; v < nv; ++v) {
    out[v].name = vs[v].name;
    double c = std::ceil(cfg.min_time_ms / std::max(single[v], 1e-6));
    out[v].calls_per_rep = int64_t(std::clamp(c, 1.0, 1e6));
  }
  std::vector<long> faults(nv, 0);
  for (int r = 0; r < std::max(1, cfg.reps); ++r) {
    for (size_t i = 0; i < nv; ++i) {
      size_t v = (r % 2) ? nv - 1 - i : i;  // A B | B A | A B ...
      const int64_t calls = out[v].calls_per_rep;
      AllocatorStats s0 = cpu_allocator::stats();
      long f0 = minor_faults();
      double t0 = now_ms();
      for (int64_t c = 0; c < calls; ++c) vs[v].fn();
      double t1 = now_ms();
      faults[v] += minor_faults() - f0;
      AllocatorStats s1 = cpu_allocator::stats();
      out[v].fresh_allocations += s1.fresh_allocations - s0.fresh_allocations;
      out[v].cache_hits += s1.cache_hits - s0.cache_hits;
      out[v].per_rep_ms.push_back((t1 - t0) / double(calls));
    }
  }
  for (size_t v = 0; v < nv; ++v) {
    Measurement& m = out[v];
    m.median_ms = median(m.per_rep_ms);
    m.min_ms = *std::min_element(m.per_rep_ms.begin(), m.per_rep_ms.end());
    double total_calls = double(m.calls_per_rep) * double(m.per_rep_ms.size());
    m.minor_faults_per_call = double(faults[v]) / total_calls;
    m.allocs_per_call = double(m.fresh_allocations + m.cache_hits) / total_calls;
  }
  return out;
}

// Median over repetitions of num[i] / den[i]: the paired ratio, robust to drift between repetitions.
inline double paired_ratio(const Measurement& num, const Measurement& den) {
  std::vector<double> r;
  for (size_t i = 0; i < std::min(num.per_rep_ms.size(), den.per_rep_ms.size()); ++i)
    r.push_back(num.per_rep_ms[i] / den.per_rep_ms[i]);
  return median(r);
}

// An aligned text table printed row by row as results arrive (first column left-aligned).
class Table {
 public:
  struct Col {
    std::string head;
    int width = 0;
    bool left = false;
  };
  explicit Table(std::vector<Col> cols) : cols_(std::move(cols)) {
    for (Col& c : cols_) c.width = std::max<int>(c.width, int(c.head.size()));
  }
  void header() const {
    std::vector<std::string> h;
    for (const Col& c : cols_) h.push_back(c.head);
    row(h);
    std::string rule;
    for (size_t i = 0; i < cols_.size(); ++i) rule += (i ? "  " : "") + std::string(size_t(cols_[i].width), '-');
    std::printf("%s\n", rule.c_str());
    std::fflush(stdout);
  }
  void row(const std::vector<std::string>& cells) const {
    std::string line;
    for (size_t i = 0; i < cols_.size(); ++i) {
      const std::string cell = i < cells.size() ? cells[i] : "";
      const size_t w = size_t(cols_[i].width);
      std::string pad = cell.size() < w ? std::string(w - cell.size(), ' ') : "";
      line += (i ? "  " : "") + (cols_[i].left ? cell + pad : pad + cell);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }

 private:
  std::vector<Col> cols_;
};

}  // namespace attnlab::bench

// The pieces of the tiled attention kernels that every fused method shares (flash softmax, the
// block-sparse engine, entmax attention, ...): the plan of a call (shapes, causal and padding masks
// per tile), the softmax normaliser, recording a fused op, tile products (an AVX-512 register kernel for f32, cblas
// otherwise), row-contiguous operands with packed transposes, and vectorised row loops. Internal to
// attention/*.cpp: not a public API.
#pragma once
#include <omp.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define ATTNLAB_FLASH_AVX512 1
#else
#define ATTNLAB_FLASH_AVX512 0
#endif

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "attention/flash.h"
#include "autograd/node.h"
#include "core/cpu/blas.h"
#include "core/cpu/loops.h"
#include "core/cpu/vmath.h"

namespace attnlab::tiled {

// Below this many flops (summed over all tile products) a call runs on one thread: 32 flops per
// element of the elementwise grain (1 << 20 by default; tests lower the grain to force parallel runs).
// The checks every fused kernel runs first: shapes and masks (check_qkv), f32/f64, the CPU, a finite scale.
inline void check_fused_inputs(const char* name, const Tensor& q, const Tensor& k, const Tensor& v,
                               const AttentionMask& mask, double scale) {
  check_qkv(name, q, k, v, mask);
  if (!is_floating(q.dtype()))
    fail<DTypeError>(name, "q, k, v must be f32 or f64, got ", describe(q), ", ", describe(k), ", ", describe(v));
  if (q.device() != Device::cpu || k.device() != Device::cpu || v.device() != Device::cpu)
    fail<DeviceError>(name, "runs on the CPU; got q on ", q.device(), ", k on ", k.device(), ", v on ", v.device());
  if (!std::isfinite(scale)) fail<ValueError>(name, "scale must be finite, got ", scale);
}

inline double parallel_work() { return 32.0 * double(cpu::parallel_grain()); }

// Elements per 512-bit vector: row loops ask for full-width vectors (GCC prefers 256 bits by default).
template <class T>
inline constexpr int kLanes = 64 / int(sizeof(T));

// ---- plan: shapes, segments, masks -------------------------------------------------------------

// A rectangle of queries × keys: flash_attention's kernel runs one, the whole problem (block-local
// attention, which used one per block, now runs on the block-sparse engine's layouts).
struct Segment {
  int64_t q0, q1, k0, k1;  // queries [q0, q1) see only keys [k0, k1)
};

struct TileMask {
  bool skip = false;            // every (query, key) pair of the tile is blocked
  bool causal_partial = false;  // some pairs lie above the causal diagonal
  bool pad_partial = false;     // some keys are padded
};

struct Plan {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0, dh = 0;
  int64_t shift = 0;  // Tk - Tq: query i sits at key position i + shift
  bool causal = false;
  double scale = 1;
  // The tile sizes in force when the op ran: the backward uses the same plan, whenever it runs
  // (a ScopedTiles around the forward alone must still give a many-tile backward).
  flash::Tiles tiles;
  std::vector<Segment> segs;
  Tensor pad;                      // b8 [B, Tk], contiguous; undefined without key padding
  std::vector<int64_t> pad_count;  // [B, Tk + 1]: padded keys before each position

  Plan(const Tensor& q, const Tensor& k, const AttentionMask& mask, double s, const flash::Tiles& t)
      : B(q.size(0)),
        H(q.size(1)),
        Tq(q.size(2)),
        Tk(k.size(2)),
        dh(q.size(3)),
        shift(Tk - Tq),
        causal(mask.causal),
        scale(s),
        tiles(t),
        segs{{0, Tq, 0, Tk}} {
    if (mask.key_padding.defined()) {
      pad = mask.key_padding.contiguous();
      const uint8_t* p = pad.data<uint8_t>();
      pad_count.assign(size_t(B * (Tk + 1)), 0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < Tk; ++j)
          pad_count[size_t(b * (Tk + 1) + j + 1)] = pad_count[size_t(b * (Tk + 1) + j)] + (p[b * Tk + j] != 0);
    }
  }

  // One past the last key any query of [i0, i1) may see within segment s.
  int64_t key_end(const Segment& s, int64_t i1) const { return causal ? std::clamp(i1 + shift, s.k0, s.k1) : s.k1; }

  TileMask classify(int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    return classify(b, i0, i1, j0, j1, causal);
  }
  // The same with the causal rule given per tile (a block-sparse layout marks its diagonal blocks).
  TileMask classify(int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool causal_tile) const {
    TileMask m;
    if (causal_tile) {
      if (j0 > i1 - 1 + shift) m.skip = true;
      m.causal_partial = j1 - 1 > i0 + shift;
    }
    if (pad.defined()) {
      const int64_t n = pad_count[size_t(b * (Tk + 1) + j1)] - pad_count[size_t(b * (Tk + 1) + j0)];
      if (n == j1 - j0) m.skip = true;
      m.pad_partial = n > 0;
    }
    return m;
  }

  // Sets blocked entries of the score tile s (rows i0.., keys j0.., row stride ld) to -inf.
  template <class T>
  void apply_mask(T* s, int64_t ld, int64_t b, int64_t i0, int64_t mi, int64_t j0, int64_t nj,
                  const TileMask& m) const {
    const T ninf = -std::numeric_limits<T>::infinity();
    if (m.pad_partial) {
      const uint8_t* pk = pad.data<uint8_t>() + b * Tk + j0;
      for (int64_t r = 0; r < mi; ++r) {
        T* row = s + r * ld;
#pragma omp simd simdlen(kLanes <T>)
        for (int64_t c = 0; c < nj; ++c) row[c] = pk[c] ? ninf : row[c];
      }
    }
    if (m.causal_partial)
      for (int64_t r = 0; r < mi; ++r) {
        const int64_t visible = std::clamp<int64_t>(i0 + r + shift + 1 - j0, 0, nj);
        std::fill(s + r * ld + visible, s + r * ld + nj, ninf);
      }
  }
};

// ---- tile products ---------------------------------------------------------------------------

// A matrix in memory: element (i, j) at p[i * rs + j * cs].
template <class T>
struct Mat {
  const T* p;
  int64_t rs, cs;
};

// True where tile_gemm runs the AVX-512 kernel (f32), which reads B's rows with unit stride.
template <class T>
inline constexpr bool kRegisterKernel = ATTNLAB_FLASH_AVX512&& std::is_same_v<T, float>;

#if ATTNLAB_FLASH_AVX512
// Full masks for the zero-masked forms of shuffles, max, roundscale and scalef: the same instructions,
// but GCC 12 warns (-Wmaybe-uninitialized) about the undefined pass-through of the unmasked ones.
constexpr __mmask16 kAll16 = 0xFFFF;
constexpr __mmask8 kAll8 = 0xFF;

namespace avx512 {
// C[MR × 16·NZ] = alpha · A B + beta · C for one block of rows: A entries are broadcast, B rows are
// read 16 floats at a time (the last vector under `tail`), accumulators stay in registers.
template <int MR, int NZ>
[[gnu::always_inline]] inline void block(int64_t kdim, float alpha, const float* a, int64_t ars, int64_t aks,
                                         const float* b, int64_t ldb, float beta, float* c, int64_t ldc,
                                         __mmask16 tail) {
  __m512 acc[MR][NZ];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kdim; ++k) {
    __m512 bv[NZ];
#pragma GCC unroll 4
    for (int j = 0; j < NZ; ++j)
      bv[j] = j + 1 < NZ ? _mm512_loadu_ps(b + k * ldb + 16 * j) : _mm512_maskz_loadu_ps(tail, b + k * ldb + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * ars + k * aks]);
#pragma GCC unroll 4
      for (int j = 0; j < NZ; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NZ; ++j) {
      float* cp = c + i * ldc + 16 * j;
      const __mmask16 m = j + 1 < NZ ? __mmask16(0xFFFF) : tail;
      __m512 r = _mm512_mul_ps(acc[i][j], va);
      if (beta != 0.0f) r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cp), r);
      _mm512_mask_storeu_ps(cp, m, r);
    }
}

// All rows of one column panel of NZ vectors, in blocks that fill the 32 vector registers.
template <int NZ>
void panel(int64_t m, int64_t kdim, float alpha, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb,
           float beta, float* c, int64_t ldc, __mmask16 tail) {
  constexpr int MR = NZ == 4 ? 6 : NZ == 3 ? 7 : NZ == 2 ? 12 : 14;
  int64_t i = 0;
  for (; i + MR <= m; i += MR) block<MR, NZ>(kdim, alpha, a + i * ars, ars, aks, b, ldb, beta, c + i * ldc, ldc, tail);
  const float* ai = a + i * ars;
  float* ci = c + i * ldc;
  switch (m - i) {
#define ATTNLAB_FLASH_ROWS(r)                                                                   \
  case r:                                                                                       \
    if constexpr (r < MR) block<r, NZ>(kdim, alpha, ai, ars, aks, b, ldb, beta, ci, ldc, tail); \
    break;
    ATTNLAB_FLASH_ROWS(1)
    ATTNLAB_FLASH_ROWS(2)
    ATTNLAB_FLASH_ROWS(3)
    ATTNLAB_FLASH_ROWS(4)
    ATTNLAB_FLASH_ROWS(5)
    ATTNLAB_FLASH_ROWS(6) ATTNLAB_FLASH_ROWS(7) ATTNLAB_FLASH_ROWS(8) ATTNLAB_FLASH_ROWS(9) ATTNLAB_FLASH_ROWS(10)
        ATTNLAB_FLASH_ROWS(11) ATTNLAB_FLASH_ROWS(12) ATTNLAB_FLASH_ROWS(13)
#undef ATTNLAB_FLASH_ROWS
            default : break;
  }
}

inline void gemm(int64_t m, int64_t w, int64_t kdim, float alpha, Mat<float> A, const float* b, int64_t ldb, float beta,
                 float* c, int64_t ldc) {
  for (int64_t j = 0; j < w; j += 64) {
    const int64_t cols = std::min<int64_t>(64, w - j);
    const int nz = int((cols + 15) / 16);
    const __mmask16 tail = cols % 16 ? __mmask16((1u << (cols % 16)) - 1) : __mmask16(0xFFFF);
    switch (nz) {
      case 4:
        panel<4>(m, kdim, alpha, A.p, A.rs, A.cs, b + j, ldb, beta, c + j, ldc, tail);
        break;
      case 3:
        panel<3>(m, kdim, alpha, A.p, A.rs, A.cs, b + j, ldb, beta, c + j, ldc, tail);
        break;
      case 2:
        panel<2>(m, kdim, alpha, A.p, A.rs, A.cs, b + j, ldb, beta, c + j, ldc, tail);
        break;
      default:
        panel<1>(m, kdim, alpha, A.p, A.rs, A.cs, b + j, ldb, beta, c + j, ldc, tail);
        break;
    }
  }
}
}  // namespace avx512
#endif

// C[m × w] (row stride ldc) = alpha · A[m × kdim] · B[kdim × w] + beta · C (C is not read when beta = 0).
template <class T>
void tile_gemm(int64_t m, int64_t w, int64_t kdim, T alpha, Mat<T> A, Mat<T> B, T beta, T* c, int64_t ldc) {
#if ATTNLAB_FLASH_AVX512
  if constexpr (kRegisterKernel<T>) {
    if (B.cs == 1 || w == 1) return avx512::gemm(m, w, kdim, alpha, A, B.p, B.rs, beta, c, ldc);
  }
#endif
  cpu::MatrixArg a, b;
  if (!cpu::blas_layout(m, kdim, A.rs, A.cs, a) || !cpu::blas_layout(kdim, w, B.rs, B.cs, b))
    fail<ValueError>("flash_attention", "internal: a tile operand BLAS cannot take");  // unreachable: see Operand
  cpu::gemm(m, w, kdim, alpha, A.p, a, B.p, b, beta, c, ldc);
}

// ---- operands ----------------------------------------------------------------------------------

#if ATTNLAB_FLASH_AVX512
// dst[d * ld + j] = src[j * rs + d] for a 16 × 16 block, in registers.
inline void transpose16(const float* src, int64_t rs, float* dst, int64_t ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * rs);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(kAll16, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(kAll16, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]), c = _mm512_castps_pd(t[i + 2]),
                  d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAll8, b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAll8, b, d));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_maskz_shuffle_f32x4(kAll16, r[h + i], r[h + 4 + i], 0x88);
      t[h + 4 + i] = _mm512_maskz_shuffle_f32x4(kAll16, r[h + i], r[h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_maskz_shuffle_f32x4(kAll16, t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_maskz_shuffle_f32x4(kAll16, t[i], t[8 + i], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}
#endif

// A [B, H, T, dh] tensor whose rows are contiguous (a contiguous copy otherwise): a [T, dh] slice, any
// sub-block of rows and its transpose are valid BLAS operands and rows for the register kernel.
struct Operand {
  Tensor t;
  const void* base;
  int64_t sb, sh, sr, sc, dh;
  explicit Operand(const Tensor& x) : t(x.size(3) <= 1 || x.stride(3) == 1 ? x : x.contiguous()) {
    cpu::MatrixArg unused;
    if (!cpu::blas_layout(t.size(2), t.size(3), t.stride(2), t.stride(3), unused)) t = x.contiguous();
    base = t.raw_data();
    sb = t.stride(0), sh = t.stride(1), sr = t.stride(2), sc = t.stride(3), dh = t.size(3);
  }
  template <class T>
  const T* at(int64_t b, int64_t h, int64_t row) const {
    return static_cast<const T*>(base) + b * sb + h * sh + row * sr;
  }
  template <class T>
  Mat<T> rows(int64_t b, int64_t h, int64_t row) const {  // rows row.. as a matrix
    return {at<T>(b, h, row), sr, sc};
  }
  template <class T>
  Mat<T> rows_t(int64_t b, int64_t h, int64_t row) const {  // their transpose
    return {at<T>(b, h, row), sc, sr};
  }
  // dst[d * ld + j] = element d of row (row0 + j), for j < n: the transpose of n rows, for the
  // register kernel, which wants B's rows contiguous.
  template <class T>
  void pack_t(int64_t b, int64_t h, int64_t row0, int64_t n, T* dst, int64_t ld) const {
    const T* src = at<T>(b, h, row0);
    int64_t done = 0;  // rows [0, done) went through 16 × 16 register transposes
#if ATTNLAB_FLASH_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (sc == 1) {
        done = n - n % 16;
        const int64_t d16 = dh - dh % 16;
        for (int64_t j0 = 0; j0 < done; j0 += 16) {
          for (int64_t d0 = 0; d0 < d16; d0 += 16) transpose16(src + j0 * sr + d0, sr, dst + d0 * ld + j0, ld);
          for (int64_t d = d16; d < dh; ++d)
            for (int64_t j = j0; j < j0 + 16; ++j) dst[d * ld + j] = src[j * sr + d];
        }
      }
    }
#endif
    for (int64_t d = 0; d < dh; ++d)
      for (int64_t j = done; j < n; ++j) dst[d * ld + j] = src[j * sr + d * sc];
  }
  // The transposes of rows [0, n) of every head, [B·H, dh, n], for the register kernel (packed once
  // and shared by every tile that reads them); undefined where tile products go to cblas, which takes
  // the strided transposes as they are.
  template <class T>
  Tensor pack_heads_t(int64_t B, int64_t H, int64_t n, bool par) const {
    if constexpr (!kRegisterKernel<T>) {
      return Tensor();
    } else {
      Tensor packed = empty({B * H, dh, n}, dtype_of<T>());
      T* d = packed.data<T>();
#pragma omp parallel for schedule(static) if (par)
      for (int64_t bh = 0; bh < B * H; ++bh) pack_t<T>(bh / H, bh % H, 0, n, d + bh * dh * n, n);
      return packed;
    }
  }
};

// ---- row kernels (locals, not captures, so the loops vectorise) --------------------------------

template <class T>
T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd simdlen(kLanes <T>) reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i];
    m = v > m ? v : m;
  }
  return m;
}

#if ATTNLAB_FLASH_AVX512
// e^x for 16 floats, for the softmax rows here (x <= 0 up to rounding: scores minus their row max or
// log-sum-exp). Cody-Waite reduction and the Cephes polynomial of cpu::exp_approx, 2^n applied by
// scalef; 0 below ln 2^-126 (never a subnormal) and for -inf; NaN stays NaN. Fewer instructions than
// exp_approx, whose range checks for large x compile to mask round-trips.
[[gnu::always_inline]] inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654475f);
  const __m512 xc = _mm512_maskz_max_ps(kAll16, lo, x);  // NaN is the second operand: it stays NaN
  const __m512 n = _mm512_maskz_roundscale_ps(kAll16, _mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), e, n);
}
#endif

// dst := exp(x (+ bias when kBias) − sub) (dst may be x); returns the sum.
template <bool kBias, class T>
T exp_sweep(T* dst, const T* x, const T* bias, int64_t n, T sub) {
#if ATTNLAB_FLASH_AVX512
  if constexpr (std::is_same_v<T, float>) {
    const __m512 vs = _mm512_set1_ps(sub);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      __m512 v = _mm512_loadu_ps(x + i);
      if constexpr (kBias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + i));
      const __m512 e = exp16(_mm512_sub_ps(v, vs));
      _mm512_storeu_ps(dst + i, e);
      acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
      const __mmask16 m = __mmask16((1u << (n - i)) - 1);
      __m512 v = _mm512_maskz_loadu_ps(m, x + i);
      if constexpr (kBias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + i));
      const __m512 e = exp16(_mm512_sub_ps(v, vs));
      _mm512_mask_storeu_ps(dst + i, m, e);
      acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    alignas(64) float lanes[16];  // (not _mm512_reduce_add_ps: the same GCC 12 warning)
    _mm512_store_ps(lanes, acc);
    float sum = 0;
    for (float e : lanes) sum += e;
    return sum;
  }
#endif
  T s = 0;
#pragma omp simd simdlen(kLanes <T>) reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const T e = cpu::exp_fast(T((kBias ? x[i] + bias[i] : x[i]) - sub));
    dst[i] = e;
    s += e;
  }
  return s;
}

// x := exp(x - sub); returns the sum.
template <class T>
T exp_row(T* x, int64_t n, T sub) {
  return exp_sweep<false>(x, x, static_cast<const T*>(nullptr), n, sub);
}

// dst := exp(x + bias − sub) (dst may be x); returns the sum. One sweep where add + exp_row take two.
template <class T>
T exp_row_biased(T* dst, const T* x, const T* bias, int64_t n, T sub) {
  return exp_sweep<true>(dst, x, bias, n, sub);
}

template <class T>
void scale_row(T* x, int64_t n, T a) {
#pragma omp simd simdlen(kLanes <T>)
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// ---- the normaliser -------------------------------------------------------------------------

// What the tile loops ask of a normaliser, so that another one (entmax) can plug in later. Forward:
// fold a score tile into running per-row statistics, turning it into weights, and finish each row
// into its output and one saved statistic. Backward: recompute a tile's weights from that statistic,
// the per-row term D, and dS from dP. Softmax keeps a running max m and sum l, saves LSE = m + log l,
// and has D = rowsum(dO ∘ O), dS = P ∘ (dP - D).
struct Softmax {
  // S (mi × nj, row stride ld) becomes exp(S - m'); l and m are updated and the rows of O (stride dh)
  // rescaled by e^(m - m'), unless `first` (O not written yet).
  template <class T>
  static void absorb(T* S, int64_t ld, int64_t mi, int64_t nj, T* m, T* l, T* o, int64_t dh, bool first) {
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < mi; ++r) {
      T* srow = S + r * ld;
      const T mnew = std::max(m[r], row_max(srow, nj));
      // Nothing visible yet (mnew = -inf): subtract 0, so exp(-inf) = 0, not NaN. A +inf or NaN score
      // is kept: exp(inf - inf) and exp(NaN) make l NaN, and NaN reaches the output.
      const T mu = mnew == ninf ? T(0) : mnew;
      const T alpha = cpu::exp_fast(T(m[r] - mu));
      l[r] = l[r] * alpha + exp_row(srow, nj, mu);
      m[r] = mnew;
      if (!first && alpha != T(1)) scale_row(o + r * dh, dh, alpha);
    }
  }
  // O /= l and LSE = m + log l per row; `visited` false: no key tile was visible at all.
  template <class T>
  static void finish(T* o, int64_t dh, int64_t mi, const T* m, const T* l, T* lse, bool visited) {
    const T ninf = -std::numeric_limits<T>::infinity();
    if (!visited) std::fill(o, o + mi * dh, T(0));
    for (int64_t r = 0; r < mi; ++r) {
      // Only a row with no visible score (m = -inf and l = 0) is fully masked. A NaN score is skipped
      // by the max but not by l (exp(NaN) = NaN), so l = NaN divides the row: NaN in gives NaN out,
      // as on the composite path, even when every score of the row is NaN.
      if (m[r] != ninf || l[r] != T(0)) {
        scale_row(o + r * dh, dh, T(1) / l[r]);
        lse[r] = m[r] + std::log(l[r]);
      } else {  // a fully masked row: zero output, LSE of nothing
        std::fill(o + r * dh, o + (r + 1) * dh, T(0));
        lse[r] = ninf;
      }
    }
  }
  // S becomes P = exp(S - LSE); a fully masked row (LSE = -inf) gives P = 0.
  template <class T>
  static void weights(T* S, int64_t ld, int64_t mi, int64_t nj, const T* lse) {
    const T pinf = std::numeric_limits<T>::infinity();
    for (int64_t r = 0; r < mi; ++r) exp_row(S + r * ld, nj, std::isinf(lse[r]) && lse[r] < 0 ? pinf : lse[r]);
  }
  // D of one row: rowsum(dO ∘ O), dO with element stride gs, accumulated in double.
  template <class T>
  static T row_term(const T* g, int64_t gs, const T* o, int64_t dh) {
    double acc = 0;
    if (gs == 1) {
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < dh; ++d) acc += double(g[d]) * double(o[d]);
    } else {
      for (int64_t d = 0; d < dh; ++d) acc += double(g[d * gs]) * double(o[d]);
    }
    return T(acc);
  }
  // dP (same layout as P) becomes dS = P ∘ (dP - D).
  template <class T>
  static void dscores(const T* P, T* dP, int64_t ld, int64_t mi, int64_t nj, const T* D) {
    for (int64_t r = 0; r < mi; ++r) {
      const T* prow = P + r * ld;
      T* drow = dP + r * ld;
      const T Dr = D[r];
#pragma omp simd simdlen(kLanes <T>)
      for (int64_t c = 0; c < nj; ++c) drow[c] = prow[c] * (drow[c] - Dr);
    }
  }
};

// ---- recording a fused op ------------------------------------------------------------------------

struct FusedGrads {
  Tensor dq, dk, dv;
};
// The kernel's backward: q, k, v, the saved output and LSE, and g in q's dtype.
using FusedBackward = std::function<FusedGrads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                               const Tensor& lse, const Tensor& g, const std::vector<bool>& need)>;

// Records out = op(q, k, v) for the backward, saving q, k, v, out and the LSE; an empty problem has zero
// gradients.
inline void record_fused(const OpDef& op, Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& lse, bool empty_problem, FusedBackward backward) {
  if (!needs_grad({q, k, v})) return;
  const char* name = op.name.c_str();
  record(
      out, op, {q, k, v},
      [backward = std::move(backward), empty_problem, sq = SavedTensor(q, name), sk = SavedTensor(k, name),
       sv = SavedTensor(v, name), so = SavedTensor(out.detach(), name),
       sl = SavedTensor(lse, name)](const Tensor& g, const std::vector<bool>& need) {
        const Tensor &qv = sq.get(), &kv = sk.get(), &vv = sv.get();
        FusedGrads gr = empty_problem ? FusedGrads{zeros_like(qv), zeros_like(kv), zeros_like(vv)}
                                      : backward(qv, kv, vv, so.get(), sl.get(),
                                                 g.dtype() == qv.dtype() ? g : g.to(qv.dtype()), need);
        return std::vector<Tensor>{need[0] ? gr.dq : Tensor(), need[1] ? gr.dk : Tensor(), need[2] ? gr.dv : Tensor()};
      });
}

inline bool run_parallel(double work) {
  return work >= parallel_work() && omp_get_max_threads() > 1 && !omp_in_parallel();
}

}  // namespace attnlab::tiled

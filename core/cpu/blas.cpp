#include "core/cpu/blas.h"

#include <cblas.h>

#include <algorithm>

namespace attnlab::cpu {

bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, MatrixArg& out) {
  // Row-major: unit column stride, row stride ≥ cols (strides of size-1 dims do not matter).
  if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= std::max<int64_t>(cols, 1))) {
    out = {false, rows <= 1 ? std::max<int64_t>(cols, 1) : rs};
    return true;
  }
  // Column-major, i.e. a transposed row-major matrix: unit row stride, column stride ≥ rows.
  if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= std::max<int64_t>(rows, 1))) {
    out = {true, cols <= 1 ? std::max<int64_t>(rows, 1) : cs};
    return true;
  }
  return false;
}

Tensor blas_matrix(const Tensor& m, MatrixArg& arg) {
  if (blas_layout(m.size(-2), m.size(-1), m.stride(-2), m.stride(-1), arg)) return m;
  Tensor c = m.contiguous();
  blas_layout(c.size(-2), c.size(-1), c.stride(-2), c.stride(-1), arg);
  return c;
}

namespace {
CBLAS_TRANSPOSE flag(const MatrixArg& m) { return m.trans ? CblasTrans : CblasNoTrans; }
}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, float alpha, const float* a, MatrixArg A, const float* b, MatrixArg B,
          float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, flag(A), flag(B), int(m), int(n), int(k), alpha, a, int(A.ld), b, int(B.ld), beta, c,
              int(ldc));
}
void gemm(int64_t m, int64_t n, int64_t k, double alpha, const double* a, MatrixArg A, const double* b, MatrixArg B,
          double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, flag(A), flag(B), int(m), int(n), int(k), alpha, a, int(A.ld), b, int(B.ld), beta, c,
              int(ldc));
}

void set_blas_threads(int n) { openblas_set_num_threads(n); }
int blas_threads() { return openblas_get_num_threads(); }

}  // namespace attnlab::cpu

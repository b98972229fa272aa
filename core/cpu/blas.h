// The one place attnlab calls cblas. Operands are strided matrices; a transposed view reaches
// BLAS as a transpose flag plus leading dimension, never as a copy.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace attnlab::cpu {

// A matrix operand as BLAS sees it: row-major data with leading dimension ld, optionally transposed.
struct MatrixArg {
  bool trans = false;
  int64_t ld = 0;
};

// Decides how a (rows × cols) matrix with element strides (rs, cs) can be passed to BLAS;
// returns false if it needs a contiguous copy first.
bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, MatrixArg& out);

// m (matrices over its last two dims) in a form BLAS reads as it is: m itself when its strides can
// be expressed, else a contiguous copy; arg describes the returned tensor's last two dims.
Tensor blas_matrix(const Tensor& m, MatrixArg& arg);

// C (m × n, row-major, ldc) = alpha · op(A) · op(B) + beta · C.
void gemm(int64_t m, int64_t n, int64_t k, float alpha, const float* a, MatrixArg A, const float* b, MatrixArg B,
          float beta, float* c, int64_t ldc);
void gemm(int64_t m, int64_t n, int64_t k, double alpha, const double* a, MatrixArg A, const double* b, MatrixArg B,
          double beta, double* c, int64_t ldc);

// Thread count BLAS uses inside one call (OpenBLAS's own pool).
void set_blas_threads(int n);
int blas_threads();

}  // namespace attnlab::cpu

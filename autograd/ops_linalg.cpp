// matmul over cblas with broadcast batch dims. Derivations: docs/backward.md#matmul.
#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/blas.h"
#include "core/cpu/copy.h"

namespace attnlab {
using namespace cases;

namespace {

// C[batch] = A[batch] @ B[batch] for 2+-D operands with broadcast batch dims.
Tensor matmul_raw(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;  // the views below are plumbing, not graph
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  Shape ba(a.shape().begin(), a.shape().end() - 2), bb(b.shape().begin(), b.shape().end() - 2);
  Shape batch = broadcast_shapes("matmul", ba, bb);
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = empty(out_shape, a.dtype());
  if (out.numel() == 0) return out;
  if (k == 0) return zeros(out_shape, a.dtype());

  Shape ea = batch, eb = batch;
  ea.insert(ea.end(), {m, k});
  eb.insert(eb.end(), {k, n});
  cpu::MatrixArg A, B;
  Tensor av = cpu::blas_matrix(a.expand(ea), A), bv = cpu::blas_matrix(b.expand(eb), B);
  const int64_t nb = shape_numel(batch);
  dispatch_floating(a.dtype(), "matmul", [&]<class T>() {
    const T* pa = av.data<T>();
    const T* pb = bv.data<T>();
    T* pc = out.data<T>();
    Shape idx(batch.size(), 0);
    for (int64_t i = 0; i < nb; ++i) {
      int64_t oa = 0, ob = 0;
      for (size_t d = 0; d < batch.size(); ++d) {
        oa += idx[d] * av.strides()[d];
        ob += idx[d] * bv.strides()[d];
      }
      cpu::gemm(m, n, k, T(1), pa + oa, A, pb + ob, B, T(0), pc + i * m * n, n);
      for (size_t d = batch.size(); d-- > 0;) {
        if (++idx[d] < batch[d]) break;
        idx[d] = 0;
      }
    }
  });
  return out;
}

}  // namespace

static const OpDef kMatmul(
    "matmul", "dA = sum_to(g @ B^T), dB = sum_to(A^T @ g)",
    {{"[3,4] @ [4,5]", [](Generator& g) { return Inputs{rn(g, {3, 4}), rn(g, {4, 5})}; },
      [](const Inputs& in) { return matmul(in[0], in[1]); }},
     {"transposed views (BLAS flags)", [](Generator& g) { return Inputs{rn_t(g, {3, 4}), rn_t(g, {4, 2})}; },
      [](const Inputs& in) { return matmul(in[0], in[1]); }},
     {"broadcast batch [2,1,3,4] @ [3,4,2]", [](Generator& g) { return Inputs{rn(g, {2, 1, 3, 4}), rn(g, {3, 4, 2})}; },
      [](const Inputs& in) { return matmul(in[0], in[1]); }},
     {"vector @ matrix and matrix @ vector", [](Generator& g) { return Inputs{rn(g, {4}), rn(g, {4, 3}), rn(g, {3})}; },
      [](const Inputs& in) { return matmul(matmul(in[0], in[1]), in[2]); }}});

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype()) fail<DTypeError>("matmul", "dtype mismatch: ", describe(a), " @ ", describe(b));
  if (!is_floating(a.dtype())) fail<DTypeError>("matmul", "expected floating operands, got ", describe(a));
  if (a.dim() == 0 || b.dim() == 0)
    fail<ShapeError>("matmul", "operands must be at least 1-D, got ", describe(a), " @ ", describe(b));
  if (a.dim() == 1 && b.dim() == 1) return matmul(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  if (a.dim() == 1) return matmul(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul(a, b.unsqueeze(-1)).squeeze(-1);
  if (a.size(-1) != b.size(-2))
    fail<ShapeError>("matmul", "inner dimensions differ: ", describe(a), " @ ", describe(b));
  Tensor out = matmul_raw(a, b);
  if (needs_grad({a, b}))
    record(out, kMatmul, {a, b},
           [sa = SavedTensor(a, "matmul"), sb = SavedTensor(b, "matmul")](const Tensor& g,
                                                                          const std::vector<bool>& need) {
             const Tensor &av = sa.get(), &bv = sb.get();
             Tensor ga, gb;
             if (need[0]) ga = sum_to(matmul_raw(g, bv.transpose(-1, -2)), av.shape());
             if (need[1]) gb = sum_to(matmul_raw(av.transpose(-1, -2), g), bv.shape());
             return std::vector<Tensor>{ga, gb};
           });
  return out;
}

}  // namespace attnlab

#include "core/cpu/copy.h"

#include <cstring>

#include "core/cpu/loops.h"

namespace attnlab::cpu {

void copy_into(const Tensor& src, const Tensor& dst) {
  if (broadcast_shapes("copy_", src.shape(), dst.shape()) != dst.shape())  // src may not grow dst
    fail<ShapeError>("copy_", "cannot broadcast ", describe(src), " into the destination ", describe(dst));
  if (shape_numel(dst.shape()) == 0) return;
  if (src.dtype() == dst.dtype() && src.shape() == dst.shape() && src.is_contiguous() && dst.is_contiguous()) {
    std::memcpy(dst.raw_data(), src.raw_data(), size_t(dst.numel()) * dst.element_size());
    return;
  }
  dispatch_all(dst.dtype(), [&]<class D>() {
    dispatch_all(src.dtype(), [&]<class S>() {
      D* pd = dst.data<D>();
      const S* ps = src.data<S>();
      for_each_row<2>(dst.shape(), {dst.strides(), broadcast_strides(src, dst.shape())},
                      [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
                        for (int64_t i = 0; i < n; ++i)
                          pd[off[0] + i * st[0]] = convert<D>(ps[off[1] + i * st[1]]);
                      });
    });
  });
}

Tensor copy_as(const Tensor& src, DType t) {
  Tensor out = empty(src.shape(), t);
  copy_into(src, out);
  return out;
}

void fill(const Tensor& dst, double v) {
  dispatch_all(dst.dtype(), [&]<class D>() {
    D* pd = dst.data<D>();
    const D val = convert<D>(v);
    for_each_row<1>(dst.shape(), {dst.strides()},
                    [&](const std::array<int64_t, 1>& off, int64_t n, const std::array<int64_t, 1>& st) {
                      for (int64_t i = 0; i < n; ++i) pd[off[0] + i * st[0]] = val;
                    });
  });
}

}  // namespace attnlab::cpu

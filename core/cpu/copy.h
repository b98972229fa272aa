// Raw (non-autograd) copies between strided tensors, with broadcasting and dtype conversion.
#pragma once
#include "core/tensor.h"

namespace attnlab::cpu {

// dst[...] = src[...] (src broadcast to dst's shape, converted to dst's dtype).
void copy_into(const Tensor& src, const Tensor& dst);
// A fresh contiguous copy of src with dtype t.
Tensor copy_as(const Tensor& src, DType t);
// Fills every element of dst (any strides) with v.
void fill(const Tensor& dst, double v);

}  // namespace attnlab::cpu

// Indexing and joining: gather, scatter_add, index_select, index_add, concat, split, stack,
// one_hot. Indices are i64 and bounds-checked. Derivations: docs/backward.md#indexing.
#include "autograd/cases.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/copy.h"
#include "core/cpu/loops.h"

namespace attnlab {
using namespace cases;

namespace {

void check_index(const char* op, const Tensor& index) {
  if (index.dtype() != DType::i64) fail<DTypeError>(op, "index must be i64, got ", describe(index));
}

// Visits every element of `index` with its multi-index position, in row-major order.
template <class F>
void for_each_index(const Tensor& index, F f) {
  Tensor ic = index.contiguous();
  const int64_t* p = ic.data<int64_t>();
  const Shape& s = index.shape();
  Shape pos(s.size(), 0);
  for (int64_t e = 0; e < index.numel(); ++e) {
    f(pos, p[e]);
    for (size_t d = s.size(); d-- > 0;) {
      if (++pos[d] < s[d]) break;
      pos[d] = 0;
    }
  }
}

// wrap_dim accepts dim 0 of a 0-d tensor (for reductions); indexing along it has no size to use.
void check_not_0d(const char* op, const Tensor& x) {
  if (x.dim() == 0) fail<IndexError>(op, "cannot index along a dim of a 0-d tensor");
}

// Checks the gather/scatter shape rule: same ndim, index.size(d) <= x.size(d) for d != dim.
void check_gather_shapes(const char* op, const Tensor& x, int64_t dim, const Tensor& index) {
  check_not_0d(op, x);
  if (index.dim() != x.dim())
    fail<ShapeError>(op, "index ", describe(index), " must have as many dims as the input ", describe(x));
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != dim && index.shape()[d] > x.shape()[d])
      fail<ShapeError>(op, "index ", describe(index), " is larger than the input ", describe(x), " at dim ", d);
}

int64_t offset_of(const Tensor& t, const Shape& pos, int64_t dim, int64_t at) {
  int64_t off = 0;
  for (size_t d = 0; d < pos.size(); ++d) off += (int64_t(d) == dim ? at : pos[d]) * t.strides()[d];
  return off;
}

int64_t checked(const char* op, int64_t i, int64_t n, int64_t dim) {
  if (i < 0 || i >= n) fail<IndexError>(op, "index ", i, " out of range [0, ", n, ") along dim ", dim);
  return i;
}

Tensor gather_raw(const Tensor& x, int64_t dim, const Tensor& index) {
  Tensor out = empty(index.shape(), x.dtype());
  dispatch_all(x.dtype(), [&]<class T>() {
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t e = 0;
    for_each_index(index, [&](const Shape& pos, int64_t i) {
      po[e++] = px[offset_of(x, pos, dim, checked("gather", i, x.shape()[dim], dim))];
    });
  });
  return out;
}

// out = x + scatter of src at index (a fresh tensor).
Tensor scatter_add_raw(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor out = cpu::copy_as(x, x.dtype());
  dispatch_floating(x.dtype(), "scatter_add", [&]<class T>() {
    T* po = out.data<T>();
    const T* ps = src.data<T>();
    for_each_index(index, [&](const Shape& pos, int64_t i) {
      int64_t so = 0;
      for (size_t d = 0; d < pos.size(); ++d) so += pos[d] * src.strides()[d];
      po[offset_of(out, pos, dim, checked("scatter_add", i, x.shape()[dim], dim))] += ps[so];
    });
  });
  return out;
}

Tensor index_select_raw(const Tensor& x, int64_t dim, const Tensor& index) {
  Shape s = x.shape();
  s[dim] = index.numel();
  Tensor out = empty(s, x.dtype());
  std::vector<int64_t> idx = index.to_vector<int64_t>();
  for (size_t j = 0; j < idx.size(); ++j)
    cpu::copy_into(x.select(dim, checked("index_select", idx[j], x.shape()[dim], dim)), out.select(dim, int64_t(j)));
  return out;
}

Tensor index_add_raw(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor out = cpu::copy_as(x, x.dtype());
  std::vector<int64_t> idx = index.to_vector<int64_t>();
  for (size_t j = 0; j < idx.size(); ++j) {
    Tensor dst = out.select(dim, checked("index_add", idx[j], x.shape()[dim], dim));
    dst.add_(src.select(dim, int64_t(j)));
  }
  return out;
}

}  // namespace

// ---- gather / scatter_add --------------------------------------------------------------------

static const OpDef kGather("gather", "dx = scatter_add(zeros(x), dim, index, g)",
                           {{"dim 1 with repeated indices",
                             [](Generator& g) {
                               return Inputs{rn(g, {3, 4}), from_vector(std::vector<int64_t>{0, 0, 3, 1, 2, 1}, {3, 2})};
                             },
                             [](const Inputs& in) { return gather(in[0], 1, in[1]); }},
                            {"dim 0 of non-contiguous",
                             [](Generator& g) {
                               return Inputs{rn_t(g, {3, 2}), from_vector(std::vector<int64_t>{2, 0, 1, 1}, {2, 2})};
                             },
                             [](const Inputs& in) { return gather(in[0], 0, in[1]); }}});
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("gather", index);
  int64_t d = wrap_dim("gather", dim, x.dim());
  check_gather_shapes("gather", x, d, index);
  Tensor out = gather_raw(x, d, index);
  // The index is saved with its version (here and in the ops below): rewriting it in place before
  // backward would otherwise send the gradient to the wrong places without a word.
  if (needs_grad({x}))
    record(out, kGather, {x, index},
           [s = x.shape(), d, si = SavedTensor(index, "gather")](const Tensor& g, const std::vector<bool>&) {
             return std::vector<Tensor>{scatter_add_raw(zeros(s, g.dtype()), d, si.get(), g), Tensor()};
           });
  return out;
}

static const OpDef kScatterAdd("scatter_add", "dx = g, dsrc = gather(g, dim, index)",
                               {{"dim 1 with collisions",
                                 [](Generator& g) {
                                   return Inputs{rn(g, {2, 4}), from_vector(std::vector<int64_t>{0, 0, 3, 2, 2, 1}, {2, 3}),
                                                 rn(g, {2, 3})};
                                 },
                                 [](const Inputs& in) { return scatter_add(in[0], 1, in[1], in[2]); }}});
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index("scatter_add", index);
  if (x.dtype() != src.dtype()) fail<DTypeError>("scatter_add", "dtype mismatch: ", describe(x), " and ", describe(src));
  int64_t d = wrap_dim("scatter_add", dim, x.dim());
  check_gather_shapes("scatter_add", x, d, index);
  if (src.dim() != index.dim())
    fail<ShapeError>("scatter_add", "src ", describe(src), " must have as many dims as index ", describe(index));
  for (int64_t i = 0; i < src.dim(); ++i)
    if (index.shape()[i] > src.shape()[i])
      fail<ShapeError>("scatter_add", "index ", describe(index), " is larger than src ", describe(src));
  Tensor out = scatter_add_raw(x, d, index, src);
  if (needs_grad({x, src}))
    record(out, kScatterAdd, {x, index, src},
           [d, si = SavedTensor(index, "scatter_add"), src_shape = src.shape()](const Tensor& g,
                                                                                 const std::vector<bool>& need) {
             Tensor gsrc;
             if (need[2]) {
               const Tensor& idx = si.get();
               gsrc = zeros(src_shape, g.dtype());
               Tensor part = gather_raw(g, d, idx);
               Tensor view = gsrc;
               for (int64_t i = 0; i < idx.dim(); ++i) view = view.narrow(i, 0, idx.shape()[i]);
               cpu::copy_into(part, view);
             }
             return std::vector<Tensor>{need[0] ? g : Tensor(), Tensor(), gsrc};
           });
  return out;
}

// ---- index_select / index_add ------------------------------------------------------------------

static const OpDef kIndexSelect("index_select", "dx = index_add(zeros(x), dim, index, g)",
                                {{"dim 0 with repeats",
                                  [](Generator& g) { return Inputs{rn(g, {4, 3}), from_vector(std::vector<int64_t>{3, 0, 3}, {3})}; },
                                  [](const Inputs& in) { return index_select(in[0], 0, in[1]); }},
                                 {"dim 1 of non-contiguous",
                                  [](Generator& g) { return Inputs{rn_t(g, {3, 4}), from_vector(std::vector<int64_t>{1, 2}, {2})}; },
                                  [](const Inputs& in) { return index_select(in[0], 1, in[1]); }}});
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_index("index_select", index);
  if (index.dim() != 1) fail<ShapeError>("index_select", "index must be 1-D, got ", describe(index));
  int64_t d = wrap_dim("index_select", dim, x.dim());
  check_not_0d("index_select", x);
  Tensor out;
  {
    NoGradGuard ng;
    out = index_select_raw(x, d, index);
  }
  if (needs_grad({x}))
    record(out, kIndexSelect, {x, index},
           [s = x.shape(), d, si = SavedTensor(index, "index_select")](const Tensor& g, const std::vector<bool>&) {
             return std::vector<Tensor>{index_add_raw(zeros(s, g.dtype()), d, si.get(), g), Tensor()};
           });
  return out;
}

static const OpDef kIndexAdd("index_add", "dx = g, dsrc = index_select(g, dim, index)",
                             {{"dim 0 with repeats",
                               [](Generator& g) {
                                 return Inputs{rn(g, {4, 3}), from_vector(std::vector<int64_t>{1, 1, 3}, {3}), rn(g, {3, 3})};
                               },
                               [](const Inputs& in) { return index_add(in[0], 0, in[1], in[2]); }}});
Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  check_index("index_add", index);
  if (x.dtype() != src.dtype()) fail<DTypeError>("index_add", "dtype mismatch: ", describe(x), " and ", describe(src));
  if (index.dim() != 1) fail<ShapeError>("index_add", "index must be 1-D, got ", describe(index));
  int64_t d = wrap_dim("index_add", dim, x.dim());
  check_not_0d("index_add", x);
  Shape expect = x.shape();
  expect[d] = index.numel();
  if (src.shape() != expect)
    fail<ShapeError>("index_add", "src ", describe(src), " must have shape ", shape_str(expect));
  Tensor out;
  {
    NoGradGuard ng;
    out = index_add_raw(x, d, index, src);
  }
  if (needs_grad({x, src}))
    record(out, kIndexAdd, {x, index, src},
           [d, si = SavedTensor(index, "index_add")](const Tensor& g, const std::vector<bool>& need) {
             return std::vector<Tensor>{need[0] ? g : Tensor(), Tensor(),
                                        need[2] ? index_select_raw(g, d, si.get()) : Tensor()};
           });
  return out;
}

// ---- concat / split / stack ------------------------------------------------------------------

static const OpDef kConcat("concat", "dx_i = narrow(g, dim, offset_i, size_i)",
                           {{"dim 1 of [2,3], [2,1], non-contiguous [2,2]",
                             [](Generator& g) { return Inputs{rn(g, {2, 3}), rn(g, {2, 1}), rn_t(g, {2, 2})}; },
                             [](const Inputs& in) { return concat(in, 1); }},
                            {"stack then split", [](Generator& g) { return Inputs{rn(g, {2, 3}), rn(g, {2, 3})}; },
                             [](const Inputs& in) { return split(stack(in, 0), std::vector<int64_t>{1, 1}, 0)[1] * 2.0; }}});
Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) fail<ValueError>("concat", "needs at least one tensor");
  const Tensor& first = xs[0];
  int64_t d = wrap_dim("concat", dim, first.dim());
  if (first.dim() == 0) fail<ShapeError>("concat", "cannot concatenate 0-d tensors; use stack");
  Shape s = first.shape();
  int64_t total = 0;
  for (const Tensor& x : xs) {
    if (x.dtype() != first.dtype()) fail<DTypeError>("concat", "dtype mismatch: ", describe(first), " and ", describe(x));
    if (x.dim() != first.dim()) fail<ShapeError>("concat", "rank mismatch: ", describe(first), " and ", describe(x));
    for (int64_t i = 0; i < x.dim(); ++i)
      if (i != d && x.shape()[i] != s[i])
        fail<ShapeError>("concat", "shapes ", describe(first), " and ", describe(x), " differ outside dim ", d);
    total += x.shape()[d];
  }
  s[d] = total;
  Tensor out = empty(s, first.dtype());
  std::vector<int64_t> sizes;
  int64_t off = 0;
  {
    NoGradGuard ng;
    for (const Tensor& x : xs) {
      cpu::copy_into(x, out.narrow(d, off, x.shape()[d]));
      sizes.push_back(x.shape()[d]);
      off += x.shape()[d];
    }
  }
  if (needs_grad(xs))
    record(out, kConcat, xs, [d, sizes](const Tensor& g, const std::vector<bool>& need) {
      std::vector<Tensor> gs;
      int64_t o = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        gs.push_back(need[i] ? g.narrow(d, o, sizes[i]) : Tensor());
        o += sizes[i];
      }
      return gs;
    });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  int64_t d = wrap_dim("split", dim, x.dim());
  check_not_0d("split", x);
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) fail<ValueError>("split", "negative split size ", s);
    total += s;
  }
  if (total != x.shape()[d])
    fail<ShapeError>("split", "sizes sum to ", total, " but dim ", dim, " of ", describe(x), " has ", x.shape()[d]);
  std::vector<Tensor> out;
  int64_t off = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(d, off, s));
    off += s;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  if (split_size <= 0) fail<ValueError>("split", "split size must be positive, got ", split_size);
  check_not_0d("split", x);
  int64_t n = x.shape()[wrap_dim("split", dim, x.dim())];
  std::vector<int64_t> sizes;
  for (int64_t o = 0; o < n; o += split_size) sizes.push_back(std::min(split_size, n - o));
  return split(x, sizes, dim);
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) fail<ValueError>("stack", "needs at least one tensor");
  int64_t d = wrap_dim("stack", dim, xs[0].dim() + 1);
  std::vector<Tensor> us;
  for (const Tensor& x : xs) {
    if (x.shape() != xs[0].shape())
      fail<ShapeError>("stack", "all tensors must have one shape, got ", describe(xs[0]), " and ", describe(x));
    us.push_back(x.unsqueeze(d));
  }
  return concat(us, d);
}

Tensor one_hot(const Tensor& index, int64_t num_classes, DType t) {
  check_index("one_hot", index);
  if (num_classes <= 0) fail<ValueError>("one_hot", "num_classes must be positive, got ", num_classes);
  Shape s = index.shape();
  s.push_back(num_classes);
  Tensor out = zeros(s, t);
  std::vector<int64_t> idx = index.to_vector<int64_t>();
  dispatch_all(t, [&]<class T>() {
    T* p = out.data<T>();
    for (size_t i = 0; i < idx.size(); ++i)
      p[int64_t(i) * num_classes + checked("one_hot", idx[i], num_classes, -1)] = T(1);
  });
  return out;
}

}  // namespace attnlab

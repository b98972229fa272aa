// Views and copies: reshape/view, transpose/permute, slice/narrow/select, expand, squeeze,
// unsqueeze, contiguous, clone, dtype casts. Views share storage; their backward maps the
// gradient back to the input's shape. Derivations: docs/backward.md#views.
#include <numeric>

#include "autograd/cases.h"
#include "autograd/node.h"
#include "core/cpu/copy.h"

namespace attnlab {
using namespace cases;

namespace {

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto p = std::make_shared<TensorImpl>();
  p->storage = base.impl().storage;
  p->offset = offset;
  p->shape = std::move(shape);
  p->strides = std::move(strides);
  p->dtype = base.dtype();
  return Tensor(p);
}

// Strides that let `shape` view the same elements as t, or an empty optional (PyTorch's rule:
// each run of merged input dims must be contiguous in itself).
bool view_strides(const Tensor& t, const Shape& shape, Shape& out) {
  out.assign(shape.size(), 0);
  if (t.numel() == 0 || t.dim() == 0) {
    out = contiguous_strides(shape);
    return true;
  }
  const Shape &os = t.shape(), &ost = t.strides();
  int64_t view_d = int64_t(shape.size()) - 1;
  int64_t chunk_base_stride = ost.empty() ? 1 : ost.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t td = int64_t(os.size()) - 1; td >= 0; --td) {
    tensor_numel *= os[td];
    if (td == 0 || (os[td - 1] != 1 && ost[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (td > 0) {
        chunk_base_stride = ost[td - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Shape infer_shape(const char* op, const Shape& s, int64_t numel) {
  Shape r = s;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < r.size(); ++i) {
    if (r[i] == -1) {
      if (infer >= 0) fail<ShapeError>(op, "only one dimension can be -1, got ", shape_str(s));
      infer = int64_t(i);
    } else if (r[i] < 0) {
      fail<ShapeError>(op, "invalid size in shape ", shape_str(s));
    } else {
      known *= r[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel % known != 0)
      fail<ShapeError>(op, "shape ", shape_str(s), " is invalid for ", numel, " elements");
    r[size_t(infer)] = numel / known;
  }
  if (shape_numel(r) != numel) fail<ShapeError>(op, "shape ", shape_str(s), " is invalid for ", numel, " elements");
  return r;
}

}  // namespace

// ---- reshape family --------------------------------------------------------------------------

static const OpDef kReshape(
    "reshape", "dx = reshape(g, x.shape)",
    {{"reshape [2,6] -> [3,4]", [](Generator& g) { return Inputs{rn(g, {2, 6})}; },
      [](const Inputs& in) { return in[0].reshape({3, -1}); }},
     {"reshape of non-contiguous (copies)", [](Generator& g) { return Inputs{rn_t(g, {3, 4})}; },
      [](const Inputs& in) { return in[0].reshape({12}); }},
     {"squeeze / unsqueeze / flatten", [](Generator& g) { return Inputs{rn(g, {2, 1, 3})}; },
      [](const Inputs& in) { return in[0].squeeze(1).unsqueeze(0).flatten(); }}});

static Tensor reshape_as_view(const Tensor& x, const Shape& target, const Shape& strides) {
  Tensor out = make_view(x, target, strides, x.storage_offset());
  if (needs_grad({x}))
    record(out, kReshape, {x}, [s = x.shape()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.reshape(s)};
    });
  return out;
}

Tensor Tensor::view(const Shape& s) const {
  Shape target = infer_shape("view", s, numel());
  Shape st;
  if (!view_strides(*this, target, st))
    fail<ShapeError>("view", "cannot view ", describe(*this), " with strides ", shape_str(strides()), " as ",
                     shape_str(target), " without a copy; use reshape");
  return reshape_as_view(*this, target, st);
}

Tensor Tensor::reshape(const Shape& s) const {
  Shape target = infer_shape("reshape", s, numel());
  if (target == shape()) return *this;
  Shape st;
  if (view_strides(*this, target, st)) return reshape_as_view(*this, target, st);
  return contiguous().view(target);
}

Tensor Tensor::squeeze(int64_t d) const {
  int64_t w = wrap_dim("squeeze", d, dim());
  if (dim() == 0 || shape()[w] != 1) return *this;
  Shape s = shape();
  s.erase(s.begin() + w);
  return reshape(s);
}
Tensor Tensor::squeeze() const {
  Shape s;
  for (int64_t x : shape())
    if (x != 1) s.push_back(x);
  return reshape(s);
}
Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t w = wrap_dim("unsqueeze", d, dim() + 1);
  Shape s = shape();
  s.insert(s.begin() + w, 1);
  return reshape(s);
}
Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  int64_t a = wrap_dim("flatten", start, dim()), b = wrap_dim("flatten", end, dim());
  if (a > b) fail<IndexError>("flatten", "start dim ", start, " is after end dim ", end);
  Shape s(shape().begin(), shape().begin() + a);
  int64_t m = 1;
  for (int64_t i = a; i <= b; ++i) m *= shape()[i];
  s.push_back(m);
  s.insert(s.end(), shape().begin() + b + 1, shape().end());
  return reshape(s);
}

// ---- permutations ----------------------------------------------------------------------------

static const OpDef kPermute("permute", "dx = permute(g, inverse order)",
                            {{"transpose of [3,4]", [](Generator& g) { return Inputs{rn(g, {3, 4})}; },
                              [](const Inputs& in) { return in[0].t(); }},
                             {"permute [2,3,4] by (2,0,1)", [](Generator& g) { return Inputs{rn(g, {2, 3, 4})}; },
                              [](const Inputs& in) { return in[0].permute({2, 0, 1}); }}});

Tensor Tensor::permute(const Shape& order) const {
  if (int64_t(order.size()) != dim())
    fail<ShapeError>("permute", "order ", shape_str(order), " does not match ", describe(*this));
  Shape s(order.size()), st(order.size()), inverse(order.size());
  std::vector<bool> used(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t d = wrap_dim("permute", order[i], dim());
    if (used[size_t(d)]) fail<ShapeError>("permute", "dim ", d, " repeated in order ", shape_str(order));
    used[size_t(d)] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
    inverse[size_t(d)] = int64_t(i);
  }
  Tensor out = make_view(*this, s, st, storage_offset());
  if (needs_grad({*this}))
    record(out, kPermute, {*this}, [inverse](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.permute(inverse)};
    });
  return out;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  int64_t wa = wrap_dim("transpose", a, dim()), wb = wrap_dim("transpose", b, dim());
  Shape order(static_cast<size_t>(dim()));
  std::iota(order.begin(), order.end(), 0);
  if (dim() > 0) std::swap(order[size_t(wa)], order[size_t(wb)]);
  return permute(order);
}

// ---- slicing ---------------------------------------------------------------------------------

static const OpDef kSlice("slice", "dx = zeros with g written into the sliced positions",
                          {{"narrow dim 1 of [3,5]", [](Generator& g) { return Inputs{rn(g, {3, 5})}; },
                            [](const Inputs& in) { return in[0].narrow(1, 1, 3); }},
                           {"step 2 on non-contiguous", [](Generator& g) { return Inputs{rn_t(g, {5, 4})}; },
                            [](const Inputs& in) { return in[0].slice(0, 0, 5, 2); }},
                           {"select", [](Generator& g) { return Inputs{rn(g, {3, 4})}; },
                            [](const Inputs& in) { return in[0].select(1, -1); }}});

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  int64_t w = wrap_dim("slice", d, dim());
  if (dim() == 0) fail<IndexError>("slice", "cannot slice a 0-d tensor");
  if (step <= 0) fail<ValueError>("slice", "step must be positive, got ", step);
  const int64_t n = shape()[w];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape(), st = strides();
  s[w] = (end - start + step - 1) / step;
  st[w] *= step;
  Tensor out = make_view(*this, s, st, storage_offset() + start * strides()[w]);
  if (needs_grad({*this}))
    record(out, kSlice, {*this}, [in_shape = shape(), w, start, end, step](const Tensor& g, const std::vector<bool>&) {
      Tensor gx = zeros(in_shape, g.dtype());
      cpu::copy_into(g, gx.slice(w, start, end, step));
      return std::vector<Tensor>{gx};
    });
  return out;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  int64_t w = wrap_dim("narrow", d, dim());
  if (dim() == 0) fail<IndexError>("narrow", "cannot narrow a 0-d tensor");
  if (start < 0 || length < 0 || start + length > shape()[w])
    fail<IndexError>("narrow", "range [", start, ", ", start + length, ") out of bounds for dim ", d, " of ",
                     describe(*this));
  return slice(w, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int64_t w = wrap_dim("select", d, dim());
  if (dim() == 0) fail<IndexError>("select", "cannot select from a 0-d tensor");
  const int64_t n = shape()[w];
  if (index < -n || index >= n)
    fail<IndexError>("select", "index ", index, " out of range for dim ", d, " of ", describe(*this));
  if (index < 0) index += n;
  return slice(w, index, index + 1).squeeze(w);
}

// ---- expand ----------------------------------------------------------------------------------

static const OpDef kExpand("expand", "dx = sum_to(g, x.shape)",
                           {{"[3,1] -> [2,3,4]", [](Generator& g) { return Inputs{rn(g, {3, 1})}; },
                             [](const Inputs& in) { return in[0].expand({2, 3, 4}); }}});

Tensor Tensor::expand(const Shape& s) const {
  if (s.size() < shape().size())
    fail<ShapeError>("expand", "cannot expand ", describe(*this), " to fewer dims ", shape_str(s));
  Shape target = s, st(s.size(), 0);
  size_t lead = s.size() - shape().size();
  for (size_t i = 0; i < s.size(); ++i) {
    if (i < lead) {
      if (s[i] < 0) fail<ShapeError>("expand", "size -1 not allowed for a new leading dim in ", shape_str(s));
      continue;
    }
    int64_t have = shape()[i - lead];
    if (s[i] == -1) target[i] = have;
    if (target[i] < 0) fail<ShapeError>("expand", "invalid size in ", shape_str(s));
    if (have == target[i]) st[i] = strides()[i - lead];
    else if (have != 1) fail<ShapeError>("expand", "cannot expand ", describe(*this), " to ", shape_str(s));
  }
  if (target == shape()) return *this;
  Tensor out = make_view(*this, target, st, storage_offset());
  if (needs_grad({*this}))
    record(out, kExpand, {*this}, [in_shape = shape()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{sum_to(g, in_shape)};
    });
  return out;
}

// ---- copies ----------------------------------------------------------------------------------

static const OpDef kCopy("copy", "dx = g (cast back to x's dtype)",
                         {{"contiguous of a transpose", [](Generator& g) { return Inputs{rn_t(g, {3, 4})}; },
                           [](const Inputs& in) { return in[0].contiguous(); }},
                          {"clone", [](Generator& g) { return Inputs{rn(g, {3, 4})}; },
                           [](const Inputs& in) { return in[0].clone(); }}});

static Tensor copy_op(const Tensor& x, DType t) {
  if (x.requires_grad() && !is_floating(t))
    fail<DTypeError>("to", "cannot cast ", describe(x), ", which requires grad, to ", dtype_name(t));
  Tensor out = cpu::copy_as(x, t);
  if (needs_grad({x}))
    record(out, kCopy, {x}, [src = x.dtype()](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g.dtype() == src ? g : cpu::copy_as(g, src)};
    });
  return out;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : copy_op(*this, dtype()); }
Tensor Tensor::clone() const { return copy_op(*this, dtype()); }
Tensor Tensor::to(DType t) const { return t == dtype() ? *this : copy_op(*this, t); }

}  // namespace attnlab

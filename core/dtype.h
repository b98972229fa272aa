// Element types and devices, chosen at run time; kernels are templated on the scalar type.
#pragma once
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace attnlab {

// f32 trains, f64 checks gradients; i64 holds indices and labels; b8 holds masks and comparisons.
enum class DType : uint8_t { f32, f64, i64, b8 };
enum class Device : uint8_t { cpu, cuda };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i64: return 8;
    case DType::b8: return 1;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i64: return "i64";
    case DType::b8: return "b8";
  }
  return "?";
}
inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64; }
inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }
inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }
inline std::ostream& operator<<(std::ostream& os, Device d) { return os << device_name(d); }

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::b8; }
template <> constexpr DType dtype_of<bool>() { return DType::b8; }

// Calls f.template operator()<T>() with T the scalar type of a floating dtype.
template <class F>
decltype(auto) dispatch_floating(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    default: fail<DTypeError>(op, "expected a floating tensor (f32 or f64), got ", dtype_name(t));
  }
}

// Same, over every dtype (b8 maps to uint8_t).
template <class F>
decltype(auto) dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::b8: return f.template operator()<uint8_t>();
  }
  return f.template operator()<float>();
}

// Converts one element between scalar types. b8 (uint8_t) holds 0 or 1: any non-zero value, NaN
// included, becomes 1, as a C++ bool cast would (a plain uint8_t cast truncates 0.5 to 0, keeps 2).
template <class D, class S>
D convert(S v) {
  if constexpr (std::is_same_v<D, uint8_t>) return D(v != S(0));
  else return D(v);
}

using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
// Elements of a shape; a product beyond int64 (a shape no machine can hold) throws ShapeError
// instead of wrapping to a small number that a later allocation would trust.
inline int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  bool overflow = false;
  for (int64_t d : s) overflow |= __builtin_mul_overflow(n, d, &n);
  if (overflow) {
    for (int64_t d : s)
      if (d == 0) return 0;
    fail<ShapeError>("shape", "the number of elements of ", shape_str(s), " overflows 64 bits");
  }
  return n;
}
inline Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}
// Wraps a possibly negative dim into [0, ndim), or throws IndexError naming the op.
inline int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim) {
  int64_t n = ndim == 0 ? 1 : ndim;
  if (dim < -n || dim >= n) fail<IndexError>(op, "dim ", dim, " out of range for a tensor with ", ndim, " dims");
  return dim < 0 ? dim + n : dim;
}

}  // namespace attnlab

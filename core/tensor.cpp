#include "core/tensor.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/cpu/copy.h"
#include "core/cpu/loops.h"
#include "core/rng.h"

namespace attnlab {

Storage::Storage(size_t bytes, Device dev) : nbytes(bytes), device(dev) {
  if (dev != Device::cpu)
    fail<DeviceError>("allocate", "device ", device_name(dev), " is not available in this build (CPU only so far)");
  data = cpu_allocator::allocate(bytes);
}
Storage::~Storage() { cpu_allocator::deallocate(data, nbytes); }

TensorImpl& Tensor::impl() const {
  if (!impl_) throw Error("use of an undefined Tensor (default-constructed, or a gradient that was never computed)");
  return *impl_;
}

// wrap_dim lets a 0-d tensor name dim 0 (for reductions), but there is no size or stride to read.
int64_t Tensor::size(int64_t d) const {
  if (dim() == 0) fail<IndexError>("size", "dim ", d, " out of range for a 0-d tensor");
  return shape()[wrap_dim("size", d, dim())];
}
int64_t Tensor::stride(int64_t d) const {
  if (dim() == 0) fail<IndexError>("stride", "dim ", d, " out of range for a 0-d tensor");
  return strides()[wrap_dim("stride", d, dim())];
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data) + impl().offset * int64_t(element_size());
}

template <class T>
T* Tensor::data() const {
  if (dtype_of<T>() != dtype())
    fail<DTypeError>("data", "asked for ", dtype_name(dtype_of<T>()), " elements of a ", describe(*this), " tensor");
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int64_t* Tensor::data<int64_t>() const;
template uint8_t* Tensor::data<uint8_t>() const;

double Tensor::item_double() const {
  if (numel() != 1) fail<ShapeError>("item", "needs a one-element tensor, got ", describe(*this));
  return dispatch_all(dtype(), [&]<class T>() { return double(*data<T>()); });
}
template <class T>
T Tensor::item() const {  // read as the stored type: an i64 above 2^53 would not survive a double
  if (numel() != 1) fail<ShapeError>("item", "needs a one-element tensor, got ", describe(*this));
  return dispatch_all(dtype(), [&]<class S>() { return T(*data<S>()); });
}
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int64_t Tensor::item<int64_t>() const;
template bool Tensor::item<bool>() const;

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = cpu::copy_as(*this, dtype_of<T>());
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

double Tensor::at(std::initializer_list<int64_t> index) const {
  if (int64_t(index.size()) != dim())
    fail<IndexError>("at", "index has ", index.size(), " entries for ", describe(*this));
  int64_t off = 0, d = 0;
  for (int64_t i : index) {
    if (i < -shape()[d] || i >= shape()[d])
      fail<IndexError>("at", "index ", i, " out of range for dim ", d, " of ", describe(*this));
    off += (i < 0 ? i + shape()[d] : i) * strides()[d];
    ++d;
  }
  return dispatch_all(dtype(), [&]<class T>() { return double(data<T>()[off]); });
}

Tensor& Tensor::set_requires_grad(bool r) {
  if (r && !is_floating(dtype()))
    fail<DTypeError>("requires_grad", "only floating tensors can require grad, got ", describe(*this));
  if (!is_leaf()) fail<AutogradError>("requires_grad", "can only be set on leaf tensors (use detach() first)");
  impl().requires_grad = r;
  return *this;
}

void Tensor::set_grad(const Tensor& g) {
  if (g.defined() && (g.shape() != shape() || g.dtype() != dtype()))
    fail<ShapeError>("set_grad", "gradient ", describe(g), " does not match tensor ", describe(*this));
  impl().grad = g.defined() ? g.impl_ptr() : nullptr;
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const { run_backward(*this, grad, retain_graph); }

Tensor Tensor::detach() const {
  auto p = std::make_shared<TensorImpl>();
  p->storage = impl().storage;
  p->offset = impl().offset;
  p->shape = shape();
  p->strides = strides();
  p->dtype = dtype();
  p->name = name();
  return Tensor(p);
}

Tensor& Tensor::fill_(double v) {
  check_inplace(*this, "fill_");
  cpu::fill(*this, v);
  bump_version();
  return *this;
}

namespace {
// An expanded view (stride 0) maps several elements to one address: an in-place update would
// apply to it several times, in no defined order. fill_ is harmless and stays allowed.
void check_no_internal_overlap(const Tensor& t, const char* op) {
  if (t.numel() == 0) return;  // e.g. [3, 0] has stride 0 on its size-3 dim, but nothing to write
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.strides()[d] == 0 && t.shape()[d] > 1)
      fail<ValueError>(op, "in-place write to ", describe(t), ", an expanded view whose elements share memory; ",
                       "write to a contiguous() copy instead");
}
}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  check_no_internal_overlap(*this, "copy_");
  cpu::copy_into(src, *this);
  bump_version();
  return *this;
}

namespace {
// this = f(this, other) in place, other broadcast to this's shape.
template <class F>
void inplace_binary(const Tensor& self, const Tensor& other, const char* op, F f) {
  if (self.dtype() != other.dtype())
    fail<DTypeError>(op, "dtype mismatch: ", describe(self), " and ", describe(other));
  check_no_internal_overlap(self, op);
  Shape b = broadcast_shapes(op, other.shape(), self.shape());
  if (b != self.shape())
    fail<ShapeError>(op, "cannot broadcast ", describe(other), " into the in-place target ", describe(self));
  dispatch_floating(self.dtype(), op, [&]<class T>() {
    T* ps = self.data<T>();
    const T* po = other.data<T>();
    cpu::for_each_row<2>(self.shape(), {self.strides(), cpu::broadcast_strides(other, self.shape())},
                         [&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
                           for (int64_t i = 0; i < n; ++i) {
                             T& x = ps[off[0] + i * st[0]];
                             x = f(x, po[off[1] + i * st[1]]);
                           }
                         });
  });
}
}  // namespace

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  inplace_binary(*this, other, "add_", [alpha](auto x, auto y) { return decltype(x)(x + alpha * y); });
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(const Tensor& other) {
  check_inplace(*this, "mul_");
  inplace_binary(*this, other, "mul_", [](auto x, auto y) { return x * y; });
  bump_version();
  return *this;
}

Tensor& Tensor::mul_(double s) { return mul_(scalar_tensor(s, dtype())); }

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined";
  return cat(dtype_name(t.dtype()), shape_str(t.shape()));
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  os << "Tensor(" << describe(t);
  if (t.requires_grad()) os << ", requires_grad";
  os << ", [";
  const std::streamsize prec = os.precision(6);  // restored below: the caller's stream is not ours to change
  auto print = [&](const auto& v) {  // i64 as integers: through double, 1234567 would print as 1.23457e+06
    size_t n = std::min<size_t>(v.size(), 16);
    for (size_t i = 0; i < n; ++i) os << (i ? ", " : "") << v[i];
    if (v.size() > n) os << ", ...";
  };
  if (t.dtype() == DType::i64) print(t.to_vector<int64_t>());
  else print(t.to_vector<double>());
  os.precision(prec);
  return os << "])";
}

// ---- creation --------------------------------------------------------------------------------

namespace {
// "linear (functional.cpp:47)": the function that asked for a tensor, for size errors.
std::string requester(const SourceLocation& loc) {
  std::string file = loc.file;
  if (auto sl = file.rfind('/'); sl != std::string::npos) file = file.substr(sl + 1);
  return cat(loc.function, " (", file, ":", loc.line, ")");
}

std::string bytes_str(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  std::ostringstream os;
  os.precision(b < 10 ? 2 : 3);
  os << b << " " << units[u];
  return os.str();
}

// The bytes a fresh contiguous tensor of this shape needs, checked against 64-bit sizes and against
// the machine's memory before anything is allocated.
size_t checked_bytes(const Shape& s, DType t, const SourceLocation& loc) {
  int64_t n = 1;
  bool overflow = false;
  for (int64_t x : s) {
    if (x < 0) fail<ShapeError>("empty", "negative size in shape ", shape_str(s), ", asked for by ", requester(loc));
    overflow |= __builtin_mul_overflow(n, x, &n);
  }
  size_t bytes = 0;
  for (int64_t x : s)
    if (x == 0) return 0;  // zero elements, whatever the other dims (their product may have wrapped to 0 too)
  if (overflow || __builtin_mul_overflow(size_t(n), dtype_size(t), &bytes))
    fail<MemoryError>(requester(loc).c_str(), "a ", dtype_name(t), shape_str(s),
                      " tensor: its size in bytes overflows 64 bits");
  static const double memory = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (memory > 0 && double(bytes) > memory)
    fail<MemoryError>(requester(loc).c_str(), "a ", dtype_name(t), shape_str(s), " tensor needs ",
                      bytes_str(double(bytes)), ", more than this machine's memory (", bytes_str(memory), ")");
  return bytes;
}
}  // namespace

Tensor empty(const Shape& s, DType t, Device d, SourceLocation loc) {
  const size_t bytes = checked_bytes(s, t, loc);
  auto p = std::make_shared<TensorImpl>();
  p->storage = std::make_shared<Storage>(bytes, d);
  p->shape = s;
  p->strides = contiguous_strides(s);
  p->dtype = t;
  return Tensor(p);
}

Tensor full(const Shape& s, double value, DType t, SourceLocation loc) {
  Tensor out = empty(s, t, Device::cpu, loc);
  cpu::fill(out, value);
  return out;
}
Tensor zeros(const Shape& s, DType t, SourceLocation loc) { return full(s, 0.0, t, loc); }
Tensor ones(const Shape& s, DType t, SourceLocation loc) { return full(s, 1.0, t, loc); }
Tensor zeros_like(const Tensor& x, SourceLocation loc) { return zeros(x.shape(), x.dtype(), loc); }
Tensor ones_like(const Tensor& x, SourceLocation loc) { return ones(x.shape(), x.dtype(), loc); }
Tensor full_like(const Tensor& x, double value, SourceLocation loc) { return full(x.shape(), value, x.dtype(), loc); }
Tensor scalar_tensor(double value, DType t) { return full({}, value, t); }

Tensor arange(double start, double end, double step, DType t) {
  if (step == 0 || !std::isfinite(start) || !std::isfinite(end) || !std::isfinite(step))
    fail<ValueError>("arange", "needs finite bounds and a non-zero step, got (", start, ", ", end, ", ", step, ")");
  // The count as a double first: beyond int64 the cast would be undefined, so refuse it here.
  const double count = std::ceil((end - start) / step);
  if (!(count < 0x1p62))
    fail<MemoryError>("arange", "(", start, ", ", end, ", ", step, ") has ", count, " elements: beyond any memory");
  const int64_t n = std::max<int64_t>(0, int64_t(count));
  Tensor out = empty({n}, t);
  dispatch_all(t, [&]<class T>() {
    T* p = out.data<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = convert<T>(start + double(i) * step);
  });
  return out;
}
Tensor arange(int64_t n, DType t) { return arange(0.0, double(n), 1.0, t); }

namespace {
template <class T>
Tensor from_vector_impl(const std::vector<T>& v, const Shape& s) {
  if (int64_t(v.size()) != shape_numel(s))
    fail<ShapeError>("from_vector", v.size(), " values do not fill shape ", shape_str(s));
  Tensor out = empty(s, dtype_of<T>());
  if (!v.empty()) std::memcpy(out.raw_data(), v.data(), v.size() * sizeof(T));
  return out;
}
}  // namespace
Tensor from_vector(const std::vector<float>& v, const Shape& s) { return from_vector_impl(v, s); }
Tensor from_vector(const std::vector<double>& v, const Shape& s) { return from_vector_impl(v, s); }
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s) { return from_vector_impl(v, s); }
Tensor from_vector(const std::vector<double>& v, const Shape& s, DType t) {
  return cpu::copy_as(from_vector_impl(v, s), t);
}

Tensor eye(int64_t n, DType t) {
  Tensor out = zeros({n, n}, t);
  dispatch_all(t, [&]<class T>() {
    for (int64_t i = 0; i < n; ++i) out.data<T>()[i * n + i] = T(1);
  });
  return out;
}

// ---- random ----------------------------------------------------------------------------------

Generator& default_generator() {
  static Generator g(0);
  return g;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

namespace {
// out[i] = draw(bits(first + i)) for every element, in parallel; bit-identical for any thread count.
template <class T, class Draw>
Tensor random_tensor(const Shape& s, DType t, Generator* g, const char* op, const SourceLocation& loc, Draw draw) {
  if (dtype_of<T>() != t) fail<DTypeError>(op, "unsupported dtype ", dtype_name(t));
  Generator& gen = g ? *g : default_generator();
  Tensor out = empty(s, t, Device::cpu, loc);
  const int64_t n = out.numel();
  const uint64_t first = gen.advance(uint64_t(n));
  T* p = out.data<T>();
#pragma omp parallel for if (n > cpu::parallel_grain()) schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = draw(gen.bits(first + uint64_t(i)));
  return out;
}

template <class T>
T uniform_open(const std::array<uint32_t, 4>& b, int pair) {
  if constexpr (std::is_same_v<T, float>) return u32_to_open_float(b[pair]);
  else return u64_to_open_double(b[2 * pair], b[2 * pair + 1]);
}
}  // namespace

Tensor rand(const Shape& s, DType t, Generator* g, SourceLocation loc) {
  return dispatch_floating(t, "rand", [&]<class T>() {
    return random_tensor<T>(s, t, g, "rand", loc, [](const std::array<uint32_t, 4>& b) {
      T u = uniform_open<T>(b, 0);
      return u >= T(1) ? T(0) : u;  // [0, 1): the open-interval value never reaches 1 except by rounding
    });
  });
}

Tensor randn(const Shape& s, DType t, Generator* g, SourceLocation loc) {
  return dispatch_floating(t, "randn", [&]<class T>() {
    return random_tensor<T>(s, t, g, "randn", loc, [](const std::array<uint32_t, 4>& b) {
      // Box–Muller on the element's own pair of uniforms.
      double u1 = std::is_same_v<T, float> ? double(u32_to_open_float(b[0])) : u64_to_open_double(b[0], b[1]);
      double u2 = std::is_same_v<T, float> ? double(u32_to_open_float(b[1])) : u64_to_open_double(b[2], b[3]);
      return T(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    });
  });
}

Tensor gumbel(const Shape& s, DType t, Generator* g, SourceLocation loc) {
  return dispatch_floating(t, "gumbel", [&]<class T>() {
    return random_tensor<T>(s, t, g, "gumbel", loc, [](const std::array<uint32_t, 4>& b) {
      T u = uniform_open<T>(b, 0);
      return T(-std::log(-std::log(u)));
    });
  });
}

Tensor randint(int64_t low, int64_t high, const Shape& s, Generator* g, SourceLocation loc) {
  if (high <= low) fail<ValueError>("randint", "empty range [", low, ", ", high, ")");
  const uint64_t range = uint64_t(high - low);
  return random_tensor<int64_t>(s, DType::i64, g, "randint", loc, [=](const std::array<uint32_t, 4>& b) {
    uint64_t v = (uint64_t(b[0]) << 32) | b[1];
    return low + int64_t(v % range);  // bias ≤ range / 2^64: negligible
  });
}

}  // namespace attnlab

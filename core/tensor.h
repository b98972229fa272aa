// Tensor: a strided view onto shared storage, with autograd metadata. Copying a Tensor copies a
// handle (like a shared_ptr); ops return new handles; views share storage with their base.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/error.h"

namespace attnlab {

class Node;

// Owns one allocation. The version counter is shared by every view of it and bumped by in-place
// writes, so autograd can tell when a tensor it saved was overwritten.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::cpu;
  uint64_t version = 0;
  Storage(size_t bytes, Device dev);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;
  std::string name;  // optional label shown by audits and error messages
};

class Generator;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return int64_t(impl().shape.size()); }
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device; }
  int64_t storage_offset() const { return impl().offset; }
  bool is_contiguous() const;
  size_t element_size() const { return dtype_size(dtype()); }

  // Pointer to the first element (the storage offset applied). Checks T against the dtype.
  template <class T> T* data() const;
  void* raw_data() const;
  template <class T> T item() const;  // the value of a one-element tensor
  double item_double() const;
  template <class T> std::vector<T> to_vector() const;  // row-major copy of all elements
  double at(std::initializer_list<int64_t> index) const;  // one element, as double

  // Autograd.
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool r = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g);
  void zero_grad() { impl().grad.reset(); }
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  Tensor detach() const;  // shares storage, cut from the graph
  uint64_t version() const { return impl().storage->version; }
  void bump_version() const { impl().storage->version++; }
  const std::string& name() const { return impl().name; }
  Tensor& set_name(std::string n) { impl().name = std::move(n); return *this; }

  // Views (share storage; differentiable).
  Tensor reshape(const Shape& s) const;
  Tensor view(const Shape& s) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor t() const { return transpose(-2, -1); }
  Tensor permute(const Shape& order) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& s) const;
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType t) const;

  // Reductions (dim may be negative).
  Tensor sum() const;
  Tensor sum(int64_t dim, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(int64_t dim, bool keepdim = false) const;

  // In-place (refused on tensors that require grad while grad mode is on).
  Tensor& fill_(double v);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double s);
  Tensor& mul_(const Tensor& other);

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::string describe(const Tensor& t);  // "f32[2, 3]" for messages

// ---- creation ------------------------------------------------------------------------------
// Creation functions take the caller's source location: a tensor too large for the machine (or for
// 64-bit sizes) is refused before any memory is touched, with a MemoryError naming the function that
// asked for it and how much.
struct SourceLocation {
  const char* file = "";
  const char* function = "";
  int line = 0;
  // The builtins (GCC and clang alike; clang 14 has no std::source_location) take the location of
  // the call that evaluates this default argument: the caller of empty(), zeros(), ...
  static constexpr SourceLocation current(const char* file = __builtin_FILE(),
                                          const char* function = __builtin_FUNCTION(), int line = __builtin_LINE()) {
    return {file, function, line};
  }
};
Tensor empty(const Shape& s, DType t = DType::f32, Device d = Device::cpu, SourceLocation loc = SourceLocation::current());
Tensor zeros(const Shape& s, DType t = DType::f32, SourceLocation loc = SourceLocation::current());
Tensor ones(const Shape& s, DType t = DType::f32, SourceLocation loc = SourceLocation::current());
Tensor full(const Shape& s, double value, DType t = DType::f32, SourceLocation loc = SourceLocation::current());
Tensor zeros_like(const Tensor& x, SourceLocation loc = SourceLocation::current());
Tensor ones_like(const Tensor& x, SourceLocation loc = SourceLocation::current());
Tensor full_like(const Tensor& x, double value, SourceLocation loc = SourceLocation::current());
Tensor scalar_tensor(double value, DType t = DType::f32);
Tensor arange(double start, double end, double step = 1.0, DType t = DType::f32);
Tensor arange(int64_t n, DType t = DType::i64);
Tensor from_vector(const std::vector<float>& v, const Shape& s);
Tensor from_vector(const std::vector<double>& v, const Shape& s);
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s);
Tensor from_vector(const std::vector<double>& v, const Shape& s, DType t);
Tensor eye(int64_t n, DType t = DType::f32);

// Random tensors from a counter-based generator (core/rng.h); nullptr uses the global generator.
Tensor rand(const Shape& s, DType t = DType::f32, Generator* g = nullptr, SourceLocation loc = SourceLocation::current());   // U[0, 1)
Tensor randn(const Shape& s, DType t = DType::f32, Generator* g = nullptr, SourceLocation loc = SourceLocation::current());  // N(0, 1)
Tensor gumbel(const Shape& s, DType t = DType::f32, Generator* g = nullptr, SourceLocation loc = SourceLocation::current()); // Gumbel(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& s, Generator* g = nullptr, SourceLocation loc = SourceLocation::current());  // i64 in [low, high)

// ---- elementwise (broadcasting; differentiable on f32/f64) -----------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double p);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x, bool tanh_approximation = false);
Tensor abs(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a);
Tensor operator+(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator-(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);
Tensor operator/(double s, const Tensor& a);

// Comparisons (not differentiable) give b8 tensors.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);
bool equal(const Tensor& a, const Tensor& b);  // same shape and bit-identical values

// ---- reductions --------------------------------------------------------------------------
Tensor sum(const Tensor& x);
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor sum(const Tensor& x, const Shape& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor max(const Tensor& x);
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor min(const Tensor& x);
Tensor min(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor logsumexp(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor var(const Tensor& x, int64_t dim, bool unbiased = true, bool keepdim = false);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// Sums a broadcast gradient back to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra ------------------------------------------------------------------------
// (…, m, k) @ (…, k, n) with broadcast batch dims; 1-D operands as in NumPy. Transposed views go
// to cblas as flags, never copied.
Tensor matmul(const Tensor& a, const Tensor& b);

// ---- indexing and joining --------------------------------------------------------------------
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim);
Tensor one_hot(const Tensor& index, int64_t num_classes, DType t = DType::f32);

// Broadcast shape of two shapes, or ShapeError naming op.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

}  // namespace attnlab

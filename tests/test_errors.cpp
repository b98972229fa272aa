// Every bad input gets the right exception type, and a message that starts with the op's name
// and says what was wrong (shapes, dtypes, the offending index or dim).
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <type_traits>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace attnlab;

namespace {

// Runs f, requires it to throw exactly E (not a sibling class), and returns the message.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    const bool right_type = dynamic_cast<const E*>(&e) != nullptr;
    CHECK_MESSAGE(right_type, "threw a different attnlab::Error: ", e.what());
    return e.what();
  } catch (const std::exception& e) {
    FAIL("threw something that is not an attnlab::Error: ", e.what());
    return "";
  }
  FAIL("no exception thrown");
  return "";
}

// The message starts with "op:" and contains every fragment.
template <class E, class F>
void expect(F&& f, const std::string& op, std::initializer_list<std::string> fragments = {}) {
  std::string msg = message_of<E>(std::forward<F>(f));
  INFO("message: ", msg);
  CHECK(msg.rfind(op + ":", 0) == 0);
  for (const std::string& part : fragments) CHECK_MESSAGE(msg.find(part) != std::string::npos, "missing '", part, "'");
}

Tensor i64v(std::vector<int64_t> v, const Shape& s) { return from_vector(v, s); }

}  // namespace

TEST_CASE("the exception hierarchy") {
  static_assert(std::is_base_of_v<std::runtime_error, Error>);
  static_assert(std::is_base_of_v<Error, ShapeError>);
  static_assert(std::is_base_of_v<Error, DTypeError>);
  static_assert(std::is_base_of_v<Error, DeviceError>);
  static_assert(std::is_base_of_v<Error, IndexError>);
  static_assert(std::is_base_of_v<Error, ValueError>);
  static_assert(std::is_base_of_v<Error, AutogradError>);
  static_assert(std::is_base_of_v<Error, IOError>);
  try {
    fail<ShapeError>("my_op", "bad shape ", shape_str({2, 3}), " and ", 4);
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "my_op: bad shape [2, 3] and 4");
  }
  CHECK_THROWS_AS(Tensor().dim(), Error);  // an undefined tensor is misuse, not a crash
  CHECK_THROWS_AS(Tensor() + ones({1}), Error);
}

TEST_CASE("dtype errors name the op and both dtypes") {
  Tensor a = ones({2}), b = ones({2}, DType::f64);
  expect<DTypeError>([&] { add(a, b); }, "add", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { a + b; }, "add", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { sub(a, b); }, "sub", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { mul(b, a); }, "mul", {"f64[2]", "f32[2]"});
  expect<DTypeError>([&] { div(a, b); }, "div");
  expect<DTypeError>([&] { pow(a, b); }, "pow");
  expect<DTypeError>([&] { maximum(a, b); }, "maximum");
  expect<DTypeError>([&] { minimum(a, b); }, "minimum");
  expect<DTypeError>([&] { eq(a, b); }, "eq", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { lt(a, b); }, "lt");
  expect<DTypeError>([&] { matmul(ones({2, 2}), ones({2, 2}, DType::f64)); }, "matmul", {"f32[2, 2]", "f64[2, 2]"});
  expect<DTypeError>([&] { where(ones({2}, DType::b8), a, b); }, "where");
  expect<DTypeError>([&] { where(a, a, a); }, "where", {"b8"});
  expect<DTypeError>([&] { concat({a, b}, 0); }, "concat");
  expect<DTypeError>([&] { a.add_(b); }, "add_", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { a.mul_(b); }, "mul_");

  Tensor n = i64v({1, 2}, {2});
  for (auto [op, fn] : std::vector<std::pair<std::string, std::function<void()>>>{
           {"exp", [&] { exp(n); }},
           {"log", [&] { log(n); }},
           {"tanh", [&] { tanh(n); }},
           {"sigmoid", [&] { sigmoid(n); }},
           {"relu", [&] { relu(n); }},
           {"gelu", [&] { gelu(n); }},
           {"sqrt", [&] { sqrt(n); }},
           {"clamp", [&] { clamp(n, 0, 1); }},
           {"neg", [&] { neg(n); }},
           {"add", [&] { add(n, n); }},
           {"sum", [&] { sum(n); }},
           {"sum", [&] { sum(n, 0); }},
           {"max", [&] { max(n, 0); }},
           {"argmax", [&] { argmax(n, 0); }},
           {"logsumexp", [&] { logsumexp(n, 0); }},
           {"softmax", [&] { softmax(n, 0); }},
           {"log_softmax", [&] { log_softmax(n, 0); }},
           {"var", [&] { var(n, 0); }},
           {"matmul", [&] { matmul(n, n); }},
       }) {
    INFO(op);
    expect<DTypeError>(fn, op, {"i64"});
  }
  expect<DTypeError>([&] { n.set_requires_grad(true); }, "requires_grad", {"i64[2]"});
  expect<DTypeError>([&] { ones({1}, DType::b8).set_requires_grad(true); }, "requires_grad", {"b8"});
  expect<DTypeError>([&] { n.data<float>(); }, "data", {"f32", "i64[2]"});
  expect<DTypeError>([&] { rand({2}, DType::i64); }, "rand");
  expect<DTypeError>([&] { randn({2}, DType::b8); }, "randn");
  expect<DTypeError>([&] { logical_not(a); }, "logical_not");
  expect<DTypeError>([&] { masked_fill(a, a, 0); }, "masked_fill", {"b8", "f32[2]"});
  expect<DTypeError>([&] { gather(a, 0, a); }, "gather", {"i64"});
  expect<DTypeError>([&] { index_select(a, 0, a); }, "index_select", {"i64"});
  expect<DTypeError>([&] { one_hot(a, 3); }, "one_hot");
  expect<DTypeError>([&] { scatter_add(a, 0, i64v({0}, {1}), b); }, "scatter_add", {"f32[2]", "f64[2]"});
  expect<DTypeError>([&] { index_add(a, 0, i64v({0}, {1}), ones({1}, DType::f64)); }, "index_add");
  Tensor p = ones({2});
  p.set_requires_grad(true);
  expect<DTypeError>([&] { p.to(DType::i64); }, "to", {"i64"});  // a cast that would drop the graph
}

TEST_CASE("shape errors name the op and the shapes") {
  expect<ShapeError>([] { ones({2, 3}) + ones({3, 2}); }, "add", {"[2, 3]", "[3, 2]"});
  expect<ShapeError>([] { mul(ones({4}), ones({5})); }, "mul", {"[4]", "[5]"});
  expect<ShapeError>([] { matmul(ones({}), ones({2})); }, "matmul", {"f32[]"});
  expect<ShapeError>([] { matmul(ones({2}), ones({})); }, "matmul", {"at least 1-D"});
  expect<ShapeError>([] { matmul(ones({2, 3}), ones({2, 3})); }, "matmul", {"[2, 3]"});
  expect<ShapeError>([] { ones({4, 4}).reshape({3, 5}); }, "reshape", {"[3, 5]", "16"});
  expect<ShapeError>([] { ones({4, 4}).reshape({-1, 3}); }, "reshape", {"[-1, 3]", "16"});
  expect<ShapeError>([] { ones({4, 4}).view({17}); }, "view", {"[17]"});
  expect<ShapeError>([] { ones({4, 4}).t().view({16}); }, "view", {"reshape"});
  expect<ShapeError>([] { ones({2, 3}).expand({2, 4}); }, "expand", {"[2, 4]"});
  expect<ShapeError>([] { ones({2, 3}).permute({0}); }, "permute");
  expect<ShapeError>([] { empty({2, -1}); }, "empty", {"[2, -1]"});
  expect<ShapeError>([] { from_vector(std::vector<float>{1, 2}, {3}); }, "from_vector", {"[3]"});
  expect<ShapeError>([] { ones({2}).item<float>(); }, "item", {"f32[2]"});
  expect<ShapeError>([] { concat({ones({2, 3}), ones({3, 2})}, 0); }, "concat", {"[2, 3]", "[3, 2]"});
  expect<ShapeError>([] { stack({ones({2}), ones({3})}, 0); }, "stack", {"[2]", "[3]"});
  expect<ShapeError>([] { split(ones({5}), std::vector<int64_t>{2, 2}, 0); }, "split", {"4", "5"});
  expect<ShapeError>([] { masked_fill(ones({2}), ones({3, 2}, DType::b8), 0); }, "masked_fill");
  expect<ShapeError>([] { gather(ones({2, 2}), 0, i64v({0}, {1})); }, "gather");
  expect<ShapeError>([] { index_select(ones({2, 2}), 0, i64v({0}, {1, 1})); }, "index_select", {"1-D"});
  expect<ShapeError>([] { ones({3}).copy_(ones({2, 3})); }, "copy_", {"[2, 3]", "[3]"});
  expect<ShapeError>([] { ones({3}).add_(ones({2, 3})); }, "add_");
  expect<ShapeError>([] { sum_to(ones({2, 3}), {4}); }, "sum_to");
  Tensor l = ones({2});
  l.set_requires_grad(true);
  expect<ShapeError>([&] { l.backward(ones({3})); }, "backward", {"f32[3]", "f32[2]"});
}

TEST_CASE("dims out of range give IndexError naming the op and the dim") {
  Tensor x = ones({2, 3});
  expect<IndexError>([&] { sum(x, 2); }, "sum", {"dim 2", "2 dims"});
  expect<IndexError>([&] { sum(x, -3); }, "sum", {"dim -3"});
  expect<IndexError>([&] { mean(x, 5); }, "mean");
  expect<IndexError>([&] { max(x, 2); }, "max");
  expect<IndexError>([&] { min(x, -3); }, "min");
  expect<IndexError>([&] { argmax(x, 2); }, "argmax");
  expect<IndexError>([&] { logsumexp(x, 2); }, "logsumexp");
  expect<IndexError>([&] { softmax(x, 2); }, "softmax");
  expect<IndexError>([&] { log_softmax(x, -3); }, "log_softmax");
  expect<IndexError>([&] { var(x, 2); }, "var");
  expect<IndexError>([&] { x.transpose(0, 2); }, "transpose");
  expect<IndexError>([&] { x.unsqueeze(3); }, "unsqueeze");
  expect<IndexError>([&] { x.squeeze(2); }, "squeeze");
  expect<IndexError>([&] { x.flatten(0, 2); }, "flatten");
  expect<IndexError>([&] { x.size(2); }, "size");
  expect<IndexError>([&] { x.stride(-3); }, "stride");
  expect<IndexError>([&] { x.slice(2, 0, 1); }, "slice");
  expect<IndexError>([&] { x.narrow(2, 0, 1); }, "narrow");
  expect<IndexError>([&] { x.select(2, 0); }, "select");
  expect<IndexError>([&] { concat({x, x}, 2); }, "concat");
  expect<IndexError>([&] { stack({x, x}, 3); }, "stack");
  expect<IndexError>([&] { split(x, 1, 2); }, "split");
  expect<IndexError>([&] { gather(x, 2, i64v({0, 0}, {1, 2})); }, "gather");
  expect<IndexError>([&] { index_select(x, 2, i64v({0}, {1})); }, "index_select");
  expect<IndexError>([&] { sum(x, Shape{0, 0}); }, "sum", {"twice"});
  expect<IndexError>([&] { scalar_tensor(1).size(0); }, "size");
  expect<IndexError>([&] { scalar_tensor(1).select(0, 0); }, "select");
}

TEST_CASE("indices out of bounds give IndexError with the index and the bound") {
  Tensor x = ones({2, 3});
  expect<IndexError>([&] { x.at({2, 0}); }, "at", {"2"});
  expect<IndexError>([&] { x.at({0}); }, "at");
  expect<IndexError>([&] { x.select(1, 3); }, "select", {"3"});
  expect<IndexError>([&] { x.narrow(1, 2, 2); }, "narrow", {"[2, 4)"});
  expect<IndexError>([&] { gather(x, 1, i64v({3, 0}, {1, 2})); }, "gather", {"index 3", "[0, 3)"});
  expect<IndexError>([&] { gather(x, 1, i64v({-1, 0}, {1, 2})); }, "gather", {"-1"});
  expect<IndexError>([&] { scatter_add(x, 0, i64v({2}, {1, 1}), x); }, "scatter_add", {"index 2", "[0, 2)"});
  expect<IndexError>([&] { index_select(x, 1, i64v({0, 7}, {2})); }, "index_select", {"7"});
  expect<IndexError>([&] { index_add(x, 0, i64v({5}, {1}), ones({1, 3})); }, "index_add", {"5"});
  expect<IndexError>([&] { one_hot(i64v({4}, {1}), 4); }, "one_hot", {"4"});
  expect<IndexError>([&] { one_hot(i64v({-2}, {1}), 4); }, "one_hot", {"-2"});
}

TEST_CASE("value errors") {
  expect<ValueError>([] { arange(0.0, 1.0, 0.0); }, "arange");
  expect<ValueError>([] { clamp(ones({1}), 2, 1); }, "clamp", {"lo=2", "hi=1"});
  expect<ValueError>([] { randint(3, 3, {2}); }, "randint", {"[3, 3)"});
  expect<ValueError>([] { split(ones({4}), 0, 0); }, "split");
  expect<ValueError>([] { mean(ones({0})); }, "mean");
  expect<ValueError>([] { max(ones({0})); }, "max");
  expect<ValueError>([] { var(ones({1}), 0); }, "var");
  expect<ValueError>([] { concat({}, 0); }, "concat");
  expect<ValueError>([] { stack({}, 0); }, "stack");
  expect<ValueError>([] { one_hot(i64v({0}, {1}), 0); }, "one_hot");
  expect<ValueError>([] { ones({4}).slice(0, 0, 4, 0); }, "slice", {"step"});
  expect<ValueError>([] { ones({1}).expand({3}).add_(ones({3})); }, "add_", {"expanded"});
}

TEST_CASE("autograd misuse gives AutogradError naming what went wrong") {
  Tensor x = ones({2}, DType::f64);
  x.set_requires_grad(true);
  expect<AutogradError>([&] { x.add_(ones({2}, DType::f64)); }, "add_", {"requires grad", "NoGradGuard"});
  expect<AutogradError>([&] { (x * 2.0).set_requires_grad(false); }, "requires_grad", {"leaf"});
  expect<AutogradError>([] { ones({2}).sum().backward(); }, "backward", {"does not require grad"});
  expect<AutogradError>([&] { (x * 2.0).backward(); }, "backward", {"one-element"});
  Tensor y = (x * x).sum();
  y.backward();
  expect<AutogradError>([&] { y.backward(); }, "sum", {"retain_graph"});
  Tensor z = exp(x).sum();
  {
    NoGradGuard ng;
    x.fill_(3);
  }
  expect<AutogradError>([&] { z.backward(); }, "exp", {"modified in place", "f64[2]"});
}

TEST_CASE("CUDA tensors are refused in this CPU-only build") {
  expect<DeviceError>([] { empty({2}, DType::f32, Device::cuda); }, "allocate", {"cuda"});
  expect<DeviceError>([] { empty({}, DType::f64, Device::cuda); }, "allocate", {"cuda"});
  CHECK(device_name(Device::cuda) == std::string("cuda"));
  CHECK(ones({1}).device() == Device::cpu);
}

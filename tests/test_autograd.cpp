// The autograd engine as a user meets it: gradient values, accumulation, retain_graph, grad mode,
// detach, leaf rules, in-place refusals, the saved-tensor version check, graph shapes (diamonds,
// views, broadcasting), release of saved state, and float64 gradchecks of composite functions.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <functional>
#include <string>
#include <thread>
#include <unordered_map>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "core/allocator.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;

namespace {

Tensor f64(const std::vector<double>& v, const Shape& s) { return from_vector(v, s); }
Tensor leaf(const std::vector<double>& v, const Shape& s) {
  Tensor t = from_vector(v, s);
  t.set_requires_grad(true);
  return t;
}
Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

std::vector<double> grad_of(const Tensor& t) {
  REQUIRE(t.grad().defined());
  return t.grad().to_vector<double>();
}

}  // namespace

TEST_CASE("gradients of a small expression match the analytic values") {
  Tensor x = leaf({-1, 0.5, 2}, {3});
  Tensor y = sum(x * x * 3.0 + exp(x));
  CHECK(y.requires_grad());
  CHECK(!y.is_leaf());
  CHECK(y.grad_fn() != nullptr);
  y.backward();
  std::vector<double> g = grad_of(x), xv = x.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == doctest::Approx(6 * xv[i] + std::exp(xv[i])));
  CHECK(x.grad().shape() == x.shape());
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(!x.grad().requires_grad());

  // f32 works the same way, and gradients keep the leaf's dtype.
  Tensor a = zeros({2, 2});
  a.set_requires_grad(true);
  (a * 2.0 + 1.0).sum().backward();
  CHECK(a.grad().dtype() == DType::f32);
  CHECK(a.grad().to_vector<float>() == std::vector<float>(4, 2.0f));

  // A cast on the way: the gradient is cast back to the leaf's dtype.
  Tensor c = zeros({3});
  c.set_requires_grad(true);
  (c.to(DType::f64) * 3.0).sum().backward();
  CHECK(c.grad().dtype() == DType::f32);
  CHECK(c.grad().to_vector<float>() == std::vector<float>(3, 3.0f));
}

TEST_CASE("gradients accumulate across backward calls until zero_grad") {
  Tensor x = leaf({1, 2}, {2});
  sum(x * x).backward();
  CHECK(grad_of(x) == std::vector<double>{2, 4});
  sum(x * x).backward();  // a second graph: added, not replaced
  CHECK(grad_of(x) == std::vector<double>{4, 8});
  sum(x * 10.0).backward();
  CHECK(grad_of(x) == std::vector<double>{14, 18});
  x.zero_grad();
  CHECK(!x.grad().defined());
  sum(x * x).backward();
  CHECK(grad_of(x) == std::vector<double>{2, 4});

  // A grad that started as a broadcast (stride-0) gradient is a real buffer: accumulating into it
  // and scaling it in place both work.
  Tensor s = leaf({1, 2, 3}, {3});
  s.sum().backward();
  CHECK(s.grad().is_contiguous());
  s.sum().backward();
  CHECK(grad_of(s) == std::vector<double>{2, 2, 2});
  {
    NoGradGuard ng;
    s.grad().mul_(0.5);
  }
  CHECK(grad_of(s) == std::vector<double>{1, 1, 1});

  // set_grad: replace, clear, refuse a mismatched gradient
  s.set_grad(f64({7, 8, 9}, {3}));
  CHECK(grad_of(s) == std::vector<double>{7, 8, 9});
  s.set_grad(Tensor());
  CHECK(!s.grad().defined());
  CHECK_THROWS_AS(s.set_grad(f64({1, 2}, {2})), ShapeError);
  CHECK_THROWS_AS(s.set_grad(zeros({3})), ShapeError);
}

TEST_CASE("retain_graph: a second backward needs it, and the error says so") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = sum(exp(x) * x);
  y.backward(Tensor(), /*retain_graph=*/true);
  std::vector<double> once = grad_of(x);
  y.backward();  // allowed: the first call retained the graph
  std::vector<double> twice = grad_of(x);
  for (size_t i = 0; i < once.size(); ++i) CHECK(twice[i] == doctest::Approx(2 * once[i]));
  std::string msg = message_of<AutogradError>([&] { y.backward(); });
  CHECK(contains(msg, "retain_graph"));
  CHECK(grad_of(x) == twice);  // the failed call left the gradients alone
  CHECK(grad_enabled());       // and grad mode is restored after the throw

  Tensor z = sum(x * x);
  z.backward();
  CHECK_THROWS_AS(z.backward(), AutogradError);
}

TEST_CASE("no_grad: nothing is recorded, guards nest and restore, grad mode is per thread") {
  Tensor x = leaf({1, 2}, {2});
  CHECK(grad_enabled());
  {
    NoGradGuard ng;
    CHECK(!grad_enabled());
    Tensor y = x * 2.0 + exp(x);
    CHECK(!y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(y.is_leaf());
    CHECK(!matmul(x, x).requires_grad());
    CHECK(!x.unsqueeze(0).t().requires_grad());
    CHECK(!x.reshape({2, 1}).requires_grad());
    {
      NoGradGuard inner;
      CHECK(!grad_enabled());
    }
    CHECK(!grad_enabled());  // the inner guard restores "off", not "on"
    bool other_thread = false;
    std::thread t([&] { other_thread = grad_enabled(); });
    t.join();
    CHECK(other_thread);  // grad mode is thread-local
    // backward itself works inside a guard
    Tensor z;
    {
      set_grad_enabled(true);
      z = sum(x * x);
      set_grad_enabled(false);
    }
    z.backward();
    CHECK(grad_of(x) == std::vector<double>{2, 4});
  }
  CHECK(grad_enabled());
  Tensor y = x * 2.0;
  CHECK(y.requires_grad());
}

TEST_CASE("detach shares storage but cuts the graph") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor d = x.detach();
  CHECK(!d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(d.raw_data() == x.raw_data());
  CHECK(d.version() == x.version());
  Tensor y = sum(x * d);  // d is a constant here
  y.backward();
  CHECK(grad_of(x) == std::vector<double>{1, 2, 3});
  CHECK(!d.grad().defined());

  Tensor h = exp(x);
  Tensor hd = h.detach();
  CHECK(!hd.requires_grad());
  CHECK(hd.grad_fn() == nullptr);
  CHECK_NOTHROW(hd.set_requires_grad(true));  // a fresh leaf
  sum(hd * 2.0).backward();
  CHECK(grad_of(hd) == std::vector<double>{2, 2, 2});
  CHECK(grad_of(x) == std::vector<double>{1, 2, 3});  // nothing flowed through the cut
  CHECK(!h.grad().defined());
}

TEST_CASE("requires_grad propagation and leaf rules") {
  Tensor a = leaf({1, 2}, {2});
  Tensor b = f64({3, 4}, {2});
  CHECK(a.is_leaf());
  CHECK(b.is_leaf());
  CHECK((a + b).requires_grad());
  CHECK((b + a).requires_grad());
  CHECK(!(b + b).requires_grad());
  CHECK(!gt(a, b).requires_grad());
  CHECK(!argmax(a, 0).requires_grad());
  CHECK(a.reshape({2, 1}).requires_grad());
  CHECK(a.narrow(0, 0, 1).requires_grad());
  CHECK(a.expand({3, 2}).requires_grad());
  CHECK(a.contiguous().requires_grad());
  CHECK(concat({b, a}, 0).requires_grad());
  CHECK(stack({b, b}, 0).requires_grad() == false);
  CHECK(where(gt(b, a), a, b).requires_grad());
  CHECK(gather(a, 0, from_vector(std::vector<int64_t>{1}, {1})).requires_grad());

  // Only leaves carry the flag a user can set.
  Tensor y = a * 2.0;
  std::string msg = message_of<AutogradError>([&] { y.set_requires_grad(false); });
  CHECK(contains(msg, "leaf"));
  CHECK_THROWS_AS(y.set_requires_grad(true), AutogradError);
  CHECK_THROWS_AS(from_vector(std::vector<int64_t>{1}, {1}).set_requires_grad(true), DTypeError);
  CHECK_THROWS_AS(zeros({1}, DType::b8).set_requires_grad(true), DTypeError);
  CHECK_NOTHROW(from_vector(std::vector<int64_t>{1}, {1}).set_requires_grad(false));
  // Turning it off on a leaf stops new graphs from reaching it.
  Tensor c = leaf({1}, {1});
  c.set_requires_grad(false);
  CHECK(!(c * 2.0).requires_grad());

  // An input that does not require grad gets no gradient, even when the op saves it.
  Tensor w = f64({5, 6}, {2});
  sum(a * w).backward();
  CHECK(grad_of(a) == std::vector<double>{5, 6});
  CHECK(!w.grad().defined());
}

TEST_CASE("in-place writes to tensors that require grad are refused") {
  Tensor x = leaf({1, 2}, {2});
  const uint64_t v0 = x.version();
  for (auto [name, op] : std::vector<std::pair<std::string, std::function<void()>>>{
           {"add_", [&] { x.add_(f64({1, 1}, {2})); }},
           {"mul_", [&] { x.mul_(2.0); }},
           {"mul_", [&] { x.mul_(f64({1, 1}, {2})); }},
           {"fill_", [&] { x.fill_(0); }},
           {"fill_", [&] { x.zero_(); }},
           {"copy_", [&] { x.copy_(f64({3, 4}, {2})); }},
       }) {
    INFO(name);
    std::string msg = message_of<AutogradError>(op);
    CHECK(msg.rfind(name + ":", 0) == 0);
    CHECK(contains(msg, "requires grad"));
  }
  CHECK(x.to_vector<double>() == std::vector<double>{1, 2});
  CHECK(x.version() == v0);
  // non-leaf results and views of them require grad too
  Tensor y = x * 2.0;
  CHECK_THROWS_AS(y.mul_(2.0), AutogradError);
  CHECK_THROWS_AS(x.narrow(0, 0, 1).fill_(0), AutogradError);
  // Under no_grad the update is allowed (an optimizer step) and bumps the version.
  {
    NoGradGuard ng;
    x.add_(f64({10, 10}, {2}), -0.5);
  }
  CHECK(x.to_vector<double>() == std::vector<double>{-4, -3});
  CHECK(x.version() == v0 + 1);
  CHECK(x.requires_grad());
}

TEST_CASE("modifying a tensor saved for backward is detected at backward time") {
  SUBCASE("leaf modified under no_grad") {
    Tensor x = leaf({0.5, 1.5}, {2});
    Tensor y = sum(exp(x));  // exp saves x and its output
    {
      NoGradGuard ng;
      x.mul_(2.0);
    }
    std::string msg = message_of<AutogradError>([&] { y.backward(); });
    CHECK(msg.rfind("exp:", 0) == 0);
    CHECK(contains(msg, "modified in place"));
    CHECK(grad_enabled());
  }
  SUBCASE("a constant operand modified without any guard") {
    Tensor x = leaf({1, 2}, {2});
    Tensor w = f64({3, 4}, {2});
    Tensor y = sum(x * w);  // mul saves w
    w.mul_(2.0);            // w does not require grad: allowed, but the saved copy is stale now
    std::string msg = message_of<AutogradError>([&] { y.backward(); });
    CHECK(msg.rfind("mul:", 0) == 0);
    CHECK(contains(msg, "modified in place"));
  }
  SUBCASE("modified through a detached alias") {
    Tensor x = leaf({1, 2}, {2});
    Tensor y = sum(x * x);
    x.detach().add_(f64({1, 1}, {2}));
    CHECK_THROWS_AS(y.backward(), AutogradError);
  }
  SUBCASE("modified through a view of the saved output") {
    Tensor x = leaf({1, 2}, {2});
    Tensor h = tanh(x);  // saves its own output
    Tensor y = sum(h);
    {
      NoGradGuard ng;
      h.narrow(0, 0, 1).fill_(0);
    }
    CHECK_THROWS_AS(y.backward(), AutogradError);
  }
  SUBCASE("an index rewritten in place") {
    for (int op = 0; op < 4; ++op) {
      INFO("op ", op);
      Tensor x = leaf({1, 2, 3}, {3});
      Tensor idx = from_vector(std::vector<int64_t>{2, 0}, {2});
      Tensor y = op == 0   ? gather(x, 0, idx)
                 : op == 1 ? index_select(x, 0, idx)
                 : op == 2 ? index_add(x, 0, idx, x.narrow(0, 0, 2))
                           : scatter_add(x, 0, idx, x.narrow(0, 0, 2));
      idx.fill_(1);  // an i64 tensor never requires grad: the write itself is allowed
      std::string msg = message_of<AutogradError>([&] { y.sum().backward(); });
      CHECK(contains(msg, "modified in place"));
    }
  }
  SUBCASE("ops that save nothing do not care") {
    Tensor x = leaf({1, 2}, {2});
    Tensor w = f64({3, 4}, {2});
    Tensor y = sum(x + w);
    w.mul_(2.0);
    CHECK_NOTHROW(y.backward());
    CHECK(grad_of(x) == std::vector<double>{1, 1});
  }
}

TEST_CASE("diamonds and reuse sum their gradients") {
  Tensor x = leaf({0.5, -1, 2}, {3});
  sum(x * x + exp(x)).backward();  // x used three times
  std::vector<double> g = grad_of(x), xv = x.to_vector<double>();
  for (size_t i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(2 * xv[i] + std::exp(xv[i])));

  x.zero_grad();
  Tensor h = x * 2.0;           // an interior node used twice
  sum(h * h + h).backward();    // d/dx = (2h + 1) * 2 = 8x + 2
  g = grad_of(x);
  for (size_t i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(8 * xv[i] + 2));

  x.zero_grad();
  sum(x + x).backward();
  CHECK(grad_of(x) == std::vector<double>{2, 2, 2});

  // deeper diamond: two branches of different depth joining again
  x.zero_grad();
  Tensor a = exp(x);
  Tensor b = tanh(a) * a;
  Tensor c = sum(b + a * 3.0);
  c.backward();
  g = grad_of(x);
  for (size_t i = 0; i < 3; ++i) {
    double av = std::exp(xv[i]), t = std::tanh(av);
    CHECK(g[i] == doctest::Approx(((1 - t * t) * av + t + 3) * av));
  }
}

TEST_CASE("leaf gradients never alias each other or the caller's tensors") {
  Tensor a = leaf({1, 2}, {2}), b = leaf({3, 4}, {2});
  Tensor z = a + b;  // add's backward hands the same gradient to both inputs
  z.sum().backward();
  REQUIRE(a.grad().defined());
  REQUIRE(b.grad().defined());
  CHECK(a.grad().raw_data() != b.grad().raw_data());
  a.grad().mul_(2.0);
  CHECK(grad_of(a) == std::vector<double>{2, 2});
  CHECK(grad_of(b) == std::vector<double>{1, 1});

  // an explicit upstream gradient is copied, not adopted
  Tensor c = leaf({1, 2}, {2});
  Tensor up = f64({5, 6}, {2});
  (c * 1.0).backward(up);
  up.fill_(0);
  CHECK(grad_of(c) == std::vector<double>{5, 6});
  // also when the root is the leaf itself
  Tensor d = leaf({1, 2}, {2});
  Tensor up2 = f64({7, 8}, {2});
  d.backward(up2);
  CHECK(d.grad().raw_data() != up2.raw_data());
  up2.fill_(0);
  CHECK(grad_of(d) == std::vector<double>{7, 8});
  d.backward(f64({1, 1}, {2}));
  CHECK(grad_of(d) == std::vector<double>{8, 9});

  // concat's backward returns views of one gradient buffer
  Tensor e = leaf({1}, {1}), f = leaf({2, 3}, {2});
  concat({e, f}, 0).sum().backward();
  f.grad().fill_(9);
  CHECK(grad_of(e) == std::vector<double>{1});
}

TEST_CASE("backward needs a scalar or an explicit gradient of the right shape") {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = x * 2.0;
  std::string msg = message_of<AutogradError>([&] { y.backward(); });
  CHECK(msg.rfind("backward:", 0) == 0);
  CHECK(contains(msg, "f64[3]"));
  CHECK_THROWS_AS(y.backward(f64({1, 1}, {2})), ShapeError);
  CHECK_THROWS_AS(y.backward(from_vector(std::vector<float>{1, 1, 1}, {3})), ShapeError);
  y.backward(f64({1, 0, -1}, {3}));
  CHECK(grad_of(x) == std::vector<double>{2, 0, -2});
  // A one-element non-scalar is fine.
  Tensor x1 = leaf({3}, {1, 1});
  (x1 * x1).backward();
  CHECK(grad_of(x1) == std::vector<double>{6});
  // Nothing requires grad: refused with a clear error.
  std::string m2 = message_of<AutogradError>([] { sum(f64({1, 2}, {2})).backward(); });
  CHECK(contains(m2, "does not require grad"));
  Tensor z;
  {
    NoGradGuard ng;
    z = sum(x * 2.0);
  }
  CHECK_THROWS_AS(z.backward(), AutogradError);
}

TEST_CASE("saved tensors are released after backward unless the graph is retained") {
  auto run = [](bool retain) {
    Tensor x = leaf(randn({128, 256}, DType::f64));
    const size_t big = cpu_allocator::size_class(128 * 256 * sizeof(double));
    Tensor loss;
    {
      Tensor h = exp(x.clone());  // h and the clone are held only by the graph after this scope
      loss = sum(h);
    }
    const std::vector<std::shared_ptr<Node>> nodes = backward_order(loss);
    REQUIRE(nodes.size() >= 3);  // sum <- (reshape) <- exp <- copy
    const size_t before = cpu_allocator::stats().bytes_in_use;
    loss.backward(Tensor(), retain);
    const size_t after = cpu_allocator::stats().bytes_in_use;
    for (const auto& n : nodes) CHECK(n->released() == !retain);
    if (retain) {
      CHECK(after >= before + big);  // x.grad added, nothing freed
    } else {
      CHECK(after + big <= before);  // x.grad added, the clone and exp's output freed
    }
    return nodes;
  };
  run(false);
  run(true);
  // Once everything is gone, the bytes come back.
  const size_t base = cpu_allocator::stats().bytes_in_use;
  { run(false); }
  CHECK(cpu_allocator::stats().bytes_in_use == base);
}

TEST_CASE("backward order is topological and the observer sees every node once") {
  Tensor x = leaf({1, 2}, {2});
  Tensor a = exp(x), b = a * x, c = sum(b + a);
  std::vector<std::shared_ptr<Node>> order = backward_order(c);
  std::unordered_map<const Node*, size_t> pos;
  for (size_t i = 0; i < order.size(); ++i) pos[order[i].get()] = i;
  CHECK(order.front().get() == c.grad_fn().get());
  for (const auto& n : order)
    for (const Edge& e : n->next())
      if (e.node) CHECK(pos.at(e.node.get()) > pos.at(n.get()));
  size_t calls = 0;
  run_backward(c, Tensor(), false, [&](const Node& n, const Tensor& g_out, const std::vector<Tensor>& g_in) {
    ++calls;
    CHECK(g_out.shape() == n.out_shape());
    CHECK(g_in.size() == n.next().size());
  });
  CHECK(calls == order.size());
  CHECK(backward_order(x).empty());
}

TEST_CASE("gradients through views, broadcasting and reductions") {
  Tensor x = leaf(arange(0.0, 12.0, 1.0, DType::f64).reshape({3, 4}));
  x.t().narrow(0, 1, 2).sum().backward();  // columns 1 and 2
  CHECK(grad_of(x) == std::vector<double>{0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0});
  x.zero_grad();
  (x.select(1, -1) * 3.0).sum().backward();
  CHECK(grad_of(x) == std::vector<double>{0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 3});
  x.zero_grad();
  x.slice(1, 0, 4, 3).slice(0, 0, 3, 2).sum().backward();
  CHECK(grad_of(x) == std::vector<double>{1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1});
  x.zero_grad();
  (x.t().reshape({12}) * arange(0.0, 12.0, 1.0, DType::f64)).sum().backward();  // copy of a transpose
  CHECK(grad_of(x) == std::vector<double>{0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11});
  x.zero_grad();
  (x.permute({1, 0}).unsqueeze(0).squeeze(0).flatten() * 2.0).sum().backward();
  CHECK(grad_of(x) == std::vector<double>(12, 2.0));

  Tensor e = leaf({1, 2, 3}, {3, 1});
  e.expand({2, 3, 4}).sum().backward();
  CHECK(grad_of(e) == std::vector<double>{8, 8, 8});

  Tensor a = leaf({1, 2, 3}, {3, 1}), b = leaf({1, 2, 3, 4}, {1, 4});
  sum(a * b).backward();
  CHECK(grad_of(a) == std::vector<double>{10, 10, 10});
  CHECK(grad_of(b) == std::vector<double>{6, 6, 6, 6});
  Tensor s = leaf({2}, {});
  Tensor m = leaf({1, 2, 3, 4}, {2, 2});
  sum(m / s).backward();
  CHECK(grad_of(s)[0] == doctest::Approx(-10.0 / 4));
  CHECK(grad_of(m) == std::vector<double>(4, 0.5));

  // max routes the gradient to the first maximum only
  Tensor t = leaf({1, 5, 3, 5}, {4});
  max(t).backward();
  CHECK(grad_of(t) == std::vector<double>{0, 1, 0, 0});
  Tensor t2 = leaf({1, 9, 3, 4, 0, 2}, {2, 3});
  sum(max(t2, 1) * f64({10, 20}, {2})).backward();
  CHECK(grad_of(t2) == std::vector<double>{0, 10, 0, 20, 0, 0});

  // mean and var
  Tensor v = leaf({1, 2, 3, 6}, {4});
  mean(v).backward();
  CHECK(grad_of(v) == std::vector<double>(4, 0.25));
  v.zero_grad();
  var(v, 0).backward();  // 2 (x - 3) / 3
  std::vector<double> gv = grad_of(v);
  CHECK(gv[0] == doctest::Approx(-4.0 / 3));
  CHECK(gv[3] == doctest::Approx(2.0));

  // index inputs get no gradient; the value input does
  Tensor src = leaf({1, 2, 3}, {3});
  Tensor idx = from_vector(std::vector<int64_t>{2, 2, 0}, {3});
  gather(src, 0, idx).sum().backward();
  CHECK(grad_of(src) == std::vector<double>{1, 0, 2});
  CHECK(!idx.grad().defined());
}

TEST_CASE("no NaN gradients at the removable singularities of pow") {
  Tensor x = leaf({0, 1, 2}, {3});
  pow(x, 0.0).sum().backward();  // x^0 = 1: gradient 0 everywhere, also at x = 0
  CHECK(grad_of(x) == std::vector<double>{0, 0, 0});
  x.zero_grad();
  pow(x, 2.0).sum().backward();
  CHECK(grad_of(x) == std::vector<double>{0, 2, 4});

  Tensor a = leaf({0, 0, 2}, {3}), b = leaf({2, 0, 3}, {3});
  pow(a, b).sum().backward();
  std::vector<double> ga = grad_of(a), gb = grad_of(b);
  CHECK(ga[0] == 0);  // 2 * 0^1
  CHECK(ga[1] == 0);  // b = 0: constant 1 in a
  CHECK(ga[2] == doctest::Approx(12));
  CHECK(gb[0] == 0);  // 0^b = 0 for b > 0
  CHECK(gb[1] == 0);  // masked as in PyTorch
  CHECK(gb[2] == doctest::Approx(8 * std::log(2.0)));
}

TEST_CASE("0-d softmax and log_softmax stay on the graph") {
  Tensor s = leaf({2.5}, {});
  Tensor y = softmax(s, 0);
  CHECK(y.dim() == 0);
  CHECK(y.item<double>() == 1);
  CHECK(y.requires_grad());
  y.backward();
  CHECK(grad_of(s) == std::vector<double>{0});
  Tensor z = log_softmax(s, -1) + s;
  CHECK(z.item<double>() == 2.5);
  z.backward();
  CHECK(grad_of(s) == std::vector<double>{1});
}

TEST_CASE("float64 gradcheck of composite functions") {
  Generator gen(99);
  auto check = [](const char* what, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                  std::vector<Tensor> inputs) {
    INFO(what);
    GradcheckResult r = gradcheck(fn, std::move(inputs));
    CHECK_MESSAGE(r.ok, r.report());
  };
  check("scaled dot-product attention",
        [](const std::vector<Tensor>& in) {
          Tensor scores = matmul(in[0], in[1].transpose(-1, -2)) / 2.0;
          return matmul(softmax(scores, -1), in[2]);
        },
        {randn({2, 3, 4}, DType::f64, &gen), randn({2, 5, 4}, DType::f64, &gen), randn({2, 5, 3}, DType::f64, &gen)});
  check("masked attention with -inf",
        [](const std::vector<Tensor>& in) {
          Tensor pos = arange(0.0, 4.0, 1.0, DType::f64);
          Tensor mask = gt(pos.unsqueeze(0), pos.unsqueeze(1));  // causal: key j > query i is hidden
          Tensor scores = masked_fill(matmul(in[0], in[0].t()), mask, -std::numeric_limits<double>::infinity());
          return matmul(softmax(scores, -1), in[0]);
        },
        {randn({4, 3}, DType::f64, &gen)});
  check("layer norm",
        [](const std::vector<Tensor>& in) {
          Tensor c = in[0] - mean(in[0], -1, true);
          return c * rsqrt(var(in[0], -1, false, true) + 1e-5) * in[1] + in[2];
        },
        {randn({3, 5}, DType::f64, &gen), randn({5}, DType::f64, &gen), randn({5}, DType::f64, &gen)});
  check("cross entropy via log_softmax + gather",
        [](const std::vector<Tensor>& in) {
          return -mean(gather(log_softmax(in[0], 1), 1, in[1]));
        },
        {randn({4, 6}, DType::f64, &gen), from_vector(std::vector<int64_t>{0, 5, 2, 2}, {4, 1})});
  check("mlp with gelu and broadcast bias, non-contiguous weight",
        [](const std::vector<Tensor>& in) {
          return sum(gelu(matmul(in[0], in[1]) + in[2]) * sigmoid(in[0].sum(1, true)));
        },
        {randn({3, 4}, DType::f64, &gen), randn({5, 4}, DType::f64, &gen).t(), randn({5}, DType::f64, &gen)});
  check("logsumexp, stack, concat, split, index_select",
        [](const std::vector<Tensor>& in) {
          Tensor s = stack({in[0], in[0] * 2.0}, 0);
          std::vector<Tensor> parts = split(concat({s, s}, 2), 3, 2);
          return logsumexp(index_select(parts[1], 1, from_vector(std::vector<int64_t>{1, 0, 1}, {3})), -1);
        },
        {randn({2, 3}, DType::f64, &gen)});
}

#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/rng.h"

namespace attnlab {

namespace {
// Pointer to logical element `flat` of a (possibly strided) f64 tensor.
double* element(const Tensor& t, int64_t flat) {
  int64_t off = 0;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (flat % t.shape()[d]) * t.strides()[d];
    flat /= t.shape()[d];
  }
  return t.data<double>() + off;
}
}  // namespace

GradcheckResult gradcheck_leaves(const std::function<Tensor()>& fn, const std::vector<Tensor>& leaves,
                                 const GradcheckOptions& opts) {
  for (const Tensor& t : leaves) {
    if (!t.defined() || t.dtype() != DType::f64 || !t.requires_grad() || !t.is_leaf())
      fail<DTypeError>("gradcheck", "every checked tensor must be an f64 leaf that requires grad, got ", describe(t));
    Tensor(t).zero_grad();
  }
  Tensor out = fn();
  if (out.dtype() != DType::f64) fail<DTypeError>("gradcheck", "the function must return f64, got ", describe(out));
  Generator g(opts.seed, 77);
  Tensor r = randn(out.shape(), DType::f64, &g);
  if (out.requires_grad()) sum(mul(out, r)).backward();
  auto projected = [&] {
    NoGradGuard ng;
    return sum(mul(fn(), r)).item<double>();
  };

  GradcheckResult res;
  for (size_t i = 0; i < leaves.size(); ++i) {
    const Tensor& x = leaves[i];
    InputReport rep;
    rep.input = int(i);
    rep.checked = true;
    std::vector<double> an = (x.grad().defined() ? x.grad() : zeros_like(x)).to_vector<double>();
    double worst = -1;
    for (int64_t j = 0; j < x.numel(); ++j) {
      double* p = element(x, j);
      const double orig = *p;
      *p = orig + opts.eps;
      double fp = projected();
      *p = orig - opts.eps;
      double fm = projected();
      *p = orig;
      double num = (fp - fm) / (2 * opts.eps);
      double abs_err = std::fabs(an[size_t(j)] - num);
      double excess = abs_err - (opts.atol + opts.rtol * std::fabs(num));
      if (!std::isfinite(an[size_t(j)]) || !std::isfinite(num)) excess = INFINITY;
      if (excess > worst || rep.worst_entry < 0) {
        worst = excess;
        rep.worst_entry = j;
        rep.analytic = an[size_t(j)];
        rep.numeric = num;
        rep.abs_err = abs_err;
        rep.rel_err = abs_err / std::max(std::fabs(num), 1e-12);
      }
    }
    rep.ok = x.numel() == 0 || worst <= 0;
    res.ok = res.ok && rep.ok;
    res.inputs.push_back(rep);
  }
  return res;
}

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn, std::vector<Tensor> inputs,
                          const GradcheckOptions& opts) {
  std::vector<Tensor> leaves;
  std::vector<size_t> where;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& t = inputs[i];
    if (t.defined() && is_floating(t.dtype())) {
      if (t.dtype() != DType::f64) fail<DTypeError>("gradcheck", "floating inputs must be f64, got ", describe(t));
      t = t.detach();  // a fresh leaf sharing the caller's data
      t.set_requires_grad(true);
      leaves.push_back(t);
      where.push_back(i);
    }
  }
  GradcheckResult inner = gradcheck_leaves([&] { return fn(inputs); }, leaves, opts);
  GradcheckResult res;
  res.ok = inner.ok;
  res.inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) res.inputs[i].input = int(i);  // non-floating: not checked
  for (size_t j = 0; j < where.size(); ++j) {
    res.inputs[where[j]] = inner.inputs[j];
    res.inputs[where[j]].input = int(where[j]);
  }
  return res;
}

std::string GradcheckResult::report() const {
  std::ostringstream os;
  os.precision(6);
  for (const InputReport& r : inputs) {
    os << "  input " << r.input << ": ";
    if (!r.checked) {
      os << "not checked (not floating)\n";
      continue;
    }
    os << (r.ok ? "ok  " : "FAIL") << " worst entry " << r.worst_entry << " analytic " << r.analytic << " numeric "
       << r.numeric << " abs err " << r.abs_err << " rel err " << r.rel_err << "\n";
  }
  return os.str();
}

}  // namespace attnlab

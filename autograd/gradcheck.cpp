#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/rng.h"

namespace attnlab {

namespace {
// Sum of r ∘ f(x), evaluated without recording a graph.
double projected(const std::function<Tensor(const std::vector<Tensor>&)>& fn, const std::vector<Tensor>& in,
                 const Tensor& r) {
  NoGradGuard ng;
  Tensor out = fn(in);
  return sum(mul(out.to(DType::f64), r)).item<double>();
}

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

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn, std::vector<Tensor> inputs,
                          const GradcheckOptions& opts) {
  GradcheckResult res;
  std::vector<Tensor> leaves;
  for (Tensor& t : inputs) {
    if (t.defined() && is_floating(t.dtype())) {
      if (t.dtype() != DType::f64)
        fail<DTypeError>("gradcheck", "floating inputs must be f64, got ", describe(t));
      t = t.detach();  // a fresh leaf sharing the caller's data
      t.set_requires_grad(true);
    }
  }
  Tensor out = fn(inputs);
  if (out.dtype() != DType::f64) fail<DTypeError>("gradcheck", "the function must return f64, got ", describe(out));
  Generator g(opts.seed, 77);
  Tensor r = randn(out.shape(), DType::f64, &g);
  if (out.requires_grad()) sum(mul(out, r)).backward();

  for (size_t i = 0; i < inputs.size(); ++i) {
    InputReport rep;
    rep.input = int(i);
    const Tensor& x = inputs[i];
    if (!x.defined() || !is_floating(x.dtype())) {
      res.inputs.push_back(rep);
      continue;
    }
    rep.checked = true;
    Tensor analytic = x.grad().defined() ? x.grad() : zeros_like(x);
    std::vector<double> an = analytic.to_vector<double>();
    double worst = -1;
    for (int64_t j = 0; j < x.numel(); ++j) {
      double* p = element(x, j);
      const double orig = *p;
      *p = orig + opts.eps;
      double fp = projected(fn, inputs, r);
      *p = orig - opts.eps;
      double fm = projected(fn, inputs, r);
      *p = orig;
      double num = (fp - fm) / (2 * opts.eps);
      double abs_err = std::fabs(an[size_t(j)] - num);
      double rel_err = abs_err / std::max(std::fabs(num), 1e-12);
      double excess = abs_err - (opts.atol + opts.rtol * std::fabs(num));
      bool finite = std::isfinite(an[size_t(j)]) && std::isfinite(num);
      if (!finite) excess = INFINITY;
      if (excess > worst || rep.worst_entry < 0) {
        worst = excess;
        rep.worst_entry = j;
        rep.analytic = an[size_t(j)];
        rep.numeric = num;
        rep.abs_err = abs_err;
        rep.rel_err = rel_err;
      }
    }
    rep.ok = x.numel() == 0 || worst <= 0;
    res.ok = res.ok && rep.ok;
    res.inputs.push_back(rep);
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

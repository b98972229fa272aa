#include "optim/adam.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "core/cpu/loops.h"
#include "core/json_fields.h"

namespace attnlab {

namespace {
void validate(const AdamOptions& o) {
  if (!(o.lr >= 0) || !std::isfinite(o.lr)) fail<ValueError>("Adam", "lr must be finite and >= 0, got ", o.lr);
  if (!(o.beta1 >= 0 && o.beta1 < 1)) fail<ValueError>("Adam", "beta1 must be in [0, 1), got ", o.beta1);
  if (!(o.beta2 >= 0 && o.beta2 < 1)) fail<ValueError>("Adam", "beta2 must be in [0, 1), got ", o.beta2);
  if (!(o.eps > 0)) fail<ValueError>("Adam", "eps must be positive, got ", o.eps);
  if (!(o.weight_decay >= 0)) fail<ValueError>("Adam", "weight_decay must be >= 0, got ", o.weight_decay);
}
}  // namespace

Adam::Adam(std::vector<Tensor> params, AdamOptions options) : Optimizer(std::move(params)), options_(options) {
  validate(options_);
  if (params_.empty()) fail<ValueError>("Adam", "no parameters to optimise");
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    if (!p.defined() || !is_floating(p.dtype()) || !p.is_leaf() || !p.is_contiguous())
      fail<ValueError>("Adam", "parameter ", i, " must be a contiguous floating leaf tensor, got ", describe(p));
    for (size_t j = 0; j < i; ++j)
      if (params_[j].same(p)) fail<ValueError>("Adam", "parameter ", i, " is listed twice");
  }
  m_.resize(params_.size());
  v_.resize(params_.size());
}

void Adam::set_lr(double lr) {
  AdamOptions o = options_;
  o.lr = lr;
  validate(o);
  options_.lr = lr;
}

void Adam::step() {
  NoGradGuard ng;
  if (t_ >= kMaxOptimizerStep) fail<ValueError>("Adam", "step count ", t_, " is at its limit 2^53");
  ++t_;
  const double b1 = options_.beta1, b2 = options_.beta2, lr = options_.lr, eps = options_.eps;
  // t ≥ 1 and β < 1, so β^t is in [0, 1) and both corrections are in (0, 1]: never a division by 0.
  const double bc1 = 1 - std::pow(b1, double(t_)), bc2 = 1 - std::pow(b2, double(t_));
  const double step_size = lr / bc1, inv_sqrt_bc2 = 1 / std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (!m_[i].defined()) {
      m_[i] = zeros_like(p);
      v_[i] = zeros_like(p);
    }
    Tensor gc = g.contiguous();
    dispatch_floating(p.dtype(), "Adam", [&]<class T>() {
      T* pp = p.data<T>();
      T* pm = m_[i].data<T>();
      T* pv = v_[i].data<T>();
      const T* pg = gc.data<T>();
      const int64_t n = p.numel();
      const bool decoupled = options_.decoupled;
      const double wd = decays(i) ? options_.weight_decay : 0.0;
#pragma omp parallel for simd if (n >= cpu::parallel_grain()) schedule(static)
      for (int64_t j = 0; j < n; ++j) {
        T gj = pg[j];
        if (decoupled) pp[j] -= T(lr * wd) * pp[j];
        else gj += T(wd) * pp[j];
        pm[j] = T(b1) * pm[j] + T(1 - b1) * gj;
        pv[j] = T(b2) * pv[j] + T(1 - b2) * gj * gj;
        pp[j] -= T(step_size) * pm[j] / (std::sqrt(pv[j]) * T(inv_sqrt_bc2) + T(eps));
      }
    });
    p.bump_version();
  }
}

StateDict Adam::state_tensors() const {
  StateDict sd;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!m_[i].defined()) continue;
    sd[std::to_string(i) + ".exp_avg"] = m_[i];
    sd[std::to_string(i) + ".exp_avg_sq"] = v_[i];
  }
  return sd;
}

nlohmann::json Adam::state_json() const {
  nlohmann::json s = {{"name", name()},
                      {"step", t_},
                      {"lr", options_.lr},
                      {"beta1", options_.beta1},
                      {"beta2", options_.beta2},
                      {"eps", options_.eps},
                      {"weight_decay", options_.weight_decay},
                      {"num_params", params_.size()},
                      {"stateful_params", stateful_params_json(m_)}};
  add_decay_mask_json(s);
  return s;
}

void Adam::load_state(const StateDict& tensors, const nlohmann::json& s) {
  try {
    require_integers(s, "Adam::load_state", {"num_params"});
    if (s.at("name").get<std::string>() != name())
      fail<ValueError>("Adam::load_state", "state is for optimizer '", s.at("name").get<std::string>(), "', not '",
                       name(), "'");
    if (s.at("num_params").get<size_t>() != params_.size())
      fail<ValueError>("Adam::load_state", "state has ", s.at("num_params").get<size_t>(), " parameters, this has ",
                       params_.size());
    AdamOptions o = options_;
    o.lr = s.at("lr").get<double>();
    o.beta1 = s.at("beta1").get<double>();
    o.beta2 = s.at("beta2").get<double>();
    o.eps = s.at("eps").get<double>();
    o.weight_decay = s.at("weight_decay").get<double>();
    validate(o);
    const std::vector<bool> has = stateful_params("Adam::load_state", tensors, s, {"exp_avg", "exp_avg_sq"});
    const int64_t step = saved_step(s, "Adam::load_state");
    std::vector<bool> decay = decay_mask_from("Adam::load_state", s);
    std::vector<Tensor> m(params_.size()), v(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      if (!has[i]) continue;  // never updated
      auto a = tensors.find(std::to_string(i) + ".exp_avg"), b = tensors.find(std::to_string(i) + ".exp_avg_sq");
      if (a->second.shape() != params_[i].shape() || b->second.shape() != params_[i].shape())
        fail<ValueError>("Adam::load_state", "moments of parameter ", i, " do not match ", describe(params_[i]));
      m[i] = a->second.to(params_[i].dtype()).contiguous().clone();
      v[i] = b->second.to(params_[i].dtype()).contiguous().clone();
    }
    options_ = o;
    decay_ = std::move(decay);
    t_ = step;
    m_ = std::move(m);
    v_ = std::move(v);
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("Adam::load_state", "malformed optimizer state: ", e.what());
  }
}

}  // namespace attnlab

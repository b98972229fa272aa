#include "optim/sgd.h"

#include <cmath>
#include <string>

#include "autograd/grad_mode.h"

namespace attnlab {

namespace {
void check_lr(double lr) {
  if (!std::isfinite(lr) || lr < 0) fail<ValueError>("SGD", "learning rate must be finite and >= 0, got ", lr);
}

void check_options(const SGDOptions& o) {
  check_lr(o.lr);
  if (!std::isfinite(o.momentum) || o.momentum < 0 || o.momentum >= 1)
    fail<ValueError>("SGD", "momentum must be in [0, 1), got ", o.momentum);
  if (!std::isfinite(o.weight_decay) || o.weight_decay < 0)
    fail<ValueError>("SGD", "weight_decay must be finite and >= 0, got ", o.weight_decay);
  if (o.nesterov && o.momentum == 0) fail<ValueError>("SGD", "nesterov momentum needs momentum > 0");
}

constexpr const char* kSlot = "momentum_buffer";
}  // namespace

SGD::SGD(std::vector<Tensor> params, SGDOptions options) : Optimizer(std::move(params)), options_(options) {
  check_options(options_);
  if (params_.empty()) fail<ValueError>("SGD", "got an empty parameter list");
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    if (!p.defined()) fail<ValueError>("SGD", "parameter ", i, " is undefined");
    if (!is_floating(p.dtype())) fail<ValueError>("SGD", "parameter ", i, " is ", describe(p), "; expected f32 or f64");
    // A non-leaf is recomputed from its inputs on every forward, so updating it would be lost.
    if (!p.is_leaf()) fail<ValueError>("SGD", "parameter ", i, " ", describe(p), " is not a leaf tensor");
    for (size_t j = 0; j < i; ++j)
      if (params_[j].same(p)) fail<ValueError>("SGD", "parameter ", i, " is the same tensor as parameter ", j);
  }
  momentum_buffers_.resize(params_.size());
}

void SGD::set_lr(double lr) {
  check_lr(lr);
  options_.lr = lr;
}

void SGD::step() {
  NoGradGuard no_grad;  // the update is not part of any graph; also allows in-place writes to params
  const SGDOptions& o = options_;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    Tensor d = p.grad();
    if (!d.defined()) continue;
    if (o.weight_decay != 0 && decays(i)) d = d + o.weight_decay * p;
    if (o.momentum != 0) {
      Tensor& buf = momentum_buffers_[i];
      // Clone: the engine accumulates into .grad in place, which must not leak into the buffer.
      if (!buf.defined()) buf = d.clone();
      else buf.mul_(o.momentum).add_(d);
      d = o.nesterov ? d + o.momentum * buf : buf;
    }
    p.add_(d, -o.lr);  // bumps p's version, so a graph that saved the old p refuses to backward
  }
  steps_++;
}

// ---- checkpoint state ------------------------------------------------------------------------

StateDict SGD::state_tensors() const {
  StateDict sd;
  for (size_t i = 0; i < momentum_buffers_.size(); ++i)
    if (momentum_buffers_[i].defined()) sd[std::to_string(i) + "." + kSlot] = momentum_buffers_[i];
  return sd;
}

nlohmann::json SGD::state_json() const {
  nlohmann::json s = {{"name", name()},
                      {"step", steps_},
                      {"lr", options_.lr},
                      {"momentum", options_.momentum},
                      {"nesterov", options_.nesterov},
                      {"weight_decay", options_.weight_decay},
                      {"stateful_params", stateful_params_json(momentum_buffers_)}};
  add_decay_mask_json(s);
  return s;
}

void SGD::load_state(const StateDict& tensors, const nlohmann::json& scalars) {
  // Validate everything before changing anything, so a failed load leaves the optimizer as it was.
  SGDOptions o;
  int64_t steps = 0;
  try {
    if (scalars.at("name").get<std::string>() != name())
      fail<ValueError>("SGD::load_state", "state is for optimizer '", scalars.at("name").get<std::string>(),
                       "', not 'sgd'");
    steps = saved_step(scalars, "SGD::load_state");
    o.lr = scalars.at("lr").get<double>();
    o.momentum = scalars.at("momentum").get<double>();
    o.nesterov = scalars.at("nesterov").get<bool>();
    o.weight_decay = scalars.at("weight_decay").get<double>();
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>("SGD::load_state", "malformed scalars ", scalars.dump(), ": ", e.what());
  }
  check_options(o);

  const std::vector<bool> has = stateful_params("SGD::load_state", tensors, scalars, {kSlot});
  std::vector<bool> decay = decay_mask_from("SGD::load_state", scalars);
  std::vector<Tensor> buffers(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!has[i]) continue;
    const std::string key = std::to_string(i) + "." + kSlot;
    const Tensor& t = tensors.at(key);
    if (!t.defined() || t.shape() != params_[i].shape() || t.dtype() != params_[i].dtype())
      fail<ValueError>("SGD::load_state", "slot '", key, "' is ", describe(t), " but parameter ", i, " is ",
                       describe(params_[i]));
    buffers[i] = t;
  }

  NoGradGuard no_grad;
  for (Tensor& b : buffers)
    if (b.defined()) b = b.detach().clone();  // our own copy: the caller's tensors stay untouched
  options_ = o;
  decay_ = std::move(decay);
  steps_ = steps;
  momentum_buffers_ = std::move(buffers);
}

}  // namespace attnlab

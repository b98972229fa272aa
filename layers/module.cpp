#include "layers/module.h"

#include <cmath>
#include <set>

#include "autograd/grad_mode.h"

namespace attnlab {

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  if (!is_floating(t.dtype())) fail<DTypeError>("register_parameter", "parameter '", name, "' must be floating");
  t = t.detach();
  t.set_requires_grad(true);
  params_.emplace_back(name, std::make_unique<Tensor>(t));
  return *params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, std::make_unique<Tensor>(t.detach()));
  return *buffers_.back().second;
}

void Module::collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, *t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", true, out);
  return out;
}
std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", false, out);
  return out;
}
std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}
int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::zero_grad() {
  for (auto& [n, t] : params_) t->zero_grad();
  for (auto& [n, c] : children_) c->zero_grad();
}

StateDict Module::state_dict() const {
  StateDict sd;
  for (auto& [n, t] : named_parameters()) sd[n] = t.detach();
  for (auto& [n, t] : named_buffers()) sd[n] = t.detach();
  return sd;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  auto mine = named_parameters();
  auto bufs = named_buffers();
  mine.insert(mine.end(), bufs.begin(), bufs.end());
  // Check everything first, so a bad state leaves the model untouched.
  std::vector<std::pair<Tensor, Tensor>> copies;
  std::set<std::string> seen;
  for (auto& [name, t] : mine) {
    auto it = state.find(name);
    if (it == state.end()) {
      if (strict) fail<ValueError>("load_state_dict", "missing key '", name, "' (", describe(t), ")");
      continue;
    }
    if (it->second.shape() != t.shape())
      fail<ShapeError>("load_state_dict", "'", name, "' has shape ", shape_str(it->second.shape()), " in the state but ",
                       shape_str(t.shape()), " in the model");
    if (!is_floating(it->second.dtype()) && is_floating(t.dtype()))
      fail<DTypeError>("load_state_dict", "'", name, "' is ", describe(it->second), " in the state but ", describe(t),
                       " in the model");
    copies.emplace_back(t, it->second);
    seen.insert(name);
  }
  if (strict)
    for (auto& [name, t] : state)
      if (!seen.count(name)) fail<ValueError>("load_state_dict", "unexpected key '", name, "' (", describe(t), ")");
  NoGradGuard ng;
  for (auto& [dst, src] : copies) dst.detach().copy_(src);  // converts dtype if they differ
}

void Module::to(DType dt) {
  for (auto& [n, t] : params_) {
    Tensor c = t->to(dt).detach();
    c.set_requires_grad(true);
    *t = c;
  }
  for (auto& [n, t] : buffers_)
    if (is_floating(t->dtype())) *t = t->to(dt).detach();
  for (auto& [n, c] : children_) c->to(dt);
}

namespace init {
Tensor normal(const Shape& s, double std, DType t, Generator& g) { return randn(s, t, &g) * std; }
Tensor uniform(const Shape& s, double bound, DType t, Generator& g) { return (rand(s, t, &g) * 2.0 - 1.0) * bound; }
namespace {
std::pair<double, double> fans(const Shape& s) {
  if (s.size() < 2) return {double(s.empty() ? 1 : s[0]), double(s.empty() ? 1 : s[0])};
  double receptive = 1;
  for (size_t i = 2; i < s.size(); ++i) receptive *= double(s[i]);
  return {double(s[1]) * receptive, double(s[0]) * receptive};
}
}  // namespace
Tensor xavier_uniform(const Shape& s, DType t, Generator& g) {
  auto [fi, fo] = fans(s);
  return uniform(s, std::sqrt(6.0 / (fi + fo)), t, g);
}
Tensor kaiming_uniform(const Shape& s, DType t, Generator& g) {
  return uniform(s, 1.0 / std::sqrt(fans(s).first), t, g);
}
}  // namespace init

void Module::set_path(const std::string& path) {
  path_ = path;
  for (auto& [name, child] : children_) child->set_path(path_.empty() ? name : path_ + "." + name);
}

}  // namespace attnlab

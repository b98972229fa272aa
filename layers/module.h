// Module: a tree of named parameters, buffers and sub-modules, with train/eval mode and state dicts
// whose keys are dotted paths ("blocks.0.attn.q_proj.weight"), as in PyTorch, so checkpoints load there.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/anomaly.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace attnlab {

using StateDict = std::map<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  int64_t num_parameters() const;

  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  // Parameters and buffers by dotted name (detached copies of the handles: same storage).
  StateDict state_dict() const;
  // Copies values in place (parameter handles stay valid). strict: the key sets must match exactly.
  void load_state_dict(const StateDict& state, bool strict = true);

  void zero_grad();
  // Casts every parameter and buffer (e.g. to f64 for a gradcheck), keeping handles registered.
  void to(DType t);

  // Dotted path from the root module ("blocks.0.attn"; "" for the root): anomaly messages name it.
  const std::string& path() const { return path_; }

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    m->set_path(path_.empty() ? name : path_ + "." + name);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool params, std::vector<std::pair<std::string, Tensor>>& out) const;
  // unique_ptr keeps each slot's address stable, so the Tensor& handed back stays valid.
  std::vector<std::pair<std::string, std::unique_ptr<Tensor>>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  std::string path_;
  void set_path(const std::string& path);  // and every descendant's
};

// Parameter initialisation schemes (all seeded; fan_in/fan_out from a [out, in] weight).
namespace init {
Tensor normal(const Shape& s, double std, DType t, Generator& g);
Tensor uniform(const Shape& s, double bound, DType t, Generator& g);  // U(-bound, bound)
Tensor xavier_uniform(const Shape& s, DType t, Generator& g);         // bound = sqrt(6 / (fan_in + fan_out))
Tensor kaiming_uniform(const Shape& s, DType t, Generator& g);        // PyTorch Linear default: bound = 1/sqrt(fan_in)
}  // namespace init

}  // namespace attnlab

// Basic layers: Linear, Embedding, LayerNorm, Dropout, MLP, positional encodings.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "layers/functional.h"
#include "layers/module.h"

namespace attnlab {

class Linear : public Module {
 public:
  // Weight [out, in] and bias [out] initialised U(-1/sqrt(in), 1/sqrt(in)), as PyTorch's nn.Linear.
  Linear(int64_t in, int64_t out, bool bias, Generator& gen, DType t = DType::f32);
  Tensor forward(const Tensor& x) const {
    ModuleScope scope(path());
    return linear(x, weight, has_bias_ ? bias : Tensor());
  }
  Tensor& weight;
  Tensor& bias;  // undefined when built without bias

 private:
  Tensor no_bias_;
  bool has_bias_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen, DType t = DType::f32, double std = 0.02);
  Tensor forward(const Tensor& ids) const {
    ModuleScope scope(path());
    return embedding(weight, ids);
  }
  Tensor& weight;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5, DType t = DType::f32);
  Tensor forward(const Tensor& x) const {
    ModuleScope scope(path());
    return layer_norm(x, weight, bias, eps_);
  }
  Tensor& weight;
  Tensor& bias;

 private:
  double eps_;
};

// Draws its masks from a generator shared with the model, so a checkpoint can restore the stream.
class Dropout : public Module {
 public:
  Dropout(double p, std::shared_ptr<Generator> gen) : p_(p), gen_(std::move(gen)) {}
  Tensor forward(const Tensor& x) const {
    ModuleScope scope(path());
    return dropout(x, p_, training(), *gen_);
  }
  double p() const { return p_; }

 private:
  double p_;
  std::shared_ptr<Generator> gen_;
};

enum class Activation { gelu, relu };
Activation parse_activation(const std::string& name);
std::vector<std::string> activation_names();  // the names parse_activation takes
Tensor activate(const Tensor& x, Activation a);

// Linear -> activation -> dropout -> Linear.
class MLP : public Module {
 public:
  MLP(int64_t dim, int64_t hidden, Activation act, double dropout_p, std::shared_ptr<Generator> dropout_gen,
      Generator& init_gen, DType t = DType::f32);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<Dropout> drop;

 private:
  Activation act_;
};

// Fixed sin/cos table of Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...).
Tensor sinusoidal_positions(int64_t max_len, int64_t dim, DType t = DType::f32);

}  // namespace attnlab

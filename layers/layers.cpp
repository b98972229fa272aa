#include "layers/layers.h"

#include <cmath>

namespace attnlab {

Linear::Linear(int64_t in, int64_t out, bool bias_on, Generator& gen, DType t)
    : weight(register_parameter("weight", init::kaiming_uniform({out, in}, t, gen))),
      bias(bias_on ? register_parameter("bias", init::uniform({out}, 1.0 / std::sqrt(double(in)), t, gen))
                   : no_bias_),
      has_bias_(bias_on) {
  if (in <= 0 || out <= 0) fail<ValueError>("Linear", "features must be positive, got in=", in, " out=", out);
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, DType t, double std)
    : weight(register_parameter("weight", init::normal({num, dim}, std, t, gen))) {
  if (num <= 0 || dim <= 0) fail<ValueError>("Embedding", "sizes must be positive, got ", num, " x ", dim);
}

LayerNorm::LayerNorm(int64_t dim, double eps, DType t)
    : weight(register_parameter("weight", ones({dim}, t))),
      bias(register_parameter("bias", zeros({dim}, t))),
      eps_(eps) {}

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::gelu;
  if (name == "relu") return Activation::relu;
  fail<ValueError>("activation", "unknown activation '", name, "' (gelu, relu)");
}

std::vector<std::string> activation_names() { return {"gelu", "relu"}; }

Tensor activate(const Tensor& x, Activation a) { return a == Activation::gelu ? gelu(x) : relu(x); }

MLP::MLP(int64_t dim, int64_t hidden, Activation act, double dropout_p, std::shared_ptr<Generator> dropout_gen,
         Generator& init_gen, DType t)
    : act_(act) {
  fc1 = register_module("fc1", std::make_shared<Linear>(dim, hidden, true, init_gen, t));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, dim, true, init_gen, t));
  drop = register_module("drop", std::make_shared<Dropout>(dropout_p, std::move(dropout_gen)));
}

Tensor MLP::forward(const Tensor& x) const {
  ModuleScope scope(path());
  return fc2->forward(drop->forward(activate(fc1->forward(x), act_)));
}

Tensor sinusoidal_positions(int64_t max_len, int64_t dim, DType t) {
  std::vector<double> v(size_t(max_len * dim));
  for (int64_t p = 0; p < max_len; ++p)
    for (int64_t i = 0; i < dim; ++i) {
      double freq = std::pow(10000.0, -double(i - i % 2) / double(dim));
      v[size_t(p * dim + i)] = i % 2 == 0 ? std::sin(double(p) * freq) : std::cos(double(p) * freq);
    }
  return from_vector(v, {max_len, dim}, t);
}

}  // namespace attnlab

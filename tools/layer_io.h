// `attnlab layer`: one attention layer, forward and backward, on tensors from a safetensors file,
// with every output, gradient and recorded internal written back to safetensors, so a layer can
// be compared tensor by tensor with another implementation (PyTorch: docs/layer-io.md).
//
// Layers:
//   "attention"  a bare AttentionMethod built from the config's "attention" object.
//                inputs  q [B, H, Tq, dh], k, v [B, H, Tk, dh]; optional key_padding b8 [B, Tk]
//   "mha"        MultiHeadAttention (fused qkv projection, method per head, output projection).
//                inputs  x [B, T, D]; optional key_padding b8 [B, T]
// Both also take: grad_out (the upstream gradient, shape of "out"; ones when absent) and the
// module's parameters and buffers under their state_dict names ("qkv.weight", ...); those absent
// are initialised from the config's seed. Everything runs in the dtype of q (or x), f32 or f64.
//
// Outputs: "out"; "grad.<input>" for each differentiable input (q, k, v or x); "grad.<param>" for
// each parameter; "internals.<key>" for each entry of the method's internals map (recorded with
// record_internals); and, so the file alone reproduces the run, the inputs as used (grad_out
// included, ones if defaulted) and every parameter and buffer under its own name. An outputs file
// is therefore also a valid inputs file: its "out", "grad.*" and "internals.*" are ignored on input.
//
// Config (JSON object; every key optional except n_heads for "mha"):
//   {"attention": {"type": "softmax"}, "causal": false, "n_heads": 2, "d_model": 8, "seed": 0,
//    "dropout": 0.0, "train": false, "comment": "..."}
//   seed: parameters are initialised from Generator(seed, 0) in the order the module registers them
//   (as CausalLM does); noise-drawing methods and dropout use Generator(seed, 1).
//   train: module mode (dropout and noisy methods act only in training); n_heads / d_model for
//   "attention" are optional checks against q's shape.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

using TensorMap = std::map<std::string, Tensor>;

struct LayerConfig {
  nlohmann::json attention = {{"type", "softmax"}};
  bool causal = false;
  int64_t n_heads = 0;  // 0: not given
  int64_t d_model = 0;  // 0: not given
  uint64_t seed = 0;
  double dropout = 0.0;
  bool train = false;
  nlohmann::json source;  // the JSON it was read from

  static LayerConfig from_json(const nlohmann::json& j);  // ValueError on unknown keys or bad values
  nlohmann::json to_json() const;                         // every setting, defaults included
  static LayerConfig from_file(const std::string& path);  // IOError / ValueError naming the file
};

std::vector<std::string> layer_names();  // {"attention", "mha"}

// The inputs a layer accepts besides parameters, in the order the docs list them.
std::vector<std::string> layer_input_names(const std::string& layer);

// Runs `layer` forward and backward on `inputs` and returns what it writes (see above). `where`
// names the inputs in error messages (e.g. the file's path). Errors: ValueError (unknown layer,
// missing or unexpected tensor), ShapeError, DTypeError, each naming the tensor.
TensorMap run_layer(const std::string& layer, const LayerConfig& cfg, const TensorMap& inputs,
                    const std::string& where = "inputs");

// The file version `attnlab layer` runs: reads inputs_path, writes out_path (atomically) with the
// layer name and config in the safetensors metadata ("attnlab.layer", "attnlab.config").
// Returns the tensors written.
TensorMap run_layer_io(const std::string& layer, const LayerConfig& cfg, const std::string& inputs_path,
                       const std::string& out_path);

}  // namespace attnlab

// attnlab layer --layer attention|mha [--config CFG.json] --inputs IN.safetensors --out OUT.safetensors
#include <iostream>

#include "tools/cli_common.h"
#include "tools/layer_io.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab layer",
      "usage: attnlab layer --layer attention|mha [--config CFG.json] --inputs IN.safetensors --out OUT.safetensors\n",
      "  Runs one attention layer forward, then backward from the upstream gradient 'grad_out' (ones\n"
      "  when the inputs file has none), and writes the output, every input and parameter gradient,\n"
      "  the method's internals (attention weights ...), the inputs and all parameters to OUT.\n"
      "  f32 or f64, following the inputs' dtype. Tensor names: docs/layer-io.md.\n"
      "    --layer attention   a bare attention method: q, k, v [B, H, T, dh], optional key_padding b8 [B, Tk]\n"
      "    --layer mha         MultiHeadAttention: x [B, T, D], optional key_padding b8 [B, T], parameters\n"
      "                        qkv.weight, qkv.bias, out.weight, out.bias (missing ones: initialised from seed)\n"
      "  CFG.json (all optional but n_heads for mha):\n"
      "    {\"attention\": {\"type\": \"softmax\"}, \"causal\": false, \"n_heads\": 4, \"seed\": 0,\n"
      "     \"dropout\": 0.0, \"train\": false}");
  std::string layer, config, inputs, out;
  bool quiet = false;
  cmd.choice("--layer", layer, layer_names(), "the layer to run")->required();
  cmd.text("--config", config, "the layer config (JSON)")->type_name("CFG.json");
  cmd.text("--inputs", inputs, "the input tensors")->type_name("IN.safetensors")->required();
  cmd.text("--out", out, "where to write the results")->type_name("OUT.safetensors")->required();
  cmd.flag("--quiet", quiet, "do not list the tensors written");
  cmd.detect_anomaly_flag();
  return cmd.run(argc, argv, [&] {
    LayerConfig cfg = cmd.given("--config") ? LayerConfig::from_file(config) : LayerConfig{};
    TensorMap written = run_layer_io(layer, cfg, inputs, out);
    if (!quiet) {
      std::cout << "wrote " << out << " (" << written.size() << " tensors):\n";
      for (const auto& [name, t] : written) std::cout << "  " << name << "  " << describe(t) << "\n";
    }
    return 0;
  });
}

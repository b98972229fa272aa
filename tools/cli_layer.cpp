// attnlab layer --layer attention|mha [--config CFG.json] --inputs IN.safetensors --out OUT.safetensors
#include <iostream>

#include "tools/cli_common.h"
#include "tools/layer_io.h"

using namespace attnlab;

static const char* kUsage =
    "usage: attnlab layer --layer attention|mha [--config CFG.json] --inputs IN.safetensors --out OUT.safetensors\n"
    "  Runs one attention layer forward, then backward from the upstream gradient 'grad_out' (ones\n"
    "  when the inputs file has none), and writes the output, every input and parameter gradient,\n"
    "  the method's internals (attention weights ...), the inputs and all parameters to OUT.\n"
    "  f32 or f64, following the inputs' dtype. Tensor names: docs/layer-io.md.\n"
    "    --layer attention   a bare attention method: q, k, v [B, H, T, dh], optional key_padding b8 [B, Tk]\n"
    "    --layer mha         MultiHeadAttention: x [B, T, D], optional key_padding b8 [B, T], parameters\n"
    "                        qkv.weight, qkv.bias, out.weight, out.bias (missing ones: initialised from seed)\n"
    "  CFG.json (all optional but n_heads for mha):\n"
    "    {\"attention\": {\"type\": \"softmax\"}, \"causal\": false, \"n_heads\": 4, \"seed\": 0,\n"
    "     \"dropout\": 0.0, \"train\": false}\n";

int main(int argc, char** argv) {
  return cli::run_cli("attnlab layer", kUsage, [&] {
    cli::Args args(argc, argv, {"layer", "config", "inputs", "out"}, {"quiet"});
    if (args.flag("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (!args.positional.empty()) throw cli::UsageError("unexpected argument '" + args.positional[0] + "'");
    for (const char* required : {"layer", "inputs", "out"})
      if (!args.has(required)) throw cli::UsageError(std::string("--") + required + " is required");
    const std::string layer = args.str("layer");
    const auto names = layer_names();
    if (std::find(names.begin(), names.end(), layer) == names.end())
      throw cli::UsageError("unknown layer '" + layer + "' (known: attention, mha)");
    LayerConfig cfg = args.has("config") ? LayerConfig::from_file(args.str("config")) : LayerConfig{};
    TensorMap written = run_layer_io(layer, cfg, args.str("inputs"), args.str("out"));
    if (!args.flag("quiet")) {
      std::cout << "wrote " << args.str("out") << " (" << written.size() << " tensors):\n";
      for (const auto& [name, t] : written) std::cout << "  " << name << "  " << describe(t) << "\n";
    }
    return 0;
  });
}

// attnlab draw: attention heatmaps and loss curves as PNG (see tools/draw.h, docs/draw.md).
#include <iostream>

#include "tools/cli_common.h"
#include "tools/draw.h"

using namespace attnlab;

static const char* kUsage =
    "usage: attnlab draw --run DIR --text TEXT --out FILE.png [--internal attn] [heatmap options]\n"
    "       attnlab draw --from-layer OUT.safetensors --out DIR [--tensor NAME] [heatmap options]\n"
    "       attnlab draw --metrics FILE.jsonl --out FILE.png [--width W] [--height H]\n"
    "  --run         attention of DIR's model (checkpoint, tokenizer) on TEXT: rows = layers, columns =\n"
    "                heads, each cell a Tq x Tk heatmap with the tokens along its axes\n"
    "  --from-layer  every internals.* tensor of an `attnlab layer` output (or the one --tensor names),\n"
    "                one DIR/<name>.png each: [B, H, T, T] as B rows x H heads, other shapes as matrices\n"
    "  --metrics     train loss (and EMA, val loss) and validation bits per character vs step\n"
    "heatmap options:\n"
    "  --colormap viridis|gray|coolwarm   default: viridis, coolwarm when the data has negative values\n"
    "  --norm cell|grid|row               each cell on its own value range (default), one shared range,\n"
    "                                     or each matrix row (query) on its own range\n"
    "  --gamma G                          colour = normalised value^G (default 1; 0.5 brightens small weights)\n"
    "  --scale N                          pixels per matrix entry (default: cells of about 256 px)\n";

int main(int argc, char** argv) {
  return cli::run_cli("attnlab draw", kUsage, [&] {
    cli::Args args(argc, argv,
                   {"run", "text", "from-layer", "tensor", "metrics", "out", "internal", "colormap", "norm", "gamma",
                    "scale", "width", "height"},
                   {});
    if (args.flag("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (!args.positional.empty()) throw cli::UsageError("unexpected argument '" + args.positional[0] + "'");
    const int modes = int(args.has("run")) + int(args.has("from-layer")) + int(args.has("metrics"));
    if (modes != 1) throw cli::UsageError("give exactly one of --run, --from-layer and --metrics");
    if (!args.has("out")) throw cli::UsageError("--out is required");
    const std::string out = args.str("out");
    auto only_with = [&](const char* mode, std::initializer_list<const char*> opts) {
      for (const char* o : opts)
        if (args.has(o)) throw cli::UsageError(std::string("--") + o + " applies only with --" + mode);
    };

    HeatmapStyle style;
    if (args.has("colormap")) {
      try {
        style.cmap = parse_colormap(args.str("colormap"));
      } catch (const ValueError& e) {
        throw cli::UsageError(e.what());
      }
    }
    style.norm = args.str("norm", "cell");
    if (style.norm != "cell" && style.norm != "grid" && style.norm != "row")
      throw cli::UsageError("--norm must be cell, grid or row");
    style.gamma = args.num("gamma", 1.0);
    if (!(style.gamma > 0 && style.gamma <= 10)) throw cli::UsageError("--gamma must be in (0, 10]");
    const double scale = args.num("scale", 0);
    if (scale < 0 || scale > 64 || scale != double(int64_t(scale)))
      throw cli::UsageError("--scale must be a whole number of pixels, 1 to 64");
    style.scale = int64_t(scale);

    if (args.has("run")) {
      only_with("from-layer", {"tensor"});
      only_with("metrics", {"width", "height"});
      if (!args.has("text")) throw cli::UsageError("--run needs --text");
      Image img = draw_run_attention(args.str("run"), args.str("text"), style, args.str("internal", "attn"));
      write_png(out, img);
      std::cout << "wrote " << out << " (" << img.width << "x" << img.height << ")\n";
    } else if (args.has("from-layer")) {
      only_with("run", {"text", "internal"});
      only_with("metrics", {"width", "height"});
      for (const auto& path : draw_layer_file(args.str("from-layer"), out, style, args.str("tensor")))
        std::cout << "wrote " << path << "\n";
    } else {
      only_with("run", {"text", "internal"});
      only_with("from-layer", {"tensor"});
      for (const char* o : {"colormap", "norm", "gamma", "scale"})
        if (args.has(o)) throw cli::UsageError(std::string("--") + o + " applies only to heatmaps");
      const double w = args.num("width", 1000), h = args.num("height", 760);
      if (w < 200 || h < 200 || w > 10000 || h > 10000)
        throw cli::UsageError("--width and --height must be 200 to 10000");
      Image img = draw_metrics(args.str("metrics"), int64_t(w), int64_t(h));
      write_png(out, img);
      std::cout << "wrote " << out << " (" << img.width << "x" << img.height << ")\n";
    }
    return 0;
  });
}

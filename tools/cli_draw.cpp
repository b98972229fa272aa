// attnlab draw: attention heatmaps and loss curves as PNG (see tools/draw.h, docs/draw.md).
#include <iostream>

#include "tools/cli_common.h"
#include "tools/draw.h"
#include "tools/run_dir.h"
#include "tools/train_config.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab draw",
      "usage: attnlab draw --run DIR (--text TEXT | --image N) --out FILE.png [--internal attn] [heatmap options]\n"
      "       attnlab draw --from-layer OUT.safetensors --out DIR [--tensor NAME] [heatmap options]\n"
      "       attnlab draw --metrics FILE.jsonl --out FILE.png [--width W] [--height H]\n",
      "  --run         attention of DIR's model (checkpoint, tokenizer) on TEXT: rows = layers, columns =\n"
      "                heads, each cell a Tq x Tk heatmap with the tokens along its axes; an image\n"
      "                classifier run takes test image N (--image) instead of a text, a sort-task run\n"
      "                neither (its first validation example)\n"
      "  --from-layer  every internals.* tensor of an `attnlab layer` output (or the one --tensor names),\n"
      "                one DIR/<name>.png each: [B, H, T, T] as B rows x H heads, other shapes as matrices\n"
      "  --metrics     train loss (and EMA, val loss), validation bits per character or accuracy, and\n"
      "                every attn.* number per layer and head (e.g. colsum_dev) vs step");
  std::string run_dir, text, from_layer, tensor, metrics, out, internal = "attn", colormap, norm = "cell";
  double gamma = 1.0;
  bool plain_zeros = false;
  int64_t scale = 0, width = 1000, height = 760, image = -1;
  cmd.text("--run", run_dir, "a run directory")->type_name("DIR");
  cmd.text("--text", text, "the text to run the model on (--run)");
  cmd.integer("--image", image, 0, kMaxTokens, "the test image to run an image classifier on (--run)")->type_name("N");
  cmd.text("--from-layer", from_layer, "an `attnlab layer` output file")->type_name("OUT.safetensors");
  cmd.text("--metrics", metrics, "a run's metrics.jsonl")->type_name("FILE.jsonl");
  cmd.text("--out", out, "the PNG to write (--from-layer: the directory)")->type_name("PATH")->required();
  cmd.text("--internal", internal, "the internals entry to draw (--run; default attn)")->type_name("NAME");
  cmd.text("--tensor", tensor, "draw this tensor of the file only (--from-layer)")->type_name("NAME");
  cmd.integer("--width", width, 200, 10000, "image width in pixels (--metrics; default 1000)")->type_name("W");
  cmd.integer("--height", height, 200, 10000, "image height in pixels (--metrics; default 760)")->type_name("H");
  const std::string heatmap = "heatmap options";
  cmd.text("--colormap", colormap, "default: viridis, coolwarm when the data has negative values")
      ->type_name("viridis|gray|coolwarm")
      ->group(heatmap);
  cmd.choice("--norm", norm, {"cell", "grid", "row"},
             "each cell on its own value range (default), one shared range,\n"
             "or each matrix row (query) on its own range")
      ->group(heatmap);
  cmd.number("--gamma", gamma, NumberRange{0, 10, true, false},
             "colour = normalised value^G (default 1; 0.5 brightens small weights)")
      ->type_name("G")
      ->group(heatmap);
  cmd.integer("--scale", scale, 0, 64, "pixels per matrix entry (default 0: cells of about 256 px)")->group(heatmap);
  cmd.flag("--plain-zeros", plain_zeros,
           "draw exact zeros with the colormap (default: light grey, so sparse\nsupports stand out)")
      ->group(heatmap);
  return cmd.run(argc, argv, [&] {
    const int modes = int(cmd.given("--run")) + int(cmd.given("--from-layer")) + int(cmd.given("--metrics"));
    if (modes != 1) throw cli::UsageError("give exactly one of --run, --from-layer and --metrics");
    auto only_with = [&](const char* mode, std::initializer_list<const char*> opts) {
      for (const char* o : opts)
        if (cmd.given(o)) throw cli::UsageError(cat(o, " applies only with --", mode));
    };

    HeatmapStyle style;
    if (cmd.given("--colormap")) {
      try {
        style.cmap = parse_colormap(colormap);
      } catch (const ValueError& e) {
        throw cli::UsageError(e.what());
      }
    }
    style.norm = norm;
    style.gamma = gamma;
    style.scale = scale;
    style.mark_zeros = !plain_zeros;

    if (cmd.given("--run")) {
      only_with("from-layer", {"--tensor"});
      only_with("metrics", {"--width", "--height"});
      // A sort-task run draws its first validation example and takes neither.
      auto is_sort_run = [&] {
        try {
          return load_run(run_dir).config.data.sort();
        } catch (const Error&) {  // not a run: the usage error says what is missing
          return false;
        }
      };
      if (cmd.given("--text") == cmd.given("--image") && (cmd.given("--text") || !is_sort_run()))
        throw cli::UsageError("--run needs --text or --image");
      Image img = draw_run_attention(run_dir, text, style, internal, cmd.given("--image") ? image : -1);
      write_png(out, img);
      std::cout << "wrote " << out << " (" << img.width << "x" << img.height << ")\n";
    } else if (cmd.given("--from-layer")) {
      only_with("run", {"--text", "--internal", "--image"});
      only_with("metrics", {"--width", "--height"});
      for (const auto& path : draw_layer_file(from_layer, out, style, tensor)) std::cout << "wrote " << path << "\n";
    } else {
      only_with("run", {"--text", "--internal", "--image"});
      only_with("from-layer", {"--tensor"});
      for (const char* o : {"--colormap", "--norm", "--gamma", "--scale"})
        if (cmd.given(o)) throw cli::UsageError(cat(o, " applies only to heatmaps"));
      Image img = draw_metrics(metrics, width, height);
      write_png(out, img);
      std::cout << "wrote " << out << " (" << img.width << "x" << img.height << ")\n";
    }
    return 0;
  });
}

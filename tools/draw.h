// `attnlab draw`: attention pictures and loss curves as PNG (tools/png.h; no GUI stack).
//
//  * draw_heatmap_grid: a grid of matrices (rows x columns of cells, each a heatmap of one 2-D
//    matrix, entry (i, j) a scale x scale block), labelled, with a per-cell value range caption
//    and a colour bar. Optional per-entry token labels along the axes when the blocks are large
//    enough for the 5x7 font.
//  * draw_tensor: any tensor of rank >= 1 as such a grid: the last two dims are the matrix, the
//    leading ones the grid ([B, H, Tq, Tk] -> B rows x H columns; [A, n, k] -> A cells; rank 1 ->
//    one 1 x n row), so attention weights, sparse supports, Sinkhorn sort matrices and routing
//    memberships all draw the same way. b8 and i64 draw as numbers (0/1, counts, cluster ids).
//  * draw_run_attention: a trained CausalLM from a run directory on a text (or an image classifier
//    on a test image): rows = layers, columns = heads, each cell the Tq x Tk attention of one head,
//    tokens along the axes.
//  * draw_metrics: loss curves from a run's metrics.jsonl: train loss (and its EMA, and val loss)
//    vs step in one panel, validation bits per character (or accuracy) in another, and a panel per
//    attn.* key (per layer and head: entmax's support and α, every method's colsum_dev).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "tools/colormap.h"
#include "tools/png.h"

namespace attnlab {

struct HeatmapStyle {
  // Colormap; unset: viridis for non-negative data, coolwarm (symmetric around 0) when it has
  // negative values.
  std::optional<Colormap> cmap;
  // "cell": each cell spans its own range (0 or its minimum .. its maximum); "grid": one range for
  // all cells; "row": each matrix row its own range (where each query looks, however peaked).
  std::string norm = "cell";
  // Colour position = normalised value ^ gamma (< 1 brightens small values, e.g. 0.5 for the long
  // tail of attention weights; diverging maps apply it to |v| on each side of 0).
  double gamma = 1.0;
  // Exact zeros in a colour of their own (light grey) with sequential colormaps, so sparse weights
  // (entmax, sparsemax, masked positions) show their support apart from small non-zero values.
  bool mark_zeros = true;
  int64_t scale = 0;       // pixels per matrix entry; 0 chooses one (cells of about 256 px, 1..24)
  int64_t max_cells = 64;  // larger grids draw their first max_cells cells (the title says so)
};

struct HeatmapGrid {
  std::string title;
  int64_t rows = 0, cols = 0;                       // grid layout
  std::vector<Tensor> cells;                        // rows*cols 2-D tensors of one shape, row-major
                                                    // (an undefined one leaves its place blank)
  std::vector<std::string> cell_labels;             // optional, one per cell, before its range caption
  std::vector<std::string> row_labels, col_labels;  // optional, one per grid row / column
  std::vector<std::string> y_tokens, x_tokens;      // optional, one per matrix row / column
};

// Where draw_heatmap_grid put things: cell (r, c) has its top-left pixel at
// (x0 + c * step_x, y0 + r * step_y); matrix entry (i, j) of it is the scale x scale block at
// (+ j * scale, + i * scale).
struct HeatmapLayout {
  int64_t x0 = 0, y0 = 0, step_x = 0, step_y = 0, scale = 0;
  int64_t cell_width = 0, cell_height = 0;  // matrix columns * scale, rows * scale
  Colormap cmap = Colormap::viridis;        // the colormap used (after the automatic choice)
};

Image draw_heatmap_grid(const HeatmapGrid& grid, const HeatmapStyle& style = {}, HeatmapLayout* layout = nullptr);
Image draw_tensor(const Tensor& t, const std::string& title, const HeatmapStyle& style = {},
                  HeatmapLayout* layout = nullptr);

// Loads DIR's checkpoint read-only (load_run: its recorded config, tokenizer and weights), runs the
// model on `text` with record_internals set on every layer's attention method, and collects
// internals[internal] of every layer: grid rows = layers, columns = heads, tokens as axis labels.
// ValueError listing the recorded keys when a method has no such entry; also when the text is empty
// or longer than the model's max_len. An image classifier run takes test image number `image` instead
// of the text (ValueError when it is not given, or given for a language model).
HeatmapGrid run_attention_grid(const std::string& run_dir, const std::string& text,
                               const std::string& internal = "attn", int64_t image = -1);
Image draw_run_attention(const std::string& run_dir, const std::string& text, const HeatmapStyle& style = {},
                         const std::string& internal = "attn", int64_t image = -1);

// Draws tensors of a `layer` output file, one PNG per tensor into out_dir (created), named
// "<tensor name>.png". Default: every "internals.*" tensor; `only` picks one tensor by name.
// Returns the paths written. ValueError when there is nothing to draw or `only` is absent.
std::vector<std::string> draw_layer_file(const std::string& path, const std::string& out_dir,
                                         const HeatmapStyle& style = {}, const std::string& only = "");

// Rows of a metrics JSONL: {"step", "train_loss", "train_loss_ema"?, ...} and {"step", "val_loss",
// "val_bpc", ...}. ValueError naming the line for malformed JSON, or when no row has a loss.
Image draw_metrics(const std::string& jsonl_path, int64_t width = 1000, int64_t height = 760);

}  // namespace attnlab

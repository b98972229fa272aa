#include "tools/draw.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "core/safetensors.h"
#include "layers/transformer.h"
#include "tools/classifier_trainer.h"
#include "tools/plot.h"
#include "tools/run_dir.h"
#include "tools/sort_trainer.h"

namespace attnlab {

namespace fs = std::filesystem;

namespace {

const RGB kBlack{0, 0, 0}, kGrey{90, 90, 90}, kFrame{160, 160, 160}, kWhite{255, 255, 255};
// Line colours of the per-head series (the tab10 palette).
const std::vector<RGB> kPalette = {{31, 119, 180}, {255, 127, 14},  {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                                   {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

// Exact zeros: light grey, which viridis never gives; light orange with the gray colormap.
RGB exact_zero_colour(Colormap c) { return c == Colormap::gray ? RGB{250, 214, 170} : RGB{228, 228, 228}; }

struct Range {
  double lo = 0, hi = 1;
};

// The range an entry maps from: [min(0, min), max] for a sequential map, [-m, m] for a diverging one.
Range range_of(const std::vector<double>& v, bool diverging) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double x : v)
    if (std::isfinite(x)) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  if (!(lo <= hi)) return {0, 1};  // nothing finite
  Range r;
  if (diverging) {
    double m = std::max(std::abs(lo), std::abs(hi));
    r = {-m, m};
  } else {
    r = {std::min(0.0, lo), hi};
  }
  if (!(r.hi > r.lo)) r.hi = r.lo + 1;
  return r;
}

std::string shorten(const std::string& s, size_t n) { return s.size() <= n ? s : s.substr(0, n - 3) + "..."; }

// A token as one character for axis labels: the byte itself for one printable byte (or '\n',
// '\t', drawn as arrows), otherwise a box.
char token_char(const std::string& decoded) {
  if (decoded.size() == 1) return decoded[0];
  return '\x7f';
}

}  // namespace

Image draw_heatmap_grid(const HeatmapGrid& g, const HeatmapStyle& st, HeatmapLayout* layout) {
  const char* op = "draw_heatmap_grid";
  if (g.rows <= 0 || g.cols <= 0 || int64_t(g.cells.size()) != g.rows * g.cols)
    fail<ValueError>(op, "a ", g.rows, "x", g.cols, " grid needs ", g.rows * g.cols, " cells, got ", g.cells.size());
  if (st.norm != "cell" && st.norm != "grid" && st.norm != "row")
    fail<ValueError>(op, "norm must be 'cell', 'grid' or 'row', got '", st.norm, "'");
  if (!(st.gamma > 0) || !std::isfinite(st.gamma)) fail<ValueError>(op, "gamma must be positive, got ", st.gamma);
  const Tensor* first = nullptr;
  for (const auto& c : g.cells)
    if (c.defined() && !first) first = &c;
  if (!first) fail<ValueError>(op, "every cell is empty");
  const Shape shape = first->shape();
  if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0)
    fail<ShapeError>(op, "cells must be non-empty 2-D matrices, got ", describe(*first));
  for (const auto& c : g.cells)
    if (c.defined() && c.shape() != shape)
      fail<ShapeError>(op, "cells differ in shape: ", describe(*first), " and ", describe(c));
  const int64_t R = shape[0], C = shape[1];

  std::vector<std::vector<double>> vals;
  bool negative = false;
  for (const auto& c : g.cells) {
    vals.push_back(c.defined() ? c.to_vector<double>() : std::vector<double>());
    for (double x : vals.back()) negative = negative || (std::isfinite(x) && x < 0);
  }
  const Colormap cmap = st.cmap.value_or(negative ? Colormap::coolwarm : Colormap::viridis);
  const bool diverging = is_diverging(cmap);
  bool any_zero = false;
  for (const auto& v : vals)
    for (double x : v) any_zero = any_zero || x == 0.0;
  const bool zeros_apart = st.mark_zeros && !diverging && any_zero;
  const RGB kExactZero = exact_zero_colour(cmap);
  std::vector<Range> ranges;
  std::vector<double> everything;
  for (const auto& v : vals) {
    ranges.push_back(range_of(v, diverging));
    everything.insert(everything.end(), v.begin(), v.end());
  }
  const Range all = range_of(everything, diverging);
  const bool grid_norm = st.norm == "grid", row_norm = st.norm == "row";
  auto position = [&](double x, const Range& r) {
    double t = (x - r.lo) / (r.hi - r.lo);
    if (st.gamma == 1.0) return t;
    if (!diverging) return std::pow(std::clamp(t, 0.0, 1.0), st.gamma);
    double u = std::clamp(2 * t - 1, -1.0, 1.0);
    return 0.5 + 0.5 * std::copysign(std::pow(std::abs(u), st.gamma), u);
  };

  const bool have_x = int64_t(g.x_tokens.size()) == C, have_y = int64_t(g.y_tokens.size()) == R;
  int64_t s = st.scale;
  if (s <= 0) {
    s = std::clamp<int64_t>(std::lround(256.0 / double(std::max(R, C))), 1, 24);
    if ((have_x || have_y) && std::max(R, C) <= 64) s = std::max<int64_t>(s, 8);  // room for the labels
  }
  const bool show_x = have_x && s >= 6, show_y = have_y && s >= 7;
  const int64_t cw = C * s, ch = R * s;

  // Layout.
  const int64_t margin = 14, big = plot::text_height(2), small = plot::text_height(1);
  const int64_t title_h = g.title.empty() ? 0 : big + 12;
  const int64_t col_label_h = g.col_labels.empty() ? 0 : big + 8;
  const int64_t xtok_h = show_x ? small + 4 : 0;
  int64_t row_label_w = 0;
  for (const auto& l : g.row_labels) row_label_w = std::max(row_label_w, plot::text_width(l, 2) + 12);
  const int64_t ytok_w = show_y ? plot::kGlyphWidth + 4 : 0;
  const int64_t gap_x = 18, caption_h = small + 6, gap_y = caption_h + 12;
  const int64_t bar_h = 12, colorbar_h = bar_h + 6 + small + 4;
  const int64_t x0 = margin + row_label_w + ytok_w, y0 = margin + title_h + col_label_h + xtok_h;
  int64_t width = x0 + g.cols * cw + (g.cols - 1) * gap_x + margin;
  const int64_t bw = 256;  // colour bar
  const std::string bar_note = st.norm == "row"    ? "each matrix row on its own range"
                               : st.norm == "cell" ? "each cell on its own range (caption)"
                                                   : "";
  const std::string gamma_note = st.gamma != 1.0 ? cat("colour = value^", st.gamma) : "";
  width = std::max({width, plot::text_width(g.title, 2) + 2 * margin,
                    x0 + bw + 12 + std::max(plot::text_width(bar_note, 1), plot::text_width(gamma_note, 1)) + 16 +
                        bar_h + 6 + plot::text_width("exactly 0", 1) + margin});
  const int64_t height = y0 + g.rows * (ch + gap_y) + colorbar_h + margin;
  check_image_size(g.title.empty() ? std::string("heatmap grid") : cat("heatmap of '", g.title, "'"), width, height);
  Image img(width, height, kWhite);
  if (layout) *layout = {x0, y0, cw + gap_x, ch + gap_y, s, cw, ch, cmap};

  plot::draw_text(img, margin, margin, g.title, kBlack, 2);
  for (int64_t gr = 0; gr < g.rows; ++gr)
    for (int64_t gc = 0; gc < g.cols; ++gc) {
      const size_t idx = size_t(gr * g.cols + gc);
      if (!g.cells[idx].defined()) continue;
      const int64_t cx = x0 + gc * (cw + gap_x), cy = y0 + gr * (ch + gap_y);
      const Range r = grid_norm ? all : ranges[idx];
      const std::vector<double>& v = vals[idx];
      for (int64_t i = 0; i < R; ++i) {
        const Range rr =
            row_norm ? range_of(std::vector<double>(v.begin() + i * C, v.begin() + (i + 1) * C), diverging) : r;
        for (int64_t j = 0; j < C; ++j) {
          double x = v[size_t(i * C + j)];
          RGB col =
              zeros_apart && x == 0.0 ? kExactZero : colormap(cmap, std::isfinite(x) ? position(x, rr) : std::nan(""));
          plot::fill_rect(img, cx + j * s, cy + i * s, s, s, col);
        }
      }
      plot::outline_rect(img, cx - 1, cy - 1, cw + 2, ch + 2, kFrame);
      // Caption: this cell's value range (its own when norm = cell; its maximum on the shared scale otherwise).
      std::string cap = g.cell_labels.size() == g.cells.size() ? g.cell_labels[idx] + "  " : std::string();
      Range own = range_of(v, false);
      cap += grid_norm || row_norm ? "max " + plot::format_value(own.hi)
                                   : plot::format_value(r.lo) + " .. " + plot::format_value(r.hi);
      plot::draw_text(img, cx, cy + ch + 5,
                      shorten(cap, size_t(std::max<int64_t>((cw + gap_x - 4) / plot::kGlyphAdvance, 8))), kGrey, 1);
      if (gr == 0 && show_x)
        for (int64_t j = 0; j < C; ++j)
          plot::draw_text(img, cx + j * s + (s - plot::kGlyphWidth) / 2, cy - 3 - small, g.x_tokens[size_t(j)], kBlack,
                          1);
      if (gc == 0 && show_y)
        for (int64_t i = 0; i < R; ++i)
          plot::draw_text(img, cx - 3 - plot::kGlyphWidth, cy + i * s + (s - small) / 2, g.y_tokens[size_t(i)], kBlack,
                          1);
      if (gr == 0 && gc < int64_t(g.col_labels.size())) {
        const std::string& l = g.col_labels[size_t(gc)];
        plot::draw_text(img, cx + cw / 2 - plot::text_width(l, 2) / 2, cy - xtok_h - 6 - big, l, kBlack, 2);
      }
      if (gc == 0 && gr < int64_t(g.row_labels.size()))
        plot::draw_text(img, margin, cy + ch / 2 - big / 2, g.row_labels[size_t(gr)], kBlack, 2);
    }

  // Colour bar with its end values (or a note that each cell has its own range).
  const int64_t by = height - margin - colorbar_h;
  for (int64_t i = 0; i < bw; ++i)
    plot::fill_rect(img, x0 + i, by, 1, bar_h, colormap(cmap, double(i) / double(bw - 1)));
  plot::outline_rect(img, x0 - 1, by - 1, bw + 2, bar_h + 2, kFrame);
  const int64_t ly = by + bar_h + 6;
  if (grid_norm) {
    std::string lo = plot::format_value(all.lo), hi = plot::format_value(all.hi);
    plot::draw_text(img, x0, ly, lo, kGrey, 1);
    plot::draw_text(img, x0 + bw - plot::text_width(hi, 1), ly, hi, kGrey, 1);
    if (diverging) plot::draw_text(img, x0 + bw / 2 - 2, ly, "0", kGrey, 1);
  } else {
    plot::draw_text(img, x0, ly, diverging ? "-max|v|" : "min(0, min)", kGrey, 1);
    plot::draw_text(img, x0 + bw - plot::text_width("max", 1), ly, "max", kGrey, 1);
  }
  if (zeros_apart) {  // legend: the exact-zero colour, after the bar's notes
    const int64_t zx = x0 + bw + 12 + std::max(plot::text_width(bar_note, 1), plot::text_width(gamma_note, 1)) + 16;
    plot::fill_rect(img, zx, by, bar_h, bar_h, kExactZero);
    plot::outline_rect(img, zx - 1, by - 1, bar_h + 2, bar_h + 2, kFrame);
    plot::draw_text(img, zx + bar_h + 6, by + 2, "exactly 0", kGrey, 1);
  }
  plot::draw_text(img, x0 + bw + 12, by + 2, bar_note, kGrey, 1);
  plot::draw_text(img, x0 + bw + 12, ly, gamma_note, kGrey, 1);
  return img;
}

Image draw_tensor(const Tensor& t, const std::string& title, const HeatmapStyle& st, HeatmapLayout* layout) {
  if (!t.defined() || t.dim() == 0 || t.numel() == 0)
    fail<ShapeError>("draw_tensor", "'", title, "': need a non-empty tensor of rank >= 1, got ",
                     t.defined() ? describe(t) : std::string("undefined"));
  const Shape& s = t.shape();
  const int64_t r = s.size() >= 2 ? s[s.size() - 2] : 1, c = s.back();
  const int64_t n = t.numel() / (r * c);
  Tensor flat = t.contiguous().reshape({n, r, c});
  HeatmapGrid g;
  const int64_t shown = std::min(n, std::max<int64_t>(st.max_cells, 1));
  g.title = title + (shown < n ? cat("  (first ", shown, " of ", n, " matrices)") : "");
  if (t.dim() >= 4) {
    g.cols = s[s.size() - 3];
    g.rows = (shown + g.cols - 1) / g.cols;
    const Shape lead(s.begin(), s.end() - 3);  // the grid rows index these dims, flattened
    for (int64_t i = 0; i < g.rows; ++i) {
      std::string l;
      int64_t rem = i;
      std::vector<int64_t> idx(lead.size());
      for (size_t d = lead.size(); d-- > 0;) {
        idx[d] = rem % lead[d];
        rem /= lead[d];
      }
      for (size_t d = 0; d < idx.size(); ++d) l += cat(d ? "," : "", idx[d]);
      g.row_labels.push_back(lead.size() == 1 ? cat("b", l) : cat("[", l, "]"));
    }
    for (int64_t j = 0; j < g.cols; ++j) g.col_labels.push_back(cat("h", j));
  } else {
    g.cols = std::min<int64_t>(shown, 8);
    g.rows = (shown + g.cols - 1) / g.cols;
    if (t.dim() == 3)
      for (int64_t i = 0; i < g.rows * g.cols; ++i) g.cell_labels.push_back(cat("[", i, "]"));
  }
  for (int64_t i = 0; i < g.rows * g.cols; ++i) {
    // The last grid row may be partly empty.
    g.cells.push_back(i < shown ? flat.select(0, i) : Tensor());
  }
  return draw_heatmap_grid(g, st, layout);
}

HeatmapGrid run_attention_grid(const std::string& run_dir, const std::string& text, const std::string& internal,
                               int64_t image) {
  const char* op = "draw";
  LoadedRun run = load_run(run_dir);
  const ModelConfig& mc = run.config.model;
  std::vector<int64_t> ids;
  std::string what;  // for the title
  Tensor input;
  if (run.classifier) {
    if (image < 0) fail<ValueError>(op, run_dir, " holds an image classifier: pick a test image with --image N");
    ImageSplits data = load_image_splits(run.config);
    if (image >= data.test.size())
      fail<ValueError>(op, "--image ", image, " is past the ", data.test.size(), " test images");
    input = data.test.images.narrow(0, image, 1);
    const int64_t label = data.test.labels.data<int64_t>()[image];
    what = cat("test image ", image, " (", data.test.class_names.at(size_t(label)), ")");
  } else if (run.config.data.sort()) {
    // The sort task has no text: its first validation example, input and (teacher-forced) sorted part.
    if (image >= 0) fail<ValueError>(op, "--image applies to image classifier runs; ", run_dir, " holds a sort run");
    Generator g(run.config.seed, 101);
    const SortTaskConfig task{run.config.data.num_symbols, run.config.data.min_len, run.config.data.max_len};
    input = sort_sequences(make_sort_batch(task, 1, g)).ids;
    ids = input.to_vector<int64_t>();
    what = "the first validation example";
  } else {
    if (image >= 0)
      fail<ValueError>(op, "--image applies to image classifier runs; ", run_dir, " holds a language model");
    ids = run.tokenizer->encode(text);
    if (ids.empty()) fail<ValueError>(op, "the text is empty");
    if (int64_t(ids.size()) > mc.max_len)
      fail<ValueError>(op, "the text has ", ids.size(), " tokens but the model's max_len is ", mc.max_len);
    input = from_vector(ids, {1, int64_t(ids.size())});
    what = cat("\"", shorten(text, 40), "\"");
  }
  const int64_t T = int64_t(ids.size());

  auto& blocks = run.trunk().blocks;
  for (auto& b : blocks) {
    b->attn->method->record_internals = true;
    b->attn->method->internals.clear();
  }
  {
    NoGradGuard ng;
    if (run.classifier) run.classifier->forward(input);
    else run.model->forward(input);
  }
  HeatmapGrid g;
  g.rows = int64_t(blocks.size());
  g.cols = mc.n_heads;
  // One value per head (entmax's α, temperature): a single layers × heads matrix.
  std::vector<Tensor> per_head;
  for (size_t l = 0; l < blocks.size(); ++l) {
    auto& m = *blocks[l]->attn->method;
    m.record_internals = false;
    auto it = m.internals.find(internal);
    if (it == m.internals.end()) {
      std::string keys;
      for (auto& [k, v] : m.internals) keys += (keys.empty() ? "" : ", ") + k;
      fail<ValueError>(op, "layer ", l, "'s ", m.name(), " attention recorded no '", internal,
                       "' (it recorded: ", keys.empty() ? std::string("nothing") : keys, ")");
    }
    Tensor a = it->second;
    if (!is_floating(a.dtype())) a = a.to(DType::f64);  // counts, bitmasks: drawn as numbers
    if (a.dim() == 1 && a.size(0) == g.cols) {
      per_head.push_back(a.reshape({1, g.cols}));
      continue;
    }
    if (a.dim() == 3 && a.size(0) == 1 && a.size(1) == g.cols) a = a.unsqueeze(2);  // per query: a 1 × T strip
    if (a.dim() != 4 || a.size(0) != 1 || a.size(1) != g.cols)
      fail<ShapeError>(op, "layer ", l, " internals '", internal, "' is ", describe(a), ", expected [1, ", g.cols,
                       ", ., .], [1, ", g.cols, ", T] or [", g.cols, "]");
    for (int64_t h = 0; h < g.cols; ++h) g.cells.push_back(a.select(0, 0).select(0, h));
    g.row_labels.push_back("layer " + std::to_string(l));
  }
  if (!per_head.empty()) {
    if (per_head.size() != blocks.size())
      fail<ShapeError>(op, "internals '", internal, "' is one value per head in some layers only");
    HeatmapGrid ph;
    ph.rows = ph.cols = 1;
    ph.cells = {concat(per_head, 0)};
    for (size_t l = 0; l < blocks.size(); ++l) ph.y_tokens.push_back(std::to_string(l));
    for (int64_t h = 0; h < g.cols; ++h) ph.x_tokens.push_back(std::to_string(h));
    ph.cell_labels = {"layer (down) x head (across)"};
    ph.title = cat(fs::path(run_dir).filename().string(), " (step ", run.step, "): ", internal, " per layer and head");
    return ph;
  }
  for (int64_t h = 0; h < g.cols; ++h) g.col_labels.push_back("head " + std::to_string(h));
  std::vector<std::string> toks;
  for (int64_t id : ids)
    toks.push_back(std::string(1, run.tokenizer ? token_char(run.tokenizer->decode({id})) : sort_token_char(id)));
  if (!ids.empty() && g.cells[0].size(0) == T) g.y_tokens = toks;
  if (!ids.empty() && g.cells[0].size(1) == T) g.x_tokens = toks;
  g.title = cat(fs::path(run_dir).filename().string().empty() ? run_dir : fs::path(run_dir).filename().string(),
                " (step ", run.step, "): ", internal, " on ", what);
  return g;
}

Image draw_run_attention(const std::string& run_dir, const std::string& text, const HeatmapStyle& st,
                         const std::string& internal, int64_t image) {
  return draw_heatmap_grid(run_attention_grid(run_dir, text, internal, image), st);
}

std::vector<std::string> draw_layer_file(const std::string& path, const std::string& out_dir, const HeatmapStyle& st,
                                         const std::string& only) {
  SafetensorsFile f = load_safetensors(path);
  std::vector<std::string> names;
  if (!only.empty()) {
    if (!f.tensors.count(only)) {
      std::string known;
      for (auto& [k, v] : f.tensors) known += (known.empty() ? "" : ", ") + k;
      fail<ValueError>("draw", path, " has no tensor '", only, "' (it has: ", known, ")");
    }
    names.push_back(only);
  } else {
    for (auto& [k, v] : f.tensors)
      if (k.rfind("internals.", 0) == 0) names.push_back(k);
    if (names.empty()) fail<ValueError>("draw", path, " has no internals.* tensors (pick one with --tensor NAME)");
  }
  fs::create_directories(out_dir);
  std::vector<std::string> written;
  for (const auto& name : names) {
    std::string file = name;
    std::replace(file.begin(), file.end(), '/', '_');
    std::string out = (fs::path(out_dir) / (file + ".png")).string();
    write_png(out, draw_tensor(f.tensors[name], name + "  " + describe(f.tensors[name]), st));
    written.push_back(out);
  }
  return written;
}

Image draw_metrics(const std::string& path, int64_t width, int64_t height) {
  std::ifstream in(path);
  if (!in) fail<IOError>("draw", "cannot open '", path, "'");
  plot::Series train{"train loss", {}, {}, RGB{160, 195, 230}, false, 1.2};
  plot::Series ema{"train loss (EMA)", {}, {}, RGB{31, 119, 180}, false, 2.0};
  plot::Series val{"val loss", {}, {}, RGB{255, 127, 14}, true, 1.5};
  plot::Series bpc{"val bpc", {}, {}, RGB{214, 39, 40}, true, 1.5};
  plot::Series acc{"val accuracy", {}, {}, RGB{44, 160, 44}, true, 1.5};
  std::map<std::string, std::map<std::pair<size_t, size_t>, plot::Series>> per_head;  // key -> (layer, head)
  std::string line;
  int64_t lineno = 0;
  // A row is never skipped for a wrong type: the curve would silently miss it.
  auto number = [&](const nlohmann::json& row, const char* key, double& out) {
    auto it = row.find(key);
    if (it == row.end()) return false;
    if (!it->is_number())
      fail<ValueError>("draw", path, ":", lineno, ": \"", key, "\" must be a number, got ", it->dump());
    out = it->get<double>();
    return true;
  };
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail<ValueError>("draw", path, ":", lineno, ": not valid JSON: ", e.what());
    }
    double step, v;
    if (!row.is_object()) fail<ValueError>("draw", path, ":", lineno, ": a row must be a JSON object, got ", line);
    if (!number(row, "step", step)) continue;
    if (number(row, "train_loss", v)) train.x.push_back(step), train.y.push_back(v);
    if (number(row, "train_loss_ema", v)) ema.x.push_back(step), ema.y.push_back(v);
    if (number(row, "val_loss", v)) val.x.push_back(step), val.y.push_back(v);
    if (number(row, "val_bpc", v)) bpc.x.push_back(step), bpc.y.push_back(v);
    if (number(row, "val_acc", v)) acc.x.push_back(step), acc.y.push_back(v);
    // Per-head attention numbers (attn.alpha, attn.support: [layers][heads]), one line per head.
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key().rfind("attn.", 0) != 0 || !it->is_array()) continue;
      auto& lines = per_head[it.key()];
      for (size_t l = 0; l < it->size(); ++l) {
        const nlohmann::json& heads = (*it)[l];
        if (!heads.is_array()) continue;  // a layer whose method reports nothing
        for (size_t h = 0; h < heads.size(); ++h) {
          if (!heads[h].is_number())
            fail<ValueError>("draw", path, ":", lineno, ": \"", it.key(), "\" must hold numbers, got ",
                             heads[h].dump());
          plot::Series& sr = lines[{l, h}];
          if (sr.label.empty())
            sr = {cat("L", l, " h", h), {}, {}, kPalette[(l * heads.size() + h) % kPalette.size()], false, 1.5};
          sr.x.push_back(step), sr.y.push_back(heads[h].get<double>());
        }
      }
    }
  }
  std::vector<plot::Panel> panels;
  const std::string name = fs::path(path).filename().string();
  plot::Panel loss{"Loss vs step  (" + name + ")", "step", "loss (nats/token)", {}};
  for (auto* s : {&train, &ema, &val})
    if (!s->x.empty()) loss.series.push_back(*s);
  if (!loss.series.empty()) panels.push_back(loss);
  if (!bpc.x.empty())
    panels.push_back(
        {panels.empty() ? "Validation bits per character  (" + name + ")" : "Validation bits per character",
         "step",
         "bits per character",
         {bpc}});
  if (!acc.x.empty()) panels.push_back({"Validation accuracy", "step", "accuracy", {acc}});
  for (auto& [key, lines] : per_head) {
    plot::Panel p{key.substr(5) + " per layer (L) and head (h)", "step", key.substr(5), {}};
    for (auto& [lh, series] : lines) p.series.push_back(series);
    panels.push_back(p);
  }
  if (panels.empty())
    fail<ValueError>("draw", path, " has no rows with step and train_loss, val_loss, val_bpc or val_acc");
  // Room for the per-head panels: the height given is for the two standard ones.
  return plot::line_chart(panels, width, height * std::max<int64_t>(1, (int64_t(panels.size()) + 1) / 2));
}

}  // namespace attnlab

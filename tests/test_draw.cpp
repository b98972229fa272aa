// `attnlab draw` (tools/draw.h) and the pieces under it: the PNG writer (checked by an independent
// chunk walker here: signature, IHDR fields, every chunk's CRC, IDAT inflating to exactly
// height * (1 + 3 * width) bytes), colormaps, the bitmap font, ticks, heatmap grids (pixels hold the
// colormap colour of their matrix entry), attention of a model from a run directory, a layer
// output file and loss curves from a metrics file.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "datasets/tokenizer.h"
#include "layers/checkpoint.h"
#include "layers/transformer.h"
#include "tests/support.h"
#include "tools/colormap.h"
#include "tools/draw.h"
#include "tools/layer_io.h"
#include "tools/plot.h"
#include "tools/png.h"
#include "tools/train_config.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

// Checks a PNG independently of tools/png.cpp; returns its size.
std::pair<int64_t, int64_t> check_png(const std::vector<uint8_t>& b) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  REQUIRE(b.size() > 8 + 25 + 12 + 12);
  REQUIRE(std::memcmp(b.data(), sig, 8) == 0);
  size_t pos = 8;
  std::vector<std::string> types;
  std::vector<uint8_t> idat;
  int64_t w = 0, h = 0;
  while (pos < b.size()) {
    REQUIRE(b.size() - pos >= 12);
    const uint32_t len = be32(&b[pos]);
    REQUIRE(b.size() - pos - 12 >= len);
    const std::string type(reinterpret_cast<const char*>(&b[pos + 4]), 4);
    const uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), &b[pos + 4], uInt(4 + len)));
    CHECK_MESSAGE(crc == be32(&b[pos + 8 + len]), "CRC of chunk ", type);
    if (type == "IHDR") {
      REQUIRE(len == 13);
      w = be32(&b[pos + 8]);
      h = be32(&b[pos + 12]);
      CHECK(b[pos + 16] == 8);  // bit depth
      CHECK(b[pos + 17] == 2);  // truecolour
      CHECK(b[pos + 18] == 0);  // deflate
      CHECK(b[pos + 19] == 0);  // filter method
      CHECK(b[pos + 20] == 0);  // no interlace
    }
    if (type == "IDAT") idat.insert(idat.end(), &b[pos + 8], &b[pos + 8 + len]);
    types.push_back(type);
    pos += 12 + len;
  }
  CHECK(pos == b.size());
  REQUIRE(types.size() >= 3);
  CHECK(types.front() == "IHDR");
  CHECK(types.back() == "IEND");
  REQUIRE(w > 0);
  REQUIRE(h > 0);
  const size_t expect = size_t(h) * (1 + 3 * size_t(w));
  std::vector<uint8_t> raw(expect + 16);
  uLongf n = uLongf(raw.size());
  REQUIRE(uncompress(raw.data(), &n, idat.data(), uLong(idat.size())) == Z_OK);
  CHECK(n == expect);
  for (int64_t y = 0; y < h; ++y) CHECK(raw[size_t(y) * (1 + 3 * size_t(w))] <= 4);  // valid filter types
  return {w, h};
}

bool non_constant(const Image& img) {
  for (size_t i = 3; i < img.rgb.size(); ++i)
    if (img.rgb[i] != img.rgb[i % 3]) return true;
  return false;
}

std::set<std::tuple<int, int, int>> colours(const Image& img) {
  std::set<std::tuple<int, int, int>> out;
  for (size_t i = 0; i + 2 < img.rgb.size(); i += 3) out.insert({img.rgb[i], img.rgb[i + 1], img.rgb[i + 2]});
  return out;
}

bool has_colour(const Image& img, RGB c) { return colours(img).count({c.r, c.g, c.b}) > 0; }

// A tiny trained-looking run directory: config.json, a byte tokenizer, a checkpoint committing to both.
std::string make_run_dir(const TempDir& dir) {
  nlohmann::json cfg = {
      {"model", {{"vocab_size", 256}, {"d_model", 16}, {"n_layers", 2}, {"n_heads", 2}, {"d_ff", 32}, {"max_len", 24}}},
      {"data", {{"tokenizer", "byte"}, {"seq_len", 16}, {"batch_size", 2}}},
      {"seed", 3}};
  const std::string run = dir.file("run");
  fs::create_directories(run);
  std::ofstream(run + "/config.json") << cfg.dump(2);
  write_file(run + "/tokenizer.json", tokenizer_to_json(ByteTokenizer()).dump());
  CausalLM model(ModelConfig::from_json(cfg["model"]));
  CheckpointState st;
  st.config = cfg;
  st.step = 7;
  st.attached = {{"tokenizer", "tokenizer.json"}};
  save_checkpoint(run + "/checkpoint", model, nullptr, st);
  return run;
}

}  // namespace

TEST_CASE("draw: a small input that would need a huge image is refused, naming the tensor and the size") {
  // The issue's case: a small layer file planned an 840044x154 image (1.15 GB).
  TempDir dir;
  save_safetensors(dir.file("wide.safetensors"), {{"internals.wide", zeros({1, 40000}, DType::b8)}});
  const std::string e =
      message_of<ValueError>([&] { draw_layer_file(dir.file("wide.safetensors"), dir.file("pics")); });
  CHECK(contains(e, "heatmap of 'internals.wide  b8[1, 40000]' would need a 40028x"));
  CHECK(contains(e, "the limit is 32768 pixels a side and 134217728 pixels"));
  CHECK(!fs::exists(dir.file("pics/internals.wide.png")));
  // Explicit scales multiply the size.
  HeatmapStyle big;
  big.scale = 64;
  CHECK(contains(message_of<ValueError>([&] { draw_tensor(zeros({600, 600}), "m", big); }), "would need a 38428x"));
  CHECK(contains(message_of<ValueError>([] { Image(kMaxImageSide + 1, 1); }), "would need a 32769x1 image"));
}

TEST_CASE("png: the writer's chunks, CRCs and IDAT size; decode gives the pixels back") {
  Image img(37, 11);
  Generator g(1);
  Tensor noise = randint(0, 256, {int64_t(img.rgb.size())}, &g);
  for (size_t i = 0; i < img.rgb.size(); ++i) img.rgb[i] = uint8_t(noise.at({int64_t(i)}));
  std::vector<uint8_t> bytes = encode_png(img);
  CHECK(check_png(bytes) == std::pair<int64_t, int64_t>{37, 11});
  Image back = decode_png(bytes);
  CHECK(back.width == 37);
  CHECK(back.height == 11);
  CHECK(back.rgb == img.rgb);

  TempDir dir;
  write_png(dir.file("a.png"), img);
  CHECK(read_bytes(dir.file("a.png")) == bytes);
  CHECK(read_png(dir.file("a.png")).rgb == img.rgb);

  // Damage is detected: a flipped bit in IDAT breaks its CRC; a bad signature is not a PNG.
  std::vector<uint8_t> bad = bytes;
  bad[8 + 25 + 8 + 3] ^= 0x10;
  CHECK_THROWS_AS(decode_png(bad), ValueError);
  bad = bytes;
  bad[1] = 'X';
  CHECK_THROWS_AS(decode_png(bad), ValueError);
  bad = bytes;
  bad.resize(bad.size() - 12);  // no IEND
  CHECK_THROWS_AS(decode_png(bad), ValueError);
  CHECK_THROWS_AS(encode_png(Image(0, 5)), ValueError);
  CHECK_THROWS_AS(read_png(dir.file("missing.png")), IOError);
}

TEST_CASE("colormaps: viridis end points and middle, gray, coolwarm centre; parse errors") {
  CHECK(colormap(Colormap::viridis, 0.0) == RGB{68, 1, 84});
  CHECK(colormap(Colormap::viridis, 1.0) == RGB{253, 231, 37});
  CHECK(colormap(Colormap::viridis, 128 / 255.0) == RGB{33, 145, 140});
  CHECK(colormap(Colormap::viridis, -3.0) == colormap(Colormap::viridis, 0.0));  // clamped
  CHECK(colormap(Colormap::gray, 0.5) == RGB{128, 128, 128});
  CHECK(colormap(Colormap::coolwarm, 0.5) == RGB{221, 221, 221});
  // Viridis gets brighter monotonically (its perceptual point).
  double prev = -1;
  for (int i = 0; i <= 100; ++i) {
    RGB c = colormap(Colormap::viridis, i / 100.0);
    double lum = 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b;
    CHECK(lum >= prev - 0.5);
    prev = lum;
  }
  CHECK(parse_colormap("viridis") == Colormap::viridis);
  CHECK_THROWS_AS(parse_colormap("jet"), ValueError);
}

TEST_CASE("plot: font, ticks, labels") {
  CHECK(plot::text_width("abc", 1) == 17);
  CHECK(plot::text_width("abc", 2) == 34);
  Image img(40, 12);
  plot::draw_text(img, 1, 1, "A1\n", RGB{0, 0, 0});
  CHECK(non_constant(img));
  CHECK(img.get(0, 0) == RGB{255, 255, 255});
  CHECK(img.get(1, 2) == RGB{0, 0, 0});  // 'A': column 0 is lit from row 1 down

  auto t = plot::nice_ticks(0, 1, 5);
  REQUIRE(t.size() == 6);
  CHECK(t[1] == doctest::Approx(0.2));
  t = plot::nice_ticks(20, 900, 8);
  CHECK(t.front() == 100);
  CHECK(t.back() == 900);
  CHECK(plot::format_tick(0.2, 0.2) == "0.2");
  CHECK(plot::format_tick(1500, 500) == "1500");
  CHECK(plot::format_tick(2.25, 0.05) == "2.25");
}

TEST_CASE("draw: a heatmap grid puts each entry's colormap colour at its block") {
  Generator g(5);
  Tensor a = softmax(randn({2, 3, 5, 5}, DType::f64, &g), -1);
  HeatmapStyle style;
  style.scale = 6;
  HeatmapLayout lay;
  Image img = draw_tensor(a, "test", style, &lay);
  CHECK(lay.scale == 6);
  CHECK(lay.cell_width == 30);
  CHECK(lay.cell_height == 30);
  CHECK(lay.cmap == Colormap::viridis);
  CHECK(img.width >= lay.x0 + 2 * lay.step_x + lay.cell_width);
  CHECK(img.height >= lay.y0 + lay.step_y + lay.cell_height);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 3; ++h) {
      // norm "cell": 0 .. this cell's maximum
      Tensor cell = a.select(0, b).select(0, h);
      double mx = max(cell).item_double();
      for (int64_t i = 0; i < 5; ++i)
        for (int64_t j = 0; j < 5; ++j) {
          int64_t x = lay.x0 + h * lay.step_x + j * 6 + 3, y = lay.y0 + b * lay.step_y + i * 6 + 3;
          CHECK(img.get(x, y) == colormap(Colormap::viridis, cell.at({i, j}) / mx));
        }
    }
  CHECK(check_png(encode_png(img)) == std::pair<int64_t, int64_t>{img.width, img.height});

  // Signed data picks the diverging map; b8 and i64 tensors draw as numbers; rank 1 and 3 work.
  HeatmapLayout l2;
  draw_tensor(randn({4, 4}, DType::f32, &g), "signed", {}, &l2);
  CHECK(l2.cmap == Colormap::coolwarm);
  CHECK(non_constant(draw_tensor(causal_block_mask(6, 6), "mask")));
  CHECK(non_constant(draw_tensor(randint(0, 4, {3, 8, 2}, &g), "clusters")));
  CHECK(non_constant(draw_tensor(randn({7}, DType::f64, &g), "vector")));
  CHECK_THROWS_AS(draw_tensor(scalar_tensor(1.0), "scalar"), ShapeError);
  HeatmapStyle bad;
  bad.norm = "log";
  CHECK_THROWS_AS(draw_tensor(a, "x", bad), ValueError);
}

TEST_CASE("draw: attention of a run directory's model, rows = layers, columns = heads") {
  TempDir dir;
  const std::string run = make_run_dir(dir);
  const std::string text = "attend to me";
  HeatmapGrid grid = run_attention_grid(run, text);
  CHECK(grid.rows == 2);
  CHECK(grid.cols == 2);
  REQUIRE(grid.cells.size() == 4);
  const int64_t T = int64_t(text.size());
  CHECK(grid.cells[0].shape() == Shape{T, T});
  CHECK(grid.x_tokens.size() == size_t(T));
  CHECK(grid.x_tokens[0] == "a");

  // The same weights as a forward pass run here.
  TrainConfig cfg = TrainConfig::from_file(run + "/config.json");
  CausalLM model(cfg.model);
  load_checkpoint(run + "/checkpoint", model, nullptr);
  model.eval();
  for (auto& b : model.trunk->blocks) b->attn->method->record_internals = true;
  std::vector<int64_t> ids(text.begin(), text.end());
  {
    NoGradGuard ng;
    model.forward(from_vector(ids, {1, T}));
  }
  Tensor want = model.trunk->blocks[1]->attn->method->internals.at("attn").select(0, 0).select(0, 1);
  CHECK(equal(grid.cells[3], want));

  HeatmapLayout lay;
  Image img = draw_heatmap_grid(grid, {}, &lay);
  CHECK(lay.scale >= 8);  // room for the token labels
  // Causal: above the diagonal the weight is exactly 0, drawn apart in light grey (the darkest colour
  // with --plain-zeros); the diagonal's first entry is 1.
  CHECK(img.get(lay.x0 + lay.scale + 1, lay.y0 + 1) == RGB{228, 228, 228});
  CHECK(img.get(lay.x0 + 1, lay.y0 + 1) == colormap(Colormap::viridis, 1.0));
  HeatmapStyle plain;
  plain.mark_zeros = false;
  Image plain_img = draw_heatmap_grid(grid, plain, &lay);
  CHECK(plain_img.get(lay.x0 + lay.scale + 1, lay.y0 + 1) == colormap(Colormap::viridis, 0.0));
  CHECK(non_constant(img));
  TempDir out;
  write_png(out.file("attn.png"), draw_run_attention(run, text));
  auto [w, h] = check_png(read_bytes(out.file("attn.png")));
  CHECK(w == img.width);
  CHECK(h == img.height);

  CHECK_THROWS_AS(run_attention_grid(run, std::string(30, 'x')), ValueError);  // past max_len 24
  CHECK_THROWS_AS(run_attention_grid(run, ""), ValueError);
  try {
    run_attention_grid(run, "hi", "sinkhorn");
    FAIL("expected an error");
  } catch (const ValueError& e) {
    CHECK(std::string(e.what()).find("recorded: attn") != std::string::npos);
  }
  CHECK_THROWS_AS(run_attention_grid(dir.file("nope"), "hi"), IOError);
}

TEST_CASE("draw: every internals tensor of a layer output file") {
  TempDir dir;
  Generator g(9);
  TensorMap in{{"x", randn({2, 4, 6}, DType::f32, &g)}};
  save_safetensors(dir.file("in.safetensors"), in);
  run_layer_io("mha", LayerConfig::from_json({{"n_heads", 3}, {"causal", true}}), dir.file("in.safetensors"),
               dir.file("out.safetensors"));
  auto written = draw_layer_file(dir.file("out.safetensors"), dir.file("pics"));
  REQUIRE(written.size() == 1);
  CHECK(fs::path(written[0]).filename() == "internals.attn.png");
  Image img = read_png(written[0]);
  check_png(read_bytes(written[0]));
  CHECK(non_constant(img));
  // Any tensor by name (here a gradient, drawn with the diverging map).
  written = draw_layer_file(dir.file("out.safetensors"), dir.file("pics"), {}, "grad.qkv.weight");
  REQUIRE(written.size() == 1);
  CHECK(non_constant(read_png(written[0])));
  CHECK_THROWS_AS(draw_layer_file(dir.file("out.safetensors"), dir.file("pics"), {}, "nope"), ValueError);
  save_safetensors(dir.file("plain.safetensors"), in);
  CHECK_THROWS_AS(draw_layer_file(dir.file("plain.safetensors"), dir.file("pics")), ValueError);
}

TEST_CASE("draw: loss curves from a metrics file") {
  TempDir dir;
  {
    std::ofstream f(dir.file("metrics.jsonl"));
    double ema = 5.5;
    for (int step = 10; step <= 400; step += 10) {
      double loss = 1.2 + 4.0 * std::exp(-step / 80.0) + 0.05 * std::sin(step);
      ema = 0.9 * ema + 0.1 * loss;
      f << nlohmann::json{{"step", step}, {"train_loss", loss}, {"train_loss_ema", ema}, {"lr", 0.001}}.dump() << "\n";
      if (step % 100 == 0)
        f << nlohmann::json{{"step", step}, {"val_loss", loss + 0.1}, {"val_bpc", (loss + 0.1) / std::log(2.0)}}.dump()
          << "\n";
    }
  }
  Image img = draw_metrics(dir.file("metrics.jsonl"), 800, 600);
  CHECK(img.width == 800);
  CHECK(img.height == 600);
  CHECK(non_constant(img));
  CHECK(has_colour(img, RGB{31, 119, 180}));  // the EMA line
  CHECK(has_colour(img, RGB{214, 39, 40}));   // the bpc line
  write_png(dir.file("loss.png"), img);
  CHECK(check_png(read_bytes(dir.file("loss.png"))) == std::pair<int64_t, int64_t>{800, 600});

  // Only validation rows still plot; malformed lines and files without losses are errors.
  std::ofstream(dir.file("val.jsonl")) << R"({"step": 100, "val_bpc": 3.1})"
                                          "\n"
                                          R"({"step": 200, "val_bpc": 2.7})"
                                          "\n";
  CHECK(non_constant(draw_metrics(dir.file("val.jsonl"), 640, 480)));
  std::ofstream(dir.file("bad.jsonl")) << R"({"step": 1, "train_loss": 2})"
                                          "\n\n"
                                          R"({"step": 2, "train_loss": )"
                                          "\n";
  try {
    draw_metrics(dir.file("bad.jsonl"));
    FAIL("expected an error");
  } catch (const ValueError& e) {
    CHECK(std::string(e.what()).find("bad.jsonl:3") != std::string::npos);
  }
  std::ofstream(dir.file("empty.jsonl")) << R"({"step": 1, "lr": 0.1})"
                                            "\n";
  CHECK_THROWS_AS(draw_metrics(dir.file("empty.jsonl")), ValueError);
  CHECK_THROWS_AS(draw_metrics(dir.file("missing.jsonl")), IOError);

  // Per-head attention numbers (entmax's α and support) add a panel each, one line per layer and head.
  std::ofstream(dir.file("attn.jsonl")) << R"({"step": 10, "train_loss": 2, "attn.alpha": [[1.5, 1.5], [1.5, 1.5]]})"
                                           "\n"
                                           R"({"step": 20, "train_loss": 1.5, "attn.alpha": [[1.4, 1.3], [1.45, 1.5]]})"
                                           "\n";
  Image attn = draw_metrics(dir.file("attn.jsonl"), 640, 480);
  CHECK(attn.height == 480);  // two panels: loss and α
  for (RGB c : {RGB{31, 119, 180}, RGB{255, 127, 14}, RGB{44, 160, 44}, RGB{214, 39, 40}}) CHECK(has_colour(attn, c));
  std::ofstream(dir.file("attn_bad.jsonl")) << R"({"step": 10, "train_loss": 2, "attn.alpha": [["x"]]})"
                                               "\n";
  CHECK_THROWS_AS(draw_metrics(dir.file("attn_bad.jsonl")), ValueError);
}

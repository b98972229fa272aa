#include "tools/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"

namespace attnlab::plot {

namespace {

// The classic 5x7 LCD font for ASCII 0x20..0x7E: five column bytes per glyph, bit 0 = top row.
// clang-format off
const uint8_t kFont[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00}, {0x00, 0x00, 0x5F, 0x00, 0x00}, {0x00, 0x07, 0x00, 0x07, 0x00},  //   ! "
    {0x14, 0x7F, 0x14, 0x7F, 0x14}, {0x24, 0x2A, 0x7F, 0x2A, 0x12}, {0x23, 0x13, 0x08, 0x64, 0x62},  // # $ %
    {0x36, 0x49, 0x55, 0x22, 0x50}, {0x00, 0x05, 0x03, 0x00, 0x00}, {0x00, 0x1C, 0x22, 0x41, 0x00},  // & ' (
    {0x00, 0x41, 0x22, 0x1C, 0x00}, {0x14, 0x08, 0x3E, 0x08, 0x14}, {0x08, 0x08, 0x3E, 0x08, 0x08},  // ) * +
    {0x00, 0x50, 0x30, 0x00, 0x00}, {0x08, 0x08, 0x08, 0x08, 0x08}, {0x00, 0x60, 0x60, 0x00, 0x00},  // , - .
    {0x20, 0x10, 0x08, 0x04, 0x02}, {0x3E, 0x51, 0x49, 0x45, 0x3E}, {0x00, 0x42, 0x7F, 0x40, 0x00},  // / 0 1
    {0x42, 0x61, 0x51, 0x49, 0x46}, {0x21, 0x41, 0x45, 0x4B, 0x31}, {0x18, 0x14, 0x12, 0x7F, 0x10},  // 2 3 4
    {0x27, 0x45, 0x45, 0x45, 0x39}, {0x3C, 0x4A, 0x49, 0x49, 0x30}, {0x01, 0x71, 0x09, 0x05, 0x03},  // 5 6 7
    {0x36, 0x49, 0x49, 0x49, 0x36}, {0x06, 0x49, 0x49, 0x29, 0x1E}, {0x00, 0x36, 0x36, 0x00, 0x00},  // 8 9 :
    {0x00, 0x56, 0x36, 0x00, 0x00}, {0x08, 0x14, 0x22, 0x41, 0x00}, {0x14, 0x14, 0x14, 0x14, 0x14},  // ; < =
    {0x00, 0x41, 0x22, 0x14, 0x08}, {0x02, 0x01, 0x51, 0x09, 0x06}, {0x32, 0x49, 0x79, 0x41, 0x3E},  // > ? @
    {0x7E, 0x11, 0x11, 0x11, 0x7E}, {0x7F, 0x49, 0x49, 0x49, 0x36}, {0x3E, 0x41, 0x41, 0x41, 0x22},  // A B C
    {0x7F, 0x41, 0x41, 0x22, 0x1C}, {0x7F, 0x49, 0x49, 0x49, 0x41}, {0x7F, 0x09, 0x09, 0x01, 0x01},  // D E F
    {0x3E, 0x41, 0x41, 0x51, 0x32}, {0x7F, 0x08, 0x08, 0x08, 0x7F}, {0x00, 0x41, 0x7F, 0x41, 0x00},  // G H I
    {0x20, 0x40, 0x41, 0x3F, 0x01}, {0x7F, 0x08, 0x14, 0x22, 0x41}, {0x7F, 0x40, 0x40, 0x40, 0x40},  // J K L
    {0x7F, 0x02, 0x04, 0x02, 0x7F}, {0x7F, 0x04, 0x08, 0x10, 0x7F}, {0x3E, 0x41, 0x41, 0x41, 0x3E},  // M N O
    {0x7F, 0x09, 0x09, 0x09, 0x06}, {0x3E, 0x41, 0x51, 0x21, 0x5E}, {0x7F, 0x09, 0x19, 0x29, 0x46},  // P Q R
    {0x46, 0x49, 0x49, 0x49, 0x31}, {0x01, 0x01, 0x7F, 0x01, 0x01}, {0x3F, 0x40, 0x40, 0x40, 0x3F},  // S T U
    {0x1F, 0x20, 0x40, 0x20, 0x1F}, {0x7F, 0x20, 0x18, 0x20, 0x7F}, {0x63, 0x14, 0x08, 0x14, 0x63},  // V W X
    {0x03, 0x04, 0x78, 0x04, 0x03}, {0x61, 0x51, 0x49, 0x45, 0x43}, {0x00, 0x7F, 0x41, 0x41, 0x00},  // Y Z [
    {0x02, 0x04, 0x08, 0x10, 0x20}, {0x00, 0x41, 0x41, 0x7F, 0x00}, {0x04, 0x02, 0x01, 0x02, 0x04},  // \ ] ^
    {0x40, 0x40, 0x40, 0x40, 0x40}, {0x00, 0x01, 0x02, 0x04, 0x00}, {0x20, 0x54, 0x54, 0x54, 0x78},  // _ ` a
    {0x7F, 0x48, 0x44, 0x44, 0x38}, {0x38, 0x44, 0x44, 0x44, 0x20}, {0x38, 0x44, 0x44, 0x48, 0x7F},  // b c d
    {0x38, 0x54, 0x54, 0x54, 0x18}, {0x08, 0x7E, 0x09, 0x01, 0x02}, {0x0C, 0x52, 0x52, 0x52, 0x3E},  // e f g
    {0x7F, 0x08, 0x04, 0x04, 0x78}, {0x00, 0x44, 0x7D, 0x40, 0x00}, {0x20, 0x40, 0x44, 0x3D, 0x00},  // h i j
    {0x7F, 0x10, 0x28, 0x44, 0x00}, {0x00, 0x41, 0x7F, 0x40, 0x00}, {0x7C, 0x04, 0x18, 0x04, 0x78},  // k l m
    {0x7C, 0x08, 0x04, 0x04, 0x78}, {0x38, 0x44, 0x44, 0x44, 0x38}, {0x7C, 0x14, 0x14, 0x14, 0x08},  // n o p
    {0x08, 0x14, 0x14, 0x18, 0x7C}, {0x7C, 0x08, 0x04, 0x04, 0x08}, {0x48, 0x54, 0x54, 0x54, 0x20},  // q r s
    {0x04, 0x3F, 0x44, 0x40, 0x20}, {0x3C, 0x40, 0x40, 0x20, 0x7C}, {0x1C, 0x20, 0x40, 0x20, 0x1C},  // t u v
    {0x3C, 0x40, 0x30, 0x40, 0x3C}, {0x44, 0x28, 0x10, 0x28, 0x44}, {0x0C, 0x50, 0x50, 0x50, 0x3C},  // w x y
    {0x44, 0x64, 0x54, 0x4C, 0x44}, {0x00, 0x08, 0x36, 0x41, 0x00}, {0x00, 0x00, 0x7F, 0x00, 0x00},  // z { |
    {0x00, 0x41, 0x36, 0x08, 0x00}, {0x08, 0x04, 0x08, 0x10, 0x08},                                   // } ~
};
// clang-format on
const uint8_t kReturnArrow[5] = {0x10, 0x38, 0x54, 0x10, 0x1F};
const uint8_t kRightArrow[5] = {0x08, 0x08, 0x2A, 0x1C, 0x08};
const uint8_t kBox[5] = {0x7E, 0x42, 0x42, 0x42, 0x7E};

const uint8_t* glyph(unsigned char ch) {
  if (ch >= 0x20 && ch <= 0x7E) return kFont[ch - 0x20];
  if (ch == '\n') return kReturnArrow;
  if (ch == '\t') return kRightArrow;
  return kBox;
}

}  // namespace

void fill_rect(Image& img, int64_t x, int64_t y, int64_t w, int64_t h, RGB c) {
  const int64_t x0 = std::max<int64_t>(x, 0), y0 = std::max<int64_t>(y, 0);
  const int64_t x1 = std::min(x + w, img.width), y1 = std::min(y + h, img.height);
  for (int64_t yy = y0; yy < y1; ++yy) {
    uint8_t* p = &img.rgb[size_t((yy * img.width + x0) * 3)];
    for (int64_t xx = x0; xx < x1; ++xx, p += 3) {
      p[0] = c.r;
      p[1] = c.g;
      p[2] = c.b;
    }
  }
}

void outline_rect(Image& img, int64_t x, int64_t y, int64_t w, int64_t h, RGB c) {
  fill_rect(img, x, y, w, 1, c);
  fill_rect(img, x, y + h - 1, w, 1, c);
  fill_rect(img, x, y, 1, h, c);
  fill_rect(img, x + w - 1, y, 1, h, c);
}

void blend(Image& img, int64_t x, int64_t y, RGB c, double alpha) {
  if (!img.contains(x, y) || !(alpha > 0)) return;
  alpha = std::min(alpha, 1.0);
  uint8_t* p = &img.rgb[size_t((y * img.width + x) * 3)];
  auto mix = [&](uint8_t dst, uint8_t src) { return uint8_t(std::lround(dst + (double(src) - dst) * alpha)); };
  p[0] = mix(p[0], c.r);
  p[1] = mix(p[1], c.g);
  p[2] = mix(p[2], c.b);
}

void draw_line(Image& img, double x0, double y0, double x1, double y1, RGB c, double width) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
  const double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  const double half = width / 2;
  // Coverage of a pixel: 1 inside the stroke, falling linearly to 0 over one pixel at its edge.
  auto coverage = [&](double px, double py) {
    double t = len2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / len2 : 0.0;
    t = std::clamp(t, 0.0, 1.0);
    double ex = x0 + t * dx - px, ey = y0 + t * dy - py;
    return std::clamp(half + 0.5 - std::sqrt(ex * ex + ey * ey), 0.0, 1.0);
  };
  // Walk the major axis; on each step visit only the band of the minor axis the stroke can touch.
  const bool steep = std::abs(dy) > std::abs(dx);
  const double a0 = steep ? y0 : x0, a1 = steep ? y1 : x1, b0 = steep ? x0 : y0, b1 = steep ? x1 : y1;
  const double slope = a1 != a0 ? (b1 - b0) / (a1 - a0) : 0.0;
  const double band = half * std::sqrt(1 + slope * slope) + 1.5;
  const int64_t amin = int64_t(std::floor(std::min(a0, a1) - half - 1)),
                amax = int64_t(std::ceil(std::max(a0, a1) + half + 1));
  for (int64_t a = amin; a <= amax; ++a) {
    double ta = std::clamp(double(a), std::min(a0, a1), std::max(a0, a1));
    double bc = b0 + (ta - a0) * slope;
    for (int64_t b = int64_t(std::floor(bc - band)); b <= int64_t(std::ceil(bc + band)); ++b) {
      int64_t px = steep ? b : a, py = steep ? a : b;
      if (!img.contains(px, py)) continue;
      double cov = coverage(double(px), double(py));
      if (cov > 0) blend(img, px, py, c, cov);
    }
  }
}

void draw_disc(Image& img, double cx, double cy, double radius, RGB c) {
  for (int64_t y = int64_t(std::floor(cy - radius - 1)); y <= int64_t(std::ceil(cy + radius + 1)); ++y)
    for (int64_t x = int64_t(std::floor(cx - radius - 1)); x <= int64_t(std::ceil(cx + radius + 1)); ++x) {
      double d = std::hypot(double(x) - cx, double(y) - cy);
      blend(img, x, y, c, std::clamp(radius + 0.5 - d, 0.0, 1.0));
    }
}

int64_t text_width(const std::string& s, int scale) {
  return s.empty() ? 0 : int64_t(s.size()) * kGlyphAdvance * scale - scale;
}
int64_t text_height(int scale) { return kGlyphHeight * scale; }

void draw_text(Image& img, int64_t x, int64_t y, const std::string& s, RGB c, int scale) {
  for (size_t i = 0; i < s.size(); ++i) {
    const uint8_t* g = glyph(static_cast<unsigned char>(s[i]));
    const int64_t gx = x + int64_t(i) * kGlyphAdvance * scale;
    for (int col = 0; col < kGlyphWidth; ++col)
      for (int row = 0; row < kGlyphHeight; ++row)
        if (g[col] & (1u << row)) fill_rect(img, gx + col * scale, y + row * scale, scale, scale, c);
  }
}

void draw_text_up(Image& img, int64_t x, int64_t y, const std::string& s, RGB c, int scale) {
  // Glyph pixel (col, row) of character i goes to (x + row, y + W - 1 - (i*6 + col)), W the text width.
  const int64_t W = text_width(s, scale);
  for (size_t i = 0; i < s.size(); ++i) {
    const uint8_t* g = glyph(static_cast<unsigned char>(s[i]));
    for (int col = 0; col < kGlyphWidth; ++col)
      for (int row = 0; row < kGlyphHeight; ++row)
        if (g[col] & (1u << row)) {
          int64_t u = (int64_t(i) * kGlyphAdvance + col) * scale;  // along the text
          fill_rect(img, x + row * scale, y + W - u - scale, scale, scale, c);
        }
  }
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!std::isfinite(lo) || !std::isfinite(hi) || hi < lo || target < 1) return out;
  if (hi == lo) return {lo};
  double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw))), norm = raw / mag;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return out;
}

std::string format_tick(double v, double spacing) {
  char buf[64];
  if (std::abs(v) >= 1e7 || (v != 0 && std::abs(v) < 1e-4)) {
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
  }
  int decimals = spacing > 0 ? std::max(0, int(-std::floor(std::log10(spacing) + 1e-9))) : 3;
  std::snprintf(buf, sizeof buf, "%.*f", std::min(decimals, 6), v);
  return buf;
}

std::string format_value(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

Image line_chart(const std::vector<Panel>& panels, int64_t width, int64_t height, int fs) {
  if (panels.empty()) fail<ValueError>("line_chart", "no panels");
  const RGB black{0, 0, 0}, axis{60, 60, 60}, grid{225, 225, 225}, white{255, 255, 255};
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo;
  for (const auto& p : panels)
    for (const auto& s : p.series) {
      if (s.x.size() != s.y.size())
        fail<ValueError>("line_chart", "series '", s.label, "' has ", s.x.size(), " x values and ", s.y.size(),
                         " y values");
      for (size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
          xlo = std::min(xlo, s.x[i]);
          xhi = std::max(xhi, s.x[i]);
        }
    }
  if (!(xlo <= xhi)) fail<ValueError>("line_chart", "no finite data points to plot");
  if (xhi == xlo) {
    xlo -= 1;
    xhi += 1;
  }
  const int64_t th = text_height(fs);
  const int64_t panel_h = height / int64_t(panels.size());
  if (width < 200 || panel_h < 120)
    fail<ValueError>("line_chart", "image ", width, "x", height, " is too small for ", panels.size(), " panel(s)");
  Image img(width, height, white);
  const std::vector<double> xt = nice_ticks(xlo, xhi, 8);
  const double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1.0;

  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    double ylo = std::numeric_limits<double>::infinity(), yhi = -ylo;
    for (const auto& s : p.series)
      for (size_t i = 0; i < s.y.size(); ++i)
        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) {
          ylo = std::min(ylo, s.y[i]);
          yhi = std::max(yhi, s.y[i]);
        }
    if (!(ylo <= yhi)) {
      ylo = 0;
      yhi = 1;
    }
    double pad = (yhi - ylo) * 0.05;
    if (pad == 0) pad = std::max(std::abs(yhi) * 0.05, 0.5);
    ylo -= pad;
    yhi += pad;
    const std::vector<double> yt = nice_ticks(ylo, yhi, 6);
    const double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1.0;
    int64_t ylabel_w = 0;
    for (double v : yt) ylabel_w = std::max(ylabel_w, text_width(format_tick(v, ystep), fs));

    const int64_t top0 = int64_t(pi) * panel_h;
    const int64_t left = 12 + th + 10 + ylabel_w + 8, right = width - 24;
    const int64_t top = top0 + 10 + th + 12, bottom = top0 + panel_h - (th + 8 + th + 14);
    const int64_t pw = right - left, ph = bottom - top;
    auto X = [&](double x) { return double(left) + (x - xlo) / (xhi - xlo) * double(pw - 1); };
    auto Y = [&](double y) { return double(bottom - 1) - (y - ylo) / (yhi - ylo) * double(ph - 1); };

    draw_text(img, left, top0 + 10, p.title, black, fs);
    for (double v : xt) {
      int64_t px = std::lround(X(v));
      fill_rect(img, px, top, 1, ph, grid);
      fill_rect(img, px, bottom, 1, 5, axis);
      std::string lab = format_tick(v, xstep);
      draw_text(img, px - text_width(lab, fs) / 2, bottom + 8, lab, axis, fs);
    }
    for (double v : yt) {
      int64_t py = std::lround(Y(v));
      fill_rect(img, left, py, pw, 1, grid);
      fill_rect(img, left - 5, py, 5, 1, axis);
      std::string lab = format_tick(v, ystep);
      draw_text(img, left - 8 - text_width(lab, fs), py - th / 2, lab, axis, fs);
    }
    outline_rect(img, left - 1, top - 1, pw + 2, ph + 2, axis);
    draw_text(img, left + pw / 2 - text_width(p.xlabel, fs) / 2, bottom + 8 + th + 6, p.xlabel, black, fs);
    draw_text_up(img, 12, top + ph / 2 - text_width(p.ylabel, fs) / 2, p.ylabel, black, fs);

    for (const auto& s : p.series) {
      bool have_prev = false;
      double px0 = 0, py0 = 0;
      for (size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
          have_prev = false;
          continue;
        }
        double px = X(s.x[i]), py = Y(s.y[i]);
        if (have_prev) draw_line(img, px0, py0, px, py, s.color, s.line_width);
        if (s.markers) draw_disc(img, px, py, s.line_width + 1.5, s.color);
        px0 = px;
        py0 = py;
        have_prev = true;
      }
    }

    // Legend, top right inside the plot area.
    int64_t lw = 0;
    for (const auto& s : p.series) lw = std::max(lw, text_width(s.label, fs));
    if (!p.series.empty()) {
      const int64_t row_h = th + 8, box_w = 12 + 28 + 8 + lw + 12, box_h = int64_t(p.series.size()) * row_h + 10;
      const int64_t bx = right - box_w - 10, by = top + 10;
      fill_rect(img, bx, by, box_w, box_h, white);
      outline_rect(img, bx, by, box_w, box_h, RGB{180, 180, 180});
      for (size_t i = 0; i < p.series.size(); ++i) {
        const auto& s = p.series[i];
        double cy = double(by + 5 + int64_t(i) * row_h + row_h / 2);
        draw_line(img, double(bx + 12), cy, double(bx + 40), cy, s.color, s.line_width);
        if (s.markers) draw_disc(img, double(bx + 26), cy, s.line_width + 1.5, s.color);
        draw_text(img, bx + 48, int64_t(cy) - th / 2, s.label, black, fs);
      }
    }
  }
  return img;
}

}  // namespace attnlab::plot

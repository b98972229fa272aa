// Drawing on an Image without a GUI stack: rectangles, anti-aliased lines, a 5x7 bitmap font
// (printable ASCII, drawn at integer scales), "nice" axis ticks, and a line chart with stacked
// panels, axes, tick labels and a legend (used for loss curves).
#pragma once
#include <string>
#include <vector>

#include "tools/png.h"

namespace attnlab::plot {

constexpr int kGlyphWidth = 5, kGlyphHeight = 7, kGlyphAdvance = 6;  // pixels at scale 1

void fill_rect(Image& img, int64_t x, int64_t y, int64_t w, int64_t h, RGB c);  // clipped
void outline_rect(Image& img, int64_t x, int64_t y, int64_t w, int64_t h, RGB c);
// Mixes c into pixel (x, y) with weight alpha in [0, 1]; ignores pixels outside the image.
void blend(Image& img, int64_t x, int64_t y, RGB c, double alpha);
// A line of the given width between pixel-centre coordinates, anti-aliased by the distance of
// each pixel centre to the segment.
void draw_line(Image& img, double x0, double y0, double x1, double y1, RGB c, double width = 1.0);
void draw_disc(Image& img, double cx, double cy, double radius, RGB c);  // anti-aliased edge

// Text in the 5x7 font, top-left corner at (x, y); characters advance 6*scale pixels. Bytes outside
// printable ASCII draw as a hollow box, except '\n', drawn as a return arrow, and '\t' as a
// right arrow, so control characters stay visible in token labels.
int64_t text_width(const std::string& s, int scale = 1);
int64_t text_height(int scale = 1);
void draw_text(Image& img, int64_t x, int64_t y, const std::string& s, RGB c, int scale = 1);
// Rotated 90 degrees counter-clockwise (reads bottom to top); (x, y) is the top-left of its box,
// which is text_height wide and text_width tall.
void draw_text_up(Image& img, int64_t x, int64_t y, const std::string& s, RGB c, int scale = 1);

// About `target` round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 6);
// A tick label with as many decimals as the tick spacing needs ("0.25", "1500", "2e+06").
std::string format_tick(double v, double spacing);
// A compact value label: 3 significant digits ("0.873", "12.4", "1.2e-05").
std::string format_value(double v);

struct Series {
  std::string label;
  std::vector<double> x, y;  // same length; non-finite points are skipped (they break the line)
  RGB color;
  bool markers = false;  // a dot at every point
  double line_width = 2.0;
};

struct Panel {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
};

// Panels stacked top to bottom, sharing the x range of all their data. Each has its own y range
// (data range plus 5% margins), grid lines at the ticks, tick labels, axis labels and a legend.
// ValueError if there is no finite point at all.
Image line_chart(const std::vector<Panel>& panels, int64_t width, int64_t height, int font_scale = 2);

}  // namespace attnlab::plot

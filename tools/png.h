// RGB images and a minimal PNG codec on zlib (no other image library): 8-bit truecolour,
// non-interlaced. The writer emits the signature, IHDR, one IDAT (zlib stream of the filtered
// scanlines) and IEND, each chunk with its CRC-32; the reader accepts exactly that kind of image
// (RGB8, any of the five scanline filters, several IDAT chunks) and checks every CRC and length,
// so tests can round-trip what the tools draw.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace attnlab {

struct RGB {
  uint8_t r = 0, g = 0, b = 0;
  bool operator==(const RGB&) const = default;
};

// The largest image anything here makes (384 MiB of RGB): a small input (a wide tensor, a PNG
// header) must not plan gigabytes. check_image_size throws ValueError naming `what`, the planned
// size and the limit.
inline constexpr int64_t kMaxImageSide = 32768;
inline constexpr int64_t kMaxImagePixels = int64_t(1) << 27;
void check_image_size(const std::string& what, int64_t width, int64_t height);

// Row-major pixels, three bytes (r, g, b) each, top row first.
struct Image {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  Image(int64_t w, int64_t h, RGB fill = {255, 255, 255});  // checks the size (check_image_size)
  bool contains(int64_t x, int64_t y) const { return x >= 0 && y >= 0 && x < width && y < height; }
  RGB get(int64_t x, int64_t y) const;
  void set(int64_t x, int64_t y, RGB c);  // ignores pixels outside the image
};

// The complete PNG file as bytes. ValueError on an empty image or one over 2^31 - 1 pixels a side.
std::vector<uint8_t> encode_png(const Image& img, int zlib_level = 6);
// Writes atomically (temp file, fsync, rename); IOError naming the path on failure.
void write_png(const std::string& path, const Image& img);

// Decodes a PNG of the kind encode_png writes (8-bit RGB, non-interlaced). Anything else, or a
// damaged file (bad signature, chunk CRC, IDAT that does not inflate to the expected size...),
// throws ValueError saying what is wrong.
Image decode_png(const std::vector<uint8_t>& bytes);
Image read_png(const std::string& path);  // IOError if unreadable, ValueError if not a valid PNG

}  // namespace attnlab

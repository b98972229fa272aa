#include "tools/png.h"

#include <zlib.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/config.h"
#include "core/error.h"
#include "core/safetensors.h"  // AtomicFileWriter

namespace attnlab {

void check_image_size(const std::string& what, int64_t width, int64_t height) {
  if (width < 0 || height < 0) fail<ValueError>("image", what, ": negative size ", width, "x", height);
  if (width > kMaxImageSide || height > kMaxImageSide || width * height > kMaxImagePixels)
    fail<ValueError>("image", what, " would need a ", width, "x", height, " image (",
                     format_bytes(3.0 * double(width) * double(height)), "); the limit is ", kMaxImageSide,
                     " pixels a side and ", kMaxImagePixels, " pixels");
}

Image::Image(int64_t w, int64_t h, RGB fill) : width(w), height(h) {
  check_image_size("Image", w, h);
  rgb.resize(size_t(w * h * 3));
  for (size_t i = 0; i < rgb.size(); i += 3) {
    rgb[i] = fill.r;
    rgb[i + 1] = fill.g;
    rgb[i + 2] = fill.b;
  }
}

RGB Image::get(int64_t x, int64_t y) const {
  if (!contains(x, y)) fail<IndexError>("Image::get", "pixel (", x, ", ", y, ") outside ", width, "x", height);
  const uint8_t* p = &rgb[size_t((y * width + x) * 3)];
  return {p[0], p[1], p[2]};
}

void Image::set(int64_t x, int64_t y, RGB c) {
  if (!contains(x, y)) return;
  uint8_t* p = &rgb[size_t((y * width + x) * 3)];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

namespace {

constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(uint8_t(v >> 24));
  out.push_back(uint8_t(v >> 16));
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

uint32_t get_u32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// length, type, data, CRC-32 of type + data
void put_chunk(std::vector<uint8_t>& out, const char type[4], const uint8_t* data, size_t n) {
  put_u32(out, uint32_t(n));
  size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  if (n) out.insert(out.end(), data, data + n);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, out.data() + start, uInt(4 + n));
  put_u32(out, uint32_t(crc));
}

int paeth(int a, int b, int c) {
  int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

}  // namespace

std::vector<uint8_t> encode_png(const Image& img, int zlib_level) {
  if (img.width <= 0 || img.height <= 0 || img.width > 0x7fffffff || img.height > 0x7fffffff)
    fail<ValueError>("encode_png", "image size must be 1 to 2^31-1 pixels a side, got ", img.width, "x", img.height);
  if (img.rgb.size() != size_t(img.width * img.height * 3))
    fail<ValueError>("encode_png", "pixel buffer has ", img.rgb.size(), " bytes for a ", img.width, "x", img.height,
                     " RGB image");
  // Scanlines, each prefixed by its filter byte. Filter 1 (Sub: each byte minus the byte one pixel
  // to its left) for every row: heatmaps and plots are mostly horizontal runs of one colour, which
  // Sub turns into zeros.
  const size_t row = size_t(img.width) * 3;
  std::vector<uint8_t> raw(size_t(img.height) * (row + 1));
  for (int64_t y = 0; y < img.height; ++y) {
    uint8_t* dst = &raw[size_t(y) * (row + 1)];
    const uint8_t* src = &img.rgb[size_t(y) * row];
    dst[0] = 1;
    for (size_t i = 0; i < row; ++i) dst[1 + i] = uint8_t(src[i] - (i >= 3 ? src[i - 3] : 0));
  }
  uLongf zlen = compressBound(uLong(raw.size()));
  std::vector<uint8_t> z(zlen);
  int rc = compress2(z.data(), &zlen, raw.data(), uLong(raw.size()), zlib_level);
  if (rc != Z_OK) fail<ValueError>("encode_png", "zlib compress2 failed (code ", rc, ")");
  z.resize(zlen);

  std::vector<uint8_t> out(kSignature, kSignature + 8);
  uint8_t ihdr[13];
  std::vector<uint8_t> tmp;
  put_u32(tmp, uint32_t(img.width));
  put_u32(tmp, uint32_t(img.height));
  std::memcpy(ihdr, tmp.data(), 8);
  ihdr[8] = 8;   // bit depth
  ihdr[9] = 2;   // colour type: truecolour
  ihdr[10] = 0;  // compression: deflate
  ihdr[11] = 0;  // filter method 0
  ihdr[12] = 0;  // no interlace
  put_chunk(out, "IHDR", ihdr, 13);
  put_chunk(out, "IDAT", z.data(), z.size());
  put_chunk(out, "IEND", nullptr, 0);
  return out;
}

void write_png(const std::string& path, const Image& img) {
  std::vector<uint8_t> bytes = encode_png(img);
  AtomicFileWriter w(path, "write_png");
  w.write(bytes.data(), bytes.size());
  w.commit();
}

Image decode_png(const std::vector<uint8_t>& bytes) {
  const char* op = "decode_png";
  if (bytes.size() < 8 || std::memcmp(bytes.data(), kSignature, 8) != 0)
    fail<ValueError>(op, "not a PNG (bad signature)");
  size_t pos = 8;
  int64_t w = 0, h = 0;
  bool have_ihdr = false, have_iend = false;
  std::vector<uint8_t> idat;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 12) fail<ValueError>(op, "truncated chunk at byte ", pos);
    uint32_t len = get_u32(&bytes[pos]);
    if (len > 0x7fffffffu || bytes.size() - pos - 12 < len)
      fail<ValueError>(op, "chunk at byte ", pos, " claims ", len, " bytes, past the end of the file");
    std::string type(reinterpret_cast<const char*>(&bytes[pos + 4]), 4);
    const uint8_t* data = &bytes[pos + 8];
    uint32_t stored = get_u32(&bytes[pos + 8 + len]);
    uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), &bytes[pos + 4], uInt(4 + len)));
    if (crc != stored) fail<ValueError>(op, "CRC mismatch in chunk '", type, "' at byte ", pos);
    if (!have_ihdr && type != "IHDR") fail<ValueError>(op, "first chunk is '", type, "', not IHDR");
    if (type == "IHDR") {
      if (have_ihdr || len != 13) fail<ValueError>(op, "bad IHDR");
      w = get_u32(data);
      h = get_u32(data + 4);
      if (w <= 0 || h <= 0 || w > 0x7fffffff || h > 0x7fffffff) fail<ValueError>(op, "bad image size ", w, "x", h);
      check_image_size("the PNG", w, h);  // before inflating: a small file may claim a huge image
      if (data[8] != 8 || data[9] != 2)
        fail<ValueError>(op, "only 8-bit RGB is supported (bit depth ", int(data[8]), ", colour type ", int(data[9]),
                         ")");
      if (data[10] != 0 || data[11] != 0 || data[12] != 0)
        fail<ValueError>(op, "unsupported compression/filter/interlace method");
      have_ihdr = true;
    } else if (type == "IDAT") {
      idat.insert(idat.end(), data, data + len);
    } else if (type == "IEND") {
      have_iend = true;
      pos += 12 + len;
      break;
    } else if (!(type[0] & 0x20)) {
      fail<ValueError>(op, "unknown critical chunk '", type, "'");
    }
    pos += 12 + len;
  }
  if (!have_iend) fail<ValueError>(op, "no IEND chunk");
  if (pos != bytes.size()) fail<ValueError>(op, bytes.size() - pos, " bytes after IEND");
  const size_t row = size_t(w) * 3, expect = size_t(h) * (row + 1);
  std::vector<uint8_t> raw(expect + 1);  // one spare byte: a longer stream shows up as Z_OK with no room left
  uLongf rawlen = uLongf(raw.size());
  int rc = uncompress(raw.data(), &rawlen, idat.data(), uLong(idat.size()));
  if (rc != Z_OK || rawlen != expect)
    fail<ValueError>(op, "IDAT does not inflate to ", expect, " bytes (zlib code ", rc, ", got ", rawlen, ")");
  Image img(w, h);
  std::vector<uint8_t> prev(row, 0);
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* src = &raw[size_t(y) * (row + 1)];
    uint8_t* dst = &img.rgb[size_t(y) * row];
    const uint8_t f = src[0];
    if (f > 4) fail<ValueError>(op, "bad filter type ", int(f), " on row ", y);
    for (size_t i = 0; i < row; ++i) {
      int a = i >= 3 ? dst[i - 3] : 0, b = prev[i], c = i >= 3 ? prev[i - 3] : 0;
      int pred = f == 0 ? 0 : f == 1 ? a : f == 2 ? b : f == 3 ? (a + b) / 2 : paeth(a, b, c);
      dst[i] = uint8_t(src[1 + i] + pred);
    }
    std::memcpy(prev.data(), dst, row);
  }
  return img;
}

Image read_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<IOError>("read_png", "cannot open '", path, "'");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  try {
    return decode_png(bytes);
  } catch (const ValueError& e) {
    throw ValueError(cat(path, ": ", e.what()));
  }
}

}  // namespace attnlab

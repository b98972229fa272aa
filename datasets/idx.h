// IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.
//
// Layout, all integers big-endian: magic bytes 00 00 <type> <ndim>, then ndim uint32 sizes, then
// prod(sizes) elements in row-major order. Only type 0x08 (unsigned byte) is supported: it is the
// only one the image data sets use.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace attnlab {

struct IdxArray {
  Shape shape;                // the declared sizes, e.g. [60000, 28, 28]
  std::vector<uint8_t> data;  // shape_numel(shape) bytes, row-major
};

// Reads a whole IDX file; gzip is detected from the content, not the name. Throws IOError naming
// the path and the problem on a missing file, bad header, truncated or over-long payload, or a
// corrupt gzip stream.
IdxArray read_idx(const std::string& path);

}  // namespace attnlab

#include "datasets/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <memory>

namespace attnlab {

namespace {

constexpr uint8_t kTypeUnsignedByte = 0x08;
// A corrupt header can declare any size; refuse absurd ones instead of trying to allocate them.
constexpr int64_t kMaxElements = int64_t(1) << 40;
// Read in bounded chunks: gzread takes an unsigned length, and the buffer only grows as data
// actually arrives, so a lying header cannot make us allocate far beyond the real file.
constexpr size_t kChunk = size_t(1) << 22;

// Owns a gzFile (zlib's gzread reads plain files unchanged, so one reader serves both kinds).
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    std::error_code ec;  // the non-throwing overload: only attnlab errors leave this function
    auto st = std::filesystem::status(path, ec);
    if (!std::filesystem::exists(st)) fail<IOError>("read_idx", "'", path, "': no such file");
    if (std::filesystem::is_directory(st)) fail<IOError>("read_idx", "'", path, "': is a directory, not a file");
    errno = 0;
    file_ = gzopen(path.c_str(), "rb");
    if (!file_)
      fail<IOError>("read_idx", "'", path, "': cannot open (", errno ? std::strerror(errno) : "out of memory", ")");
    gzbuffer(file_, 1 << 17);  // bigger than the 8 KiB default: fewer syscalls on 47 MB images
  }
  ~GzReader() { gzclose(file_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; throws on a stream error (a corrupt or truncated gzip file).
  size_t read(void* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      unsigned want = unsigned(std::min(n - got, kChunk));
      int r = gzread(file_, static_cast<char*>(dst) + got, want);
      if (r < 0) fail_stream("read error");
      if (r == 0) break;
      got += size_t(r);
    }
    check_stream();
    return got;
  }

  // Z_BUF_ERROR after a short read means the gzip stream itself was cut off mid-way.
  void check_stream() {
    int code = Z_OK;
    gzerror(file_, &code);
    if (code == Z_BUF_ERROR) fail<IOError>("read_idx", "'", path_, "': gzip stream is truncated");
    if (code != Z_OK) fail_stream("corrupt gzip stream");
  }

 private:
  [[noreturn]] void fail_stream(const char* what) {
    int code = Z_OK;
    const char* msg = gzerror(file_, &code);
    fail<IOError>("read_idx", "'", path_, "': ", what, " (zlib: ", msg ? msg : "?", ")");
  }

  std::string path_;
  gzFile file_ = nullptr;
};

uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  GzReader in(path);

  uint8_t magic[4];
  size_t got = in.read(magic, 4);
  if (got < 4) fail<IOError>("read_idx", "'", path, "': file ends inside the 4-byte magic (", got, " bytes)");
  if (magic[0] != 0 || magic[1] != 0)
    fail<IOError>("read_idx", "'", path, "': bad magic: expected 00 00 <type> <ndim>, got first bytes ", int(magic[0]),
                  " ", int(magic[1]), " (not an IDX file)");
  if (magic[2] != kTypeUnsignedByte)
    fail<IOError>("read_idx", "'", path, "': unsupported element type 0x", std::hex, int(magic[2]), std::dec,
                  " (only 0x08, unsigned byte, is supported)");
  const int ndim = magic[3];
  if (ndim == 0) fail<IOError>("read_idx", "'", path, "': header declares 0 dimensions");

  std::vector<uint8_t> dims_raw(size_t(ndim) * 4);
  got = in.read(dims_raw.data(), dims_raw.size());
  if (got < dims_raw.size())
    fail<IOError>("read_idx", "'", path, "': file ends inside the header (", ndim, " sizes need ", dims_raw.size(),
                  " bytes, found ", got, ")");

  IdxArray out;
  int64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    int64_t size = big_endian_u32(&dims_raw[size_t(d) * 4]);
    out.shape.push_back(size);
    if (size != 0 && total > kMaxElements / size)
      fail<IOError>("read_idx", "'", path, "': header declares an implausibly large array ", shape_str(out.shape),
                    "...");
    total *= size;
  }

  // Grow as data arrives (see kChunk), then insist on exactly the declared count: no less, no more.
  size_t have = 0;
  while (have < size_t(total)) {
    size_t want = std::min(size_t(total) - have, kChunk);
    out.data.resize(have + want);
    size_t n = in.read(out.data.data() + have, want);
    have += n;
    if (n < want) break;
  }
  if (have < size_t(total))
    fail<IOError>("read_idx", "'", path, "': truncated payload: header declares ", shape_str(out.shape), " = ", total,
                  " bytes, file has only ", have);
  uint8_t extra;
  if (in.read(&extra, 1) != 0)
    fail<IOError>("read_idx", "'", path, "': payload is longer than the ", total, " bytes declared by shape ",
                  shape_str(out.shape));
  return out;
}

}  // namespace attnlab

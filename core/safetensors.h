// The safetensors file format, exactly as HuggingFace defines it, so PyTorch users can load our
// weights with safetensors.torch.load_file and we can load theirs:
//
//   [8 bytes]  N, the header length, little-endian u64
//   [N bytes]  JSON object, padded with spaces so 8 + N is a multiple of 8:
//                {"__metadata__": {"k": "v", ...},              (optional, string -> string)
//                 "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   [rest]     the byte buffer: each tensor row-major, little-endian, at [begin, end) relative to
//              the buffer's start; the tensors tile the buffer exactly (no gaps, no overlaps).
//
// dtypes: F32, F64, I64 and BOOL (one byte, 0 or 1) map to f32, f64, i64 and b8. Other
// safetensors dtypes (BF16, F16, I32, U8, ...) are refused by name. We write tensors largest
// element first (then by name), as HuggingFace does, so every tensor is aligned to its element size.
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>

#include "core/tensor.h"

namespace attnlab {

// Size and zlib CRC-32 of a whole file, so a checkpoint can record which bytes it expects.
struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
  void add(const void* data, size_t n);  // extends the digest by the next n bytes
  bool operator==(const FileDigest&) const = default;
};

// Writes CPU tensors (any strides; written contiguously) atomically: to "<path>.tmp.<pid>", flushed
// and fsync'ed, renamed over `path`, then the directory is fsync'ed. Returns the written file's
// digest (callers may ignore it). Bad arguments (undefined or non-CPU tensor, the reserved name
// "__metadata__", non-UTF-8 names) throw ValueError before any file is touched; any file-system
// failure removes the temp file and throws IOError. `path` is never left half-written.
FileDigest save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                            const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
  FileDigest digest;  // of the file as read (computed while reading; no second pass)
};

// Reads a file after validating everything in its header against the file's size: header length,
// JSON syntax, each entry's dtype, shape and offsets, exact tiling of the buffer, metadata types,
// BOOL bytes. Any problem throws IOError("load_safetensors: <path>: <what>"); nothing is allocated
// beyond the file's own size.
SafetensorsFile load_safetensors(const std::string& path);

// A file written all-or-nothing: bytes go to "<path>.tmp.<pid>"; commit() flushes, fsyncs, renames
// over `path` and fsyncs the directory. Destroyed without commit() (an exception, an early return),
// it removes the temp file and leaves `path` as it was. Errors throw IOError naming `op` and the path.
class AtomicFileWriter {
 public:
  AtomicFileWriter(const std::string& path, const char* op);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  FileDigest commit();  // digest of everything written
  const std::string& temp_path() const { return tmp_; }

 private:
  [[noreturn]] void fail_io(const std::string& what);
  std::string path_, tmp_;
  const char* op_;
  std::FILE* f_ = nullptr;
  FileDigest digest_;
};

// Writes `bytes` to `path` all-or-nothing (an AtomicFileWriter in one call); returns their digest.
FileDigest write_file_atomic(const std::string& path, std::string_view bytes, const char* op);

}  // namespace attnlab

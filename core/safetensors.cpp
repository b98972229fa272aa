// safetensors reader and writer (format: see safetensors.h), and the atomic file writer they share
// with checkpoints.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

namespace attnlab {

// Tensor bytes go to disk as they sit in memory; the format is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // HuggingFace's limit too
// Bounds every shape's element count, so numel * 8 and the strides can never overflow int64.
constexpr uint64_t kMaxElements = uint64_t(std::numeric_limits<int64_t>::max()) / 16;

const char* dtype_code(DType t) {
  switch (t) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::i64:
      return "I64";
    case DType::b8:
      return "BOOL";
  }
  return "?";
}

std::optional<DType> dtype_from_code(const std::string& s) {
  if (s == "F32") return DType::f32;
  if (s == "F64") return DType::f64;
  if (s == "I64") return DType::i64;
  if (s == "BOOL") return DType::b8;
  return std::nullopt;
}

// The rest of the safetensors dtype list: recognised, so the error can say "unsupported" rather
// than "unknown".
bool is_other_safetensors_dtype(const std::string& s) {
  static const char* const others[] = {"F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
                                       "I8",  "I16",  "I32",     "U8",      "U16",     "U32",     "U64",     "C64"};
  return std::find(std::begin(others), std::end(others), s) != std::end(others);
}

uint32_t crc_update(uint32_t crc, const void* data, size_t n) {
  auto p = static_cast<const Bytef*>(data);
  while (n > 0) {  // zlib takes uInt lengths
    uInt chunk = uInt(std::min<size_t>(n, 1u << 30));
    crc = uint32_t(::crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

std::string errno_text() { return std::strerror(errno); }

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

void FileDigest::add(const void* data, size_t n) {
  crc32 = crc_update(crc32, data, n);
  bytes += n;
}

// ---- AtomicFileWriter --------------------------------------------------------------------------

AtomicFileWriter::AtomicFileWriter(const std::string& path, const char* op)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())), op_(op) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  if (!f_) fail_io(cat("cannot create the temp file ", tmp_, ": ", errno_text()));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(tmp_.c_str());
  }
}

void AtomicFileWriter::fail_io(const std::string& what) {
  if (f_) {
    std::fclose(f_);
    f_ = nullptr;
  }
  std::remove(tmp_.c_str());
  fail<IOError>(op_, path_, ": ", what);
}

void AtomicFileWriter::write(const void* data, size_t n) {
  if (!f_) fail<IOError>(op_, path_, ": write after commit");
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) fail_io(cat("write to ", tmp_, " failed: ", errno_text()));
  digest_.add(data, n);
}

FileDigest AtomicFileWriter::commit() {
  if (!f_) fail<IOError>(op_, path_, ": commit twice");
  // The data must be on disk before the rename makes it visible under `path`.
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) fail_io(cat("flushing ", tmp_, " failed: ", errno_text()));
  std::FILE* f = f_;
  f_ = nullptr;
  if (std::fclose(f) != 0) {
    std::remove(tmp_.c_str());
    fail<IOError>(op_, path_, ": closing ", tmp_, " failed: ", errno_text());
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    std::string why = errno_text();
    std::remove(tmp_.c_str());
    fail<IOError>(op_, path_, ": renaming ", tmp_, " over it failed: ", why);
  }
  // The rename itself is durable only once the directory entry is (EINVAL: the file system
  // cannot sync directories, nothing more we can do).
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail<IOError>(op_, path_, ": cannot open its directory to sync it: ", errno_text());
  int rc = ::fsync(fd);
  int sync_errno = errno;
  ::close(fd);
  if (rc != 0 && sync_errno != EINVAL)
    fail<IOError>(op_, path_, ": syncing its directory failed: ", std::strerror(sync_errno));
  return digest_;
}

FileDigest write_file_atomic(const std::string& path, std::string_view bytes, const char* op) {
  AtomicFileWriter out(path, op);
  out.write(bytes.data(), bytes.size());
  return out.commit();
}

// ---- writer ------------------------------------------------------------------------------------

FileDigest save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  const char* op = "save_safetensors";
  std::vector<std::pair<std::string, Tensor>> order;
  for (auto& [name, t] : tensors) {
    if (!t.defined()) fail<ValueError>(op, path, ": tensor '", name, "' is undefined");
    if (t.device() != Device::cpu)
      fail<ValueError>(op, path, ": tensor '", name, "' is on ", t.device(), ", not the CPU");
    if (name == "__metadata__") fail<ValueError>(op, path, ": '__metadata__' is reserved and cannot name a tensor");
    order.emplace_back(name, t);
  }
  // Largest elements first, then by name (HuggingFace's order): every tensor starts at a multiple of
  // its element size, since the buffer starts at a multiple of 8.
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.second.element_size() > b.second.element_size(); });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (auto& [name, t] : order) {
    uint64_t bytes = uint64_t(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_code(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();  // strict: throws on strings that are not UTF-8
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>(op, path, ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // 8 + N stays a multiple of 8

  AtomicFileWriter out(path, op);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (auto& [name, t] : order) {
    if (t.numel() == 0) continue;
    Tensor c = t.contiguous();
    size_t bytes = size_t(c.numel()) * c.element_size();
    if (c.dtype() != DType::b8) {
      out.write(c.raw_data(), bytes);
      continue;
    }
    // BOOL must be exactly 0 or 1 on disk; b8 storage is not guaranteed to be.
    const uint8_t* src = static_cast<const uint8_t*>(c.raw_data());
    std::vector<uint8_t> chunk;
    for (size_t i = 0; i < bytes; i += 65536) {
      chunk.assign(src + i, src + std::min(bytes, i + 65536));
      for (uint8_t& v : chunk) v = v != 0;
      out.write(chunk.data(), chunk.size());
    }
  }
  return out.commit();
}

// ---- reader ------------------------------------------------------------------------------------

namespace {

template <class... A>
[[noreturn]] void corrupt(const std::string& path, const A&... what) {
  fail<IOError>("load_safetensors", path, ": ", what...);
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Validates one header entry; `buffer` is the data section's size in bytes.
Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& v, uint64_t buffer) {
  if (!v.is_object()) corrupt(path, "entry '", name, "' is not a JSON object");
  for (auto& [key, unused] : v.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      corrupt(path, "entry '", name, "' has an unexpected field '", key, "'");
  if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
    corrupt(path, "entry '", name, "' needs the fields dtype, shape and data_offsets");

  Entry e;
  e.name = name;
  const auto& dt = v["dtype"];
  if (!dt.is_string()) corrupt(path, "entry '", name, "': dtype is not a string");
  auto parsed = dtype_from_code(dt.get<std::string>());
  if (!parsed) {
    const std::string s = dt.get<std::string>();
    if (is_other_safetensors_dtype(s))
      corrupt(path, "tensor '", name, "' has dtype ", s, ", which attnlab does not support (F32, F64, I64, BOOL)");
    corrupt(path, "tensor '", name, "' has an unknown dtype '", s, "'");
  }
  e.dtype = *parsed;

  const auto& shape = v["shape"];
  if (!shape.is_array()) corrupt(path, "entry '", name, "': shape is not an array");
  uint64_t numel = 1, nonzero = 1;  // nonzero: the product without zero dims, bounding every stride
  for (const auto& d : shape) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > kMaxElements)
      corrupt(path, "tensor '", name, "': shape ", shape.dump(), " is not a list of non-negative integers");
    uint64_t n = d.get<uint64_t>();
    if (n > 0 && nonzero > kMaxElements / n)
      corrupt(path, "tensor '", name, "': shape ", shape.dump(), " is too large");
    if (n > 0) nonzero *= n;
    numel *= n;
    e.shape.push_back(int64_t(n));
  }

  const auto& offs = v["data_offsets"];
  if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() || !offs[1].is_number_unsigned())
    corrupt(path, "tensor '", name, "': data_offsets ", offs.dump(), " is not a pair of non-negative integers");
  e.begin = offs[0].get<uint64_t>();
  e.end = offs[1].get<uint64_t>();
  if (e.begin > e.end)
    corrupt(path, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] end before they begin");
  if (e.end > buffer)
    corrupt(path, "tensor '", name, "': data_offsets [", e.begin, ", ", e.end, "] do not lie within the ", buffer,
            "-byte data buffer");
  uint64_t bytes = numel * dtype_size(e.dtype);
  if (e.end - e.begin != bytes)
    corrupt(path, "tensor '", name, "': data_offsets span ", e.end - e.begin, " bytes but ", dt.get<std::string>(),
            shape_str(e.shape), " needs ", bytes);
  return e;
}

}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) corrupt(path, "cannot open: ", errno_text());
  std::FILE* f = file.get();
  struct stat st {};
  if (::fstat(::fileno(f), &st) != 0) corrupt(path, "cannot stat: ", errno_text());
  if (!S_ISREG(st.st_mode)) corrupt(path, "not a regular file");
  const uint64_t size = uint64_t(st.st_size);

  SafetensorsFile out;
  auto read_exact = [&](void* dst, size_t n, const std::string& what) {
    if (n > 0 && std::fread(dst, 1, n, f) != n)
      corrupt(path, "could not read ", what, std::ferror(f) ? ": " + errno_text() : std::string(" (file ended early)"));
    out.digest.crc32 = crc_update(out.digest.crc32, dst, n);
  };

  if (size < 8) corrupt(path, "file is ", size, " bytes, too short for the 8-byte header length");
  uint8_t len[8];
  read_exact(len, 8, "the header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
  if (n > kMaxHeaderBytes) corrupt(path, "header length ", n, " exceeds the 100 MB limit");
  if (n > size - 8)
    corrupt(path, "header length ", n, " exceeds the ", size - 8, " bytes after the length field (truncated?)");
  const uint64_t buffer = size - 8 - n;

  std::string text(n, '\0');
  read_exact(text.data(), n, "the header");
  if (text.empty() || text[0] != '{') corrupt(path, "header does not start with '{'");
  nlohmann::json header = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) corrupt(path, "header is not valid JSON (or not UTF-8)");
  if (!header.is_object()) corrupt(path, "header is not a JSON object");

  std::vector<Entry> entries;
  for (auto& [name, v] : header.items()) {
    if (name != "__metadata__") {
      entries.push_back(parse_entry(path, name, v, buffer));
      continue;
    }
    if (!v.is_object()) corrupt(path, "__metadata__ is not a JSON object");
    for (auto& [key, value] : v.items()) {
      if (!value.is_string()) corrupt(path, "__metadata__ value for '", key, "' is not a string: ", value.dump());
      out.metadata[key] = value.get<std::string>();
    }
  }

  // The tensors must tile [0, buffer) exactly.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < cursor)
      corrupt(path, "tensor '", e.name, "' at [", e.begin, ", ", e.end, ") overlaps tensor '", prev->name, "' at [",
              prev->begin, ", ", prev->end, ")");
    if (e.begin > cursor) corrupt(path, "data bytes [", cursor, ", ", e.begin, ") belong to no tensor");
    cursor = e.end;
    prev = &e;
  }
  if (cursor != buffer)
    corrupt(path, "data bytes [", cursor, ", ", buffer, ") belong to no tensor (the file has trailing data)");

  // Validated: every allocation below is bounded by the file's size. Read in offset order, so the
  // file is read once, front to back.
  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype);
    read_exact(t.raw_data(), size_t(e.end - e.begin), cat("tensor '", e.name, "'"));
    if (e.dtype == DType::b8) {
      const uint8_t* p = static_cast<const uint8_t*>(t.raw_data());
      for (uint64_t i = 0; i < e.end - e.begin; ++i)
        if (p[i] > 1) corrupt(path, "BOOL tensor '", e.name, "' holds the byte ", int(p[i]), " (must be 0 or 1)");
    }
    out.tensors.emplace(e.name, std::move(t));
  }
  out.digest.bytes = size;
  return out;
}

}  // namespace attnlab

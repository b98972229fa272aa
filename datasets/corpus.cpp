#include "datasets/corpus.h"

#include <unistd.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

namespace attnlab {
namespace fs = std::filesystem;

namespace {

constexpr const char* kKjvArgs = " -l100000 Gen1:1-Rev22:21";  // -l: no line wrapping at $COLUMNS
constexpr const char* kKjvInstallHint = "install it with `apt-get install -y bible-kjv`";

// Start offset of a split boundary. The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from
// rounding down to 28; it is far below one byte for any corpus that fits in memory.
size_t boundary(double fraction, size_t n) { return size_t(std::floor(fraction * double(n) + 1e-6)); }

// Full path of an executable: `program` itself if it contains '/', else the first match on $PATH.
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return ::access(program.c_str(), X_OK) == 0 ? program : "";
  const char* env = std::getenv("PATH");
  std::string path = env && *env ? env : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) return candidate;
    start = end + 1;
  }
  return "";
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs the bible program and returns its stdout (stdin closed; stderr left to the terminal).
std::string run_bible(const std::string& program) {
  const std::string exe = find_program(program);
  if (exe.empty())
    fail<IOError>("kjv_text", "the KJV text is not cached and the program '", program,
                  "' (from the Debian package bible-kjv) was not found; ", kKjvInstallHint);
  const std::string cmd = shell_quote(exe) + kKjvArgs + " </dev/null";
  struct PipeCloser {
    void operator()(FILE* f) const { ::pclose(f); }
  };
  std::unique_ptr<FILE, PipeCloser> pipe(::popen(cmd.c_str(), "r"));
  if (!pipe) fail<IOError>("kjv_text", "cannot run `", cmd, "` (", std::strerror(errno), ")");
  std::string text;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, pipe.get())) > 0) text.append(buf, got);
  const int status = ::pclose(pipe.release());
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail<IOError>("kjv_text", "`", cmd, "` failed (",
                  status != -1 && WIFEXITED(status) ? cat("exit status ", WEXITSTATUS(status)) : std::string("killed"),
                  "); is bible-kjv installed correctly? ", kKjvInstallHint);
  return text;
}

// Writes via a temporary file and rename, so an interrupted run never leaves half a cache behind.
void write_cache(const std::string& path, const std::string& text) {
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec)
    fail<IOError>("kjv_text", "cannot create the cache directory '", parent.string(), "' (", ec.message(),
                  "); set XDG_CACHE_HOME or pass a writable cache path");
  const std::string tmp = cat(path, ".tmp", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(text.data(), std::streamsize(text.size()));
    out.close();
    if (!out) {
      fs::remove(tmp, ec);
      fail<IOError>("kjv_text", "cannot write the cache file '", tmp, "'; set XDG_CACHE_HOME or pass a writable cache path");
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    fail<IOError>("kjv_text", "cannot move '", tmp, "' to '", path, "' (", ec.message(), ")");
  }
}

std::vector<int64_t> tokens_from_tensor(const char* op, const Tensor& t) {
  if (!t.defined()) fail<ValueError>(op, "tokens tensor is undefined");
  if (t.dtype() != DType::i64) fail<DTypeError>(op, "tokens must be i64, got ", describe(t));
  if (t.dim() != 1) fail<ShapeError>(op, "tokens must be 1-D, got ", describe(t));
  return t.to_vector<int64_t>();
}

void check_batch_args(const char* op, int64_t seq_len, int64_t batch_size) {
  if (seq_len <= 0) fail<ValueError>(op, "seq_len must be > 0, got ", seq_len);
  if (batch_size <= 0) fail<ValueError>(op, "batch_size must be > 0, got ", batch_size);
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail<IOError>("read_text_file", "'", path, "': no such file");
  if (fs::is_directory(path, ec)) fail<IOError>("read_text_file", "'", path, "': is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<IOError>("read_text_file", "'", path, "': cannot open (", std::strerror(errno), ")");
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) text.append(buf, size_t(in.gcount()));
  if (in.bad()) fail<IOError>("read_text_file", "'", path, "': read error");
  return text;
}

TextCorpus split_text(const std::string& text, const std::string& name, const SplitFractions& f) {
  for (double x : {f.train, f.val, f.test})
    if (!(x >= 0.0 && x <= 1.0))
      fail<ValueError>("split_text", "fractions must lie in [0, 1], got train ", f.train, ", val ", f.val, ", test ", f.test);
  if (std::abs(f.train + f.val + f.test - 1.0) > 1e-9)
    fail<ValueError>("split_text", "fractions must sum to 1, got train ", f.train, " + val ", f.val, " + test ", f.test,
                     " = ", f.train + f.val + f.test);
  const size_t n = text.size();
  const size_t n_train = std::min(boundary(f.train, n), n);
  const size_t n_val = std::min(boundary(f.val, n), n - n_train);
  TextCorpus c;
  c.name = name;
  c.train = text.substr(0, n_train);
  c.val = text.substr(n_train, n_val);
  c.test = text.substr(n_train + n_val);
  return c;
}

TextCorpus load_text_corpus(const std::string& path, const SplitFractions& f) {
  return split_text(read_text_file(path), fs::path(path).stem().string(), f);
}

std::string default_kjv_cache_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  fs::path base;
  if (xdg && *xdg) base = xdg;  // the XDG spec says relative values are invalid, but using one is harmless
  else if (home && *home) base = fs::path(home) / ".cache";
  else base = fs::temp_directory_path() / "attnlab-cache";
  return (base / "attnlab" / "kjv.txt").string();
}

void validate_kjv(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& why) {
    fail<IOError>("validate_kjv", "'", where, "' does not look like the KJV Bible: ", why);
  };
  if (text.size() <= 4'000'000) bad(cat("only ", text.size(), " bytes (expected about ", kKjvExpectedBytes, ")"));
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) bad("it is all whitespace");
  if (text.compare(first, 10, "Genesis 1\n") != 0) bad("it does not start with the heading \"Genesis 1\"");
  const size_t gen11 = text.find("In the beginning God created the heaven and the earth.", first);
  if (gen11 == std::string::npos || gen11 - first > 100) bad("Genesis 1:1 is not at the start");
  const size_t last = text.find_last_not_of(" \t\r\n");
  const std::string rev = "21 The grace of our Lord Jesus Christ be with you all. Amen.";
  if (last + 1 < rev.size() || text.compare(last + 1 - rev.size(), rev.size(), rev) != 0)
    bad("it does not end with Revelation 22:21 (truncated?)");
}

std::string kjv_text(const std::string& cache_path, const std::string& program) {
  const std::string path = cache_path.empty() ? default_kjv_cache_path() : cache_path;
  std::error_code ec;
  if (fs::exists(path, ec)) {
    std::string text = read_text_file(path);
    try {
      validate_kjv(text, path);
    } catch (const IOError& e) {
      fail<IOError>("kjv_text", e.what(), "; delete the cache file to regenerate it");
    }
    return text;
  }
  std::string text = run_bible(program);
  validate_kjv(text, program + kKjvArgs);
  write_cache(path, text);
  return text;
}

TextCorpus load_kjv(const std::string& cache_path, const SplitFractions& f) {
  return split_text(kjv_text(cache_path), "kjv", f);
}

TextCorpus load_corpus(const std::string& name_or_path, const SplitFractions& f) {
  if (name_or_path == "kjv") return load_kjv("", f);
  std::error_code ec;
  if (!fs::exists(name_or_path, ec))
    fail<IOError>("load_corpus", "'", name_or_path, "' is neither a known corpus (kjv) nor an existing file");
  return load_text_corpus(name_or_path, f);
}

// ---- LMBatcher ---------------------------------------------------------------------------------

LMBatcher::LMBatcher(std::vector<int64_t> tokens, int64_t seq_len, int64_t batch_size, Generator gen)
    : tokens_(std::move(tokens)), seq_len_(seq_len), batch_(batch_size), gen_(gen) {
  check_batch_args("LMBatcher", seq_len, batch_size);
  if (int64_t(tokens_.size()) < seq_len + 1)
    fail<ValueError>("LMBatcher", "need at least seq_len + 1 = ", seq_len + 1, " tokens, got ", tokens_.size());
}

LMBatcher::LMBatcher(const Tensor& tokens, int64_t seq_len, int64_t batch_size, Generator gen)
    : LMBatcher(tokens_from_tensor("LMBatcher", tokens), seq_len, batch_size, gen) {}

LMBatch LMBatcher::next() {
  const int64_t B = batch_, T = seq_len_;
  LMBatch b{empty({B, T}, DType::i64), empty({B, T}, DType::i64)};
  int64_t* in = b.input.data<int64_t>();
  int64_t* tg = b.target.data<int64_t>();
  // One counter per row, so the batch is a pure function of the offset it started at.
  const uint64_t first = gen_.advance(uint64_t(B));
  const uint64_t windows = uint64_t(num_windows());
  for (int64_t r = 0; r < B; ++r) {
    auto bits = gen_.bits(first + uint64_t(r));
    const uint64_t v = (uint64_t(bits[0]) << 32) | bits[1];
    const int64_t s = int64_t(v % windows);  // modulo bias <= windows / 2^64: negligible
    std::copy_n(tokens_.begin() + s, T, in + r * T);
    std::copy_n(tokens_.begin() + s + 1, T, tg + r * T);
  }
  return b;
}

// ---- LMEvalBatches -----------------------------------------------------------------------------

LMEvalBatches::LMEvalBatches(std::vector<int64_t> tokens, int64_t seq_len, int64_t batch_size)
    : tokens_(std::move(tokens)), seq_len_(seq_len), batch_(batch_size) {
  check_batch_args("LMEvalBatches", seq_len, batch_size);
  if (tokens_.size() < 2) fail<ValueError>("LMEvalBatches", "need at least 2 tokens, got ", tokens_.size());
}

LMEvalBatches::LMEvalBatches(const Tensor& tokens, int64_t seq_len, int64_t batch_size)
    : LMEvalBatches(tokens_from_tensor("LMEvalBatches", tokens), seq_len, batch_size) {}

int64_t LMEvalBatches::num_batches() const {
  const int64_t full = num_targets() / seq_len_;
  return (full + batch_ - 1) / batch_ + (num_targets() % seq_len_ != 0 ? 1 : 0);
}

bool LMEvalBatches::next(LMBatch& out) {
  const int64_t left = num_targets() - pos_;
  if (left <= 0) return false;
  const int64_t T = std::min(seq_len_, left);
  const int64_t rows = left >= seq_len_ ? std::min(batch_, left / seq_len_) : 1;
  out.input = empty({rows, T}, DType::i64);
  out.target = empty({rows, T}, DType::i64);
  int64_t* in = out.input.data<int64_t>();
  int64_t* tg = out.target.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r, pos_ += T) {
    std::copy_n(tokens_.begin() + pos_, T, in + r * T);
    std::copy_n(tokens_.begin() + pos_ + 1, T, tg + r * T);
  }
  return true;
}

}  // namespace attnlab

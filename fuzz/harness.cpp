#include "fuzz/harness.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace attnlab::fuzz {

namespace fs = std::filesystem;

std::vector<Target>& targets() {
  static std::vector<Target> t;
  return t;
}

namespace {
[[noreturn]] void finding(const std::string& target, std::string_view kind, std::string_view what) {
  std::fprintf(stderr, "\nfuzz target '%s': %.*s: %.*s\n", target.c_str(), int(kind.size()), kind.data(),
               int(what.size()), what.data());
  std::abort();
}
const Target* g_current = nullptr;
}  // namespace

bool run_one(const Target& t, const uint8_t* data, size_t size, std::string* refusal) {
  g_current = &t;
  bool accepted = true;
  try {
    t.fn(data, size);
  } catch (const Error& e) {  // the clear refusal every bad input should get
    accepted = false;
    if (refusal) *refusal = e.what();
  } catch (const std::exception& e) {
    finding(t.name, "an exception that is not an attnlab::Error escaped", e.what());
  } catch (...) {
    finding(t.name, "a non-standard exception escaped", "");
  }
  g_current = nullptr;
  return accepted;
}

void check(bool ok, std::string_view what) {
  if (!ok) finding(g_current ? g_current->name : "?", "property broken", what);
}

const std::string& scratch_dir() {
  // Never destroyed: the exit handler that removes the directory runs after static destructors.
  static const std::string& dir = *[] {
    fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = base / ("attnlab_fuzz_" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_dir(), ec);
    });
    return new std::string(d.string());
  }();
  return dir;
}

std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();  // the harness's own failure, not a finding about the input
  }
  return path;
}

}  // namespace attnlab::fuzz

// attnlab-fuzz-replay: every fuzz target on its committed corpus, in any build (the unit test
// fuzz_corpus runs it), so an input that once crashed stays a regression test without clang.
//   attnlab-fuzz-replay                    each target on fuzz/corpus/<target>/
//   attnlab-fuzz-replay TARGET [FILE...]   one target, on its corpus or on the given files (say a
//                                          crash file libFuzzer wrote), with each refusal printed
// Seeds named valid-* must be accepted, so the corpus keeps reaching past the first refusal.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/harness.h"

namespace fs = std::filesystem;
using attnlab::fuzz::Target;

namespace {

std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Returns the number of failures (valid-* seeds refused, or no corpus at all).
int replay(const Target& t, std::vector<fs::path> files, bool verbose) {
  if (files.empty()) {
    const fs::path dir = fs::path(ATTNLAB_SOURCE_DIR) / "fuzz" / "corpus" / t.name;
    if (fs::is_directory(dir))
      for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file()) files.push_back(e.path());
    if (files.empty()) {
      std::printf("%-14s no corpus in %s\n", t.name.c_str(), dir.c_str());
      return 1;
    }
  }
  std::sort(files.begin(), files.end());
  int accepted = 0, failures = 0;
  for (const fs::path& f : files) {
    const std::vector<uint8_t> bytes = read_file(f);
    std::string refusal;
    const bool ok = attnlab::fuzz::run_one(t, bytes.data(), bytes.size(), &refusal);
    accepted += ok;
    if (verbose) std::printf("  %s: %s\n", f.filename().c_str(), ok ? "accepted" : refusal.c_str());
    if (!ok && f.filename().string().rfind("valid-", 0) == 0) {
      std::printf("%s: seed %s must be accepted, but: %s\n", t.name.c_str(), f.c_str(), refusal.c_str());
      ++failures;
    }
  }
  std::printf("%-14s %3zu inputs replayed, %3d accepted, the rest refused with an attnlab::Error\n", t.name.c_str(),
              files.size(), accepted);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  omp_set_num_threads(1);
  const auto& all = attnlab::fuzz::targets();
  if (argc > 1) {
    const std::string name = argv[1];
    auto it = std::find_if(all.begin(), all.end(), [&](const Target& t) { return t.name == name; });
    if (it == all.end()) {
      std::fprintf(stderr, "unknown fuzz target '%s'; targets:", name.c_str());
      for (const Target& t : all) std::fprintf(stderr, " %s", t.name.c_str());
      std::fprintf(stderr, "\n");
      return 2;
    }
    return replay(*it, std::vector<fs::path>(argv + 2, argv + argc), true) ? 1 : 0;
  }
  int failures = 0;
  for (const Target& t : all) failures += replay(t, {}, false);
  return failures ? 1 : 0;
}

// The libFuzzer entry points of fuzz-<target>: the target named ATTNLAB_FUZZ_TARGET_NAME (its source
// file may define others, fuzz/CMakeLists.txt).
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "fuzz/harness.h"

namespace {
const attnlab::fuzz::Target& the_target() {
  static const attnlab::fuzz::Target* t = [] {
    const auto& all = attnlab::fuzz::targets();
    auto it = std::find_if(all.begin(), all.end(), [](const auto& x) { return x.name == ATTNLAB_FUZZ_TARGET_NAME; });
    if (it == all.end()) {
      std::fprintf(stderr, "fuzz target %s is not linked in\n", ATTNLAB_FUZZ_TARGET_NAME);
      std::abort();
    }
    return &*it;
  }();
  return *t;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  omp_set_num_threads(1);  // parsers are serial; one thread keeps runs reproducible and cheap
  the_target();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attnlab::fuzz::run_one(the_target(), data, size);
  return 0;
}

// What the fuzz targets share. A target feeds one input to one parser through its public entry
// point. Refusing bad input with an attnlab::Error is the expected outcome; anything else (another
// exception type, such as a raw JSON-library error, a broken property, a crash, a sanitizer report,
// a hang) is a finding, and abort() hands it to libFuzzer (or fails the corpus replay test).
//
// Each target is built twice: with libFuzzer (ATTNLAB_FUZZ=ON, clang: one executable per target,
// fuzz/libfuzzer_main.cpp) and, in every build, into attnlab-fuzz-replay (fuzz/replay_main.cpp),
// which runs each target on its committed corpus fuzz/corpus/<target>/ as a unit test.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attnlab::fuzz {

using TargetFn = void (*)(const uint8_t* data, size_t size);

struct Target {
  std::string name;
  TargetFn fn;
};
std::vector<Target>& targets();  // every target linked into this executable, in link order
struct Register {
  Register(const char* name, TargetFn fn) { targets().push_back({name, fn}); }
};

// Runs the target on one input: true when it was accepted, false when refused with an attnlab::Error
// (its message in *refusal); anything else aborts with a message.
bool run_one(const Target& t, const uint8_t* data, size_t size, std::string* refusal = nullptr);

// A property a successful parse must have; aborts with `what` when it does not.
void check(bool ok, std::string_view what);

// The input written to a file in this process's scratch directory (on /dev/shm when there is one);
// returns its path. Entry points that take paths are fuzzed through the file, as users reach them.
std::string write_input(const std::string& name, const uint8_t* data, size_t size);
const std::string& scratch_dir();

}  // namespace attnlab::fuzz

// Defines and registers the target `name`: ATTNLAB_FUZZ_TARGET(tokenizer) { ... data, size ... }
#define ATTNLAB_FUZZ_TARGET(name)                                                                   \
  static void attnlab_fuzz_##name(const uint8_t* data, size_t size);                                \
  static const ::attnlab::fuzz::Register attnlab_fuzz_register_##name(#name, &attnlab_fuzz_##name); \
  static void attnlab_fuzz_##name([[maybe_unused]] const uint8_t* data, [[maybe_unused]] size_t size)

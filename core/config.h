// Strict reading of JSON config sections, shared by every config parser (model, attention methods,
// schedule, train, audit and layer configs): each key a section takes is declared by reading it
// with its type and range, so a typo, a fraction where an integer belongs, a negative seed or a
// value that does not fit fails at once with an error naming the field:
//   config: model.attention.blok: unknown key (known: type, scale, impl, block)
//   config: model.d_model: must be an integer in [1, 65536], got 16.5
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace attnlab {

// A range of real numbers with open or closed ends, for config fields and command-line flags.
struct NumberRange {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;

  static NumberRange at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
  static NumberRange above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false}; }
  static NumberRange closed(double lo, double hi) { return {lo, hi, false, false}; }
  static NumberRange half_open(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)

  bool contains(double x) const;  // false for NaN and infinities
  std::string str() const;        // "> 0", ">= 0", "in [0, 1)"
};

// Messages shared with the command-line flags, so both say the same thing.
std::string integer_range_text(int64_t lo, int64_t hi);  // "an integer in [lo, hi]" / "an integer >= lo"
std::string number_range_text(const NumberRange& r);     // "a finite number > 0"

class ConfigSection {
 public:
  // j must be a JSON object. path names the section in errors ("model.attention"; "" at the top).
  ConfigSection(const nlohmann::json& j, std::string path);

  // Each getter declares key, returns dflt when it is absent, and throws ValueError naming the field
  // when it has the wrong type or is out of range. Integers may be written 64 or 64.0, never 64.5.
  int64_t integer(const std::string& key, int64_t dflt, int64_t lo, int64_t hi);
  uint64_t seed(const std::string& key, uint64_t dflt);  // any integer in [0, 2^64)
  double number(const std::string& key, double dflt, const NumberRange& range);
  bool boolean(const std::string& key, bool dflt);
  std::string string(const std::string& key, const std::string& dflt);
  std::string choice(const std::string& key, const std::string& dflt, const std::vector<std::string>& choices);
  // A nested object (empty when absent), or the raw value for sections with their own parser.
  nlohmann::json object(const std::string& key);
  const nlohmann::json* value(const std::string& key);  // null when absent
  bool has(const std::string& key) const { return j_.contains(key); }

  // Throws on the first key no getter declared, listing the declared ones. Call after reading.
  void finish() const;

  std::string where(const std::string& key) const;  // "model.d_model"
  const std::string& path() const { return path_; }
  template <class... Args>
  [[noreturn]] void fail(const std::string& key, const Args&... args) const {
    fail_at(where(key), cat(args...));
  }
  template <class... Args>
  [[noreturn]] void fail_section(const Args&... args) const {
    fail_at(path_.empty() ? std::string("top level") : path_, cat(args...));
  }

 private:
  [[noreturn]] static void fail_at(const std::string& where, const std::string& what);
  const nlohmann::json* find(const std::string& key);

  nlohmann::json j_;
  std::string path_;
  std::vector<std::string> known_;
};

// Memory sizes for errors that refuse a huge request ("8.0 TiB"), and the memory this machine has
// (physical memory, or the cgroup limit when lower).
std::string format_bytes(double bytes);
uint64_t machine_memory_bytes();

}  // namespace attnlab

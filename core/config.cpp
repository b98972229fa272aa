#include "core/config.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace attnlab {

namespace {

std::string number_text(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.15g", x);
  return buf;
}

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// JSON has one number type: 64 and 64.0 both mean an integer, 64.5 does not.
bool as_int64(const nlohmann::json& v, int64_t& out) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) return false;
    out = int64_t(v.get<uint64_t>());
    return true;
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
    return true;
  }
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  if (!std::isfinite(d) || d != std::floor(d) || d < -0x1p63 || d >= 0x1p63) return false;
  out = int64_t(d);
  return true;
}

}  // namespace

bool NumberRange::contains(double x) const {
  if (!std::isfinite(x)) return false;
  return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
}

std::string NumberRange::str() const {
  if (std::isinf(hi)) return cat(lo_open ? "> " : ">= ", number_text(lo));
  if (std::isinf(lo)) return cat(hi_open ? "< " : "<= ", number_text(hi));
  return cat("in ", lo_open ? "(" : "[", number_text(lo), ", ", number_text(hi), hi_open ? ")" : "]");
}

std::string integer_range_text(int64_t lo, int64_t hi) {
  if (hi == std::numeric_limits<int64_t>::max()) return cat("an integer >= ", lo);
  return cat("an integer in [", lo, ", ", hi, "]");
}

std::string number_range_text(const NumberRange& r) { return "a finite number " + r.str(); }

ConfigSection::ConfigSection(const nlohmann::json& j, std::string path) : j_(j), path_(std::move(path)) {
  if (!j_.is_object()) fail_section("must be a JSON object, got ", j_.dump());
}

std::string ConfigSection::where(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

void ConfigSection::fail_at(const std::string& where, const std::string& what) {
  throw ValueError(cat("config: ", where, ": ", what));
}

const nlohmann::json* ConfigSection::find(const std::string& key) {
  if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.push_back(key);
  auto it = j_.find(key);
  return it == j_.end() ? nullptr : &*it;
}

int64_t ConfigSection::integer(const std::string& key, int64_t dflt, int64_t lo, int64_t hi) {
  const nlohmann::json* v = find(key);
  if (!v) return dflt;
  int64_t x = 0;
  if (!as_int64(*v, x) || x < lo || x > hi) fail(key, "must be ", integer_range_text(lo, hi), ", got ", v->dump());
  return x;
}

uint64_t ConfigSection::seed(const std::string& key, uint64_t dflt) {
  const nlohmann::json* v = find(key);
  if (!v) return dflt;
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  int64_t x = 0;
  if (!as_int64(*v, x) || x < 0)
    fail(key, "must be an integer in [0, ", std::numeric_limits<uint64_t>::max(), "], got ", v->dump());
  return uint64_t(x);
}

double ConfigSection::number(const std::string& key, double dflt, const NumberRange& range) {
  const nlohmann::json* v = find(key);
  if (!v) return dflt;
  if (!v->is_number() || !range.contains(v->get<double>()))
    fail(key, "must be ", number_range_text(range), ", got ", v->dump());
  return v->get<double>();
}

bool ConfigSection::boolean(const std::string& key, bool dflt) {
  const nlohmann::json* v = find(key);
  if (!v) return dflt;
  if (!v->is_boolean()) fail(key, "must be true or false, got ", v->dump());
  return v->get<bool>();
}

std::string ConfigSection::string(const std::string& key, const std::string& dflt) {
  const nlohmann::json* v = find(key);
  if (!v) return dflt;
  if (!v->is_string()) fail(key, "must be a string, got ", v->dump());
  return v->get<std::string>();
}

std::string ConfigSection::choice(const std::string& key, const std::string& dflt,
                                  const std::vector<std::string>& choices) {
  if (!has(key)) return string(key, dflt);  // the default needs no check (it may be "": not given)
  const std::string s = string(key, dflt);
  if (std::find(choices.begin(), choices.end(), s) == choices.end())
    fail(key, "must be one of ", join(choices), ", got '", s, "'");
  return s;
}

nlohmann::json ConfigSection::object(const std::string& key) {
  const nlohmann::json* v = find(key);
  if (!v) return nlohmann::json::object();
  if (!v->is_object()) fail(key, "must be a JSON object, got ", v->dump());
  return *v;
}

const nlohmann::json* ConfigSection::value(const std::string& key) { return find(key); }

void ConfigSection::finish() const {
  for (auto& [key, v] : j_.items())
    if (std::find(known_.begin(), known_.end(), key) == known_.end())
      fail(key, "unknown key (known: ", join(known_), ")");
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) {
    bytes /= 1024;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

uint64_t machine_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  uint64_t mem = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : std::numeric_limits<uint64_t>::max();
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");  // "max" when unlimited
  uint64_t limit = 0;
  if (cgroup >> limit && limit > 0) mem = std::min(mem, limit);
  return mem;
}

}  // namespace attnlab

// Small helpers shared by the CLIs: flag parsing with clear errors, and the exit-code convention
// (0 ok, 1 a failure while running, 2 bad usage).
#pragma once
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"

namespace attnlab::cli {

struct UsageError : Error {
  using Error::Error;
};

// Parses "--name value" and "--flag" arguments against the known names; positional arguments are
// kept in order. Unknown or incomplete flags throw UsageError.
class Args {
 public:
  Args(int argc, char** argv, const std::vector<std::string>& valued, const std::vector<std::string>& flags) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        positional.push_back(a);
        continue;
      }
      std::string name = a.substr(2), value;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        values_[name] = value;
      } else if (std::find(flags.begin(), flags.end(), name) != flags.end() || name == "help") {
        flags_[name] = true;
        continue;
      } else if (i + 1 < argc) {
        values_[name] = argv[++i];
      } else {
        throw UsageError(cat("option --", name, " needs a value"));
      }
      if (std::find(valued.begin(), valued.end(), name) == valued.end())
        throw UsageError(cat("unknown option --", name));
    }
  }
  bool flag(const std::string& n) const { return flags_.count(n) > 0; }
  bool has(const std::string& n) const { return values_.count(n) > 0; }
  std::string str(const std::string& n, const std::string& dflt = "") const {
    auto it = values_.find(n);
    return it == values_.end() ? dflt : it->second;
  }
  double num(const std::string& n, double dflt) const {
    auto it = values_.find(n);
    if (it == values_.end()) return dflt;
    char* end = nullptr;
    double v = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end) throw UsageError(cat("--", n, " expects a number, got '", it->second, "'"));
    return v;
  }
  std::vector<std::string> positional;

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> flags_;
};

// Runs body, turning exceptions into a message and the exit-code convention.
inline int run_cli(const char* name, const char* usage, const std::function<int()>& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::cerr << name << ": " << e.what() << "\n\n" << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << name << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace attnlab::cli

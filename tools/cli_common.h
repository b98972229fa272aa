// The one command-line setup every attnlab CLI uses: CLI11 (Debian's libcli11-dev) with the same
// help layout, flag checks, errors and exit codes everywhere (0 ok, 1 a failure while running,
// 2 bad usage). Numeric flags are checked strictly: integers are whole and in range, numbers finite
// and in range (no NaN), and unexpected positional arguments are rejected.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "autograd/anomaly.h"
#include "core/config.h"
#include "core/error.h"

namespace attnlab::cli {

struct UsageError : Error {
  using Error::Error;
};

// A flag's value as an integer in [lo, hi]: "2.7", "1e3", "0x10", " 5" and overflow are refused.
inline int64_t parse_integer(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) || *end || errno == ERANGE || v < lo || v > hi)
    throw UsageError(cat(flag, ": expected ", integer_range_text(lo, hi), ", got '", text, "'"));
  return v;
}

// A flag's value as a finite number in range: "nan", "inf" and trailing text are refused.
inline double parse_number(const std::string& flag, const std::string& text, const NumberRange& range) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0])) || *end || !range.contains(v))
    throw UsageError(cat(flag, ": expected ", number_range_text(range), ", got '", text, "'"));
  return v;
}

// Help = the usage lines, the description, then the options CLI11 lists from their declarations.
class HelpFormatter : public CLI::Formatter {
 public:
  explicit HelpFormatter(std::string usage) : usage_(std::move(usage)) {
    column_width(28);
    label("Positionals", "arguments");
  }
  std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode mode) const override {
    std::string help = usage_ + make_description(app) + make_positionals(app) + make_groups(app, mode) + "\n";
    for (size_t at; (at = help.find("\n\n\n")) != std::string::npos;)
      help.erase(at, 1);  // one blank line between groups
    return help + make_footer(app);
  }

 private:
  std::string usage_;
};

class Command {
 public:
  // name: "attnlab train"; usage: "usage: attnlab train --config FILE.json [options]\n" (one or
  // more lines); description: what the command does, printed under the usage by --help.
  Command(std::string name, std::string usage, const std::string& description)
      : app(description, name), name_(std::move(name)), usage_(std::move(usage)) {
    app.formatter(std::make_shared<HelpFormatter>(usage_));
    app.option_defaults()->group("options")->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.set_help_flag("-h,--help", "this help");
  }

  CLI::Option* text(const std::string& flag, std::string& out, const std::string& help) {
    return app.add_option(flag, out, help)->type_name("TEXT");
  }
  CLI::Option* integer(const std::string& flag, int64_t& out, int64_t lo, int64_t hi, const std::string& help) {
    return app
        .add_option_function<std::string>(
            flag, [&out, flag, lo, hi](const std::string& s) { out = parse_integer(flag, s, lo, hi); }, help)
        ->type_name("N");
  }
  CLI::Option* number(const std::string& flag, double& out, const NumberRange& range, const std::string& help) {
    return app
        .add_option_function<std::string>(
            flag, [&out, flag, range](const std::string& s) { out = parse_number(flag, s, range); }, help)
        ->type_name("X");
  }
  CLI::Option* choice(const std::string& flag, std::string& out, const std::vector<std::string>& choices,
                      const std::string& help) {
    std::string names;
    for (const auto& c : choices) names += (names.empty() ? "" : "|") + c;
    auto check = [flag, choices, names](const std::string& s) {
      if (std::find(choices.begin(), choices.end(), s) == choices.end())
        throw UsageError(cat(flag, ": expected ", names, ", got '", s, "'"));
    };
    return app.add_option(flag, out, help)->type_name(names)->each(check);
  }
  CLI::Option* flag(const std::string& flag, bool& out, const std::string& help) {
    return app.add_flag(flag, out, help);
  }
  // --detect-anomaly (train, layer, audit): anomaly mode on while the command runs.
  void detect_anomaly_flag() {
    flag("--detect-anomaly", detect_anomaly_,
         "check every op's outputs and gradients for NaN/Inf and stop at the first, naming the op");
  }

  bool given(const std::string& flag) const { return app.count(flag) > 0; }
  std::string help() const { return app.help(); }

  // Parses args (without the program name), then runs body; returns the exit code. Usage errors
  // (CLI11's, a flag's value, or a UsageError from body) print the message and the usage lines.
  int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
          const std::function<int()>& body) {
    try {
      try {
        std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last first
        app.parse(reversed);
      } catch (const CLI::CallForHelp&) {
        out << help();
        return 0;
      } catch (const CLI::ParseError& e) {
        throw UsageError(e.what());
      }
      AnomalyScope anomaly(detect_anomaly_);
      return body();
    } catch (const UsageError& e) {
      err << name_ << ": " << e.what() << "\n" << usage_ << "Run '" << name_ << " --help' for the options.\n";
      return 2;
    } catch (const std::exception& e) {
      err << name_ << ": error: " << e.what() << "\n";
      return 1;
    }
  }
  int run(int argc, char** argv, const std::function<int()>& body) {
    return run(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr, body);
  }

  CLI::App app;

 private:
  // Restores the previous mode, so an in-process run (the tests) leaves no global state behind.
  struct AnomalyScope {
    bool previous = anomaly_mode();
    explicit AnomalyScope(bool on) {
      if (on) set_anomaly_mode(true);
    }
    ~AnomalyScope() { set_anomaly_mode(previous); }
  };

  std::string name_, usage_;
  bool detect_anomaly_ = false;
};

}  // namespace attnlab::cli

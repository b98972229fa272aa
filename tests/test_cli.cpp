// The command line shared by every CLI (tools/cli_common.h): strict flag values, -h/--help, the same
// errors and exit codes (0 ok, 1 failure while running, 2 bad usage) and no stray arguments, first
// in-process, then through each built executable.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <sstream>

#include "support.h"
#include "tools/cli_common.h"

using namespace attnlab;
using attnlab::testing::contains;
using attnlab::testing::message_of;
using attnlab::testing::TempDir;

TEST_CASE("flag values: whole integers in range, finite numbers in range") {
  CHECK(cli::parse_integer("--n", "42", 0, 100) == 42);
  CHECK(cli::parse_integer("--n", "-3", -5, 5) == -3);
  for (const char* bad : {"2.7", "1e3", "0x10", " 5", "", "101", "-1", "99999999999999999999", "nan"})
    CHECK(contains(message_of<cli::UsageError>([&] { cli::parse_integer("--n", bad, 0, 100); }),
                   "--n: expected an integer in [0, 100], got '"));
  CHECK(cli::parse_number("--x", "0.5", NumberRange::at_least(0)) == 0.5);
  CHECK(cli::parse_number("--x", "1e-3", NumberRange::above(0)) == 1e-3);
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "1e999", "-1", "0.5x", ""})
    CHECK(contains(message_of<cli::UsageError>([&] { cli::parse_number("--x", bad, NumberRange::at_least(0)); }),
                   "--x: expected a finite number >= 0, got '"));
  CHECK(contains(message_of<cli::UsageError>([] { cli::parse_number("--t", "0", NumberRange::above(0)); }),
                 "expected a finite number > 0"));
}

namespace {

struct Outcome {
  int code;
  std::string out, err;
};

// A small command with one flag of each kind, run in-process.
Outcome run_toy(const std::vector<std::string>& args, const std::function<int()>& body) {
  cli::Command cmd("attnlab toy", "usage: attnlab toy --name X [--count N]\n", "  A command for the tests.");
  std::string name, mode = "a";
  int64_t count = 1;
  double rate = 0.5;
  bool loud = false;
  cmd.text("--name", name, "a name")->required();
  cmd.integer("--count", count, 1, 10, "how many");
  cmd.number("--rate", rate, NumberRange::half_open(0, 1), "a rate");
  cmd.choice("--mode", mode, {"a", "b"}, "a mode");
  cmd.flag("--loud", loud, "louder");
  cmd.detect_anomaly_flag();
  std::ostringstream out, err;
  const int code = cmd.run(args, out, err, body);
  return {code, out.str(), err.str()};
}
Outcome run_toy(const std::vector<std::string>& args) {
  return run_toy(args, [] { return 0; });
}

}  // namespace

TEST_CASE("Command: help, bad usage (2), failures while running (1)") {
  Outcome r = run_toy({"-h"});
  CHECK(r.code == 0);
  CHECK(r.out.find("usage: attnlab toy") == 0);
  CHECK(contains(r.out, "--count N"));
  CHECK(run_toy({"--help"}).code == 0);
  CHECK(run_toy({"--name", "x", "--count", "3", "--rate=0.25", "--mode", "b", "--loud"}).code == 0);

  for (std::vector<std::string> bad : {std::vector<std::string>{},  // --name is required
                                       {"--name", "x", "stray"},
                                       {"--name", "x", "--bogus"},
                                       {"--name", "x", "--count", "2.7"},
                                       {"--name", "x", "--count", "11"},
                                       {"--name", "x", "--rate", "nan"},
                                       {"--name", "x", "--mode", "c"},
                                       {"--name"}}) {
    r = run_toy(bad);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find("attnlab toy: ") == 0);
    CHECK(contains(r.err, "usage: attnlab toy --name X"));
  }
  CHECK(contains(run_toy({"--name", "x", "stray"}).err, "stray"));
  CHECK(
      contains(run_toy({"--name", "x", "--rate", "nan"}).err, "--rate: expected a finite number in [0, 1), got 'nan'"));

  r = run_toy({"--name", "x"}, []() -> int { throw cli::UsageError("give exactly one of --a and --b"); });
  CHECK(r.code == 2);
  CHECK(contains(r.err, "attnlab toy: give exactly one of --a and --b"));
  r = run_toy({"--name", "x"}, []() -> int { throw IOError("cannot open 'f'"); });
  CHECK(r.code == 1);
  CHECK(r.err == "attnlab toy: error: cannot open 'f'\n");
}

TEST_CASE("--detect-anomaly turns anomaly mode on while the command runs") {
  REQUIRE(!anomaly_mode());
  bool seen = false;
  CHECK(run_toy({"--name", "x", "--detect-anomaly"}, [&] { return int(!(seen = anomaly_mode())); }).code == 0);
  CHECK(seen);
  CHECK(!anomaly_mode());  // restored afterwards
  CHECK(run_toy({"--name", "x"}, [&] { return int(anomaly_mode()); }).code == 0);
}

// ---- the executables ---------------------------------------------------------------------------

namespace {

// Runs build/tools/attnlab-<name> with args (shell words), capturing stdout and stderr.
Outcome run_tool(const std::string& name, const std::string& args) {
  TempDir dir;
  const std::string cmd = std::string(ATTNLAB_TOOLS_DIR) + "/attnlab-" + name + " " + args + " >" + dir.file("out") +
                          " 2>" + dir.file("err");
  const int status = std::system(cmd.c_str());
  REQUIRE(WIFEXITED(status));
  auto read = [&](const char* f) {
    auto bytes = attnlab::testing::read_bytes(dir.file(f));
    return std::string(bytes.begin(), bytes.end());
  };
  return {WEXITSTATUS(status), read("out"), read("err")};
}

// Each CLI with arguments that satisfy its required flags (so a stray argument is the only fault).
const std::vector<std::pair<std::string, std::string>> kTools = {
    {"train", "--config /nonexistent.json"},
    {"eval", "--run /nonexistent"},
    {"sample", "--run /nonexistent"},
    {"draw", "--metrics /nonexistent.jsonl --out /nonexistent/x.png"},
    {"layer", "--layer mha --inputs /nonexistent.safetensors --out /nonexistent/o.safetensors"},
    {"audit", "--config /nonexistent.json"},
    {"bench", "--list"},
    {"mlp", "--data-dir /nonexistent"},
};

}  // namespace

TEST_CASE("every CLI: -h and --help, stray and unknown arguments rejected with exit code 2") {
  for (const auto& [name, ok_args] : kTools) {
    INFO(name);
    for (const char* help : {"-h", "--help"}) {
      Outcome r = run_tool(name, help);
      CHECK(r.code == 0);
      CHECK(r.out.find("usage: attnlab " + name) == 0);
      CHECK(contains(r.out, "-h,--help"));
    }
    Outcome r = run_tool(name, ok_args + " stray");
    CHECK(r.code == 2);
    CHECK(contains(r.err, "attnlab " + name + ": "));
    CHECK(contains(r.err, "stray"));
    CHECK(contains(r.err, "usage: attnlab " + name));
    r = run_tool(name, ok_args + " --bogus");
    CHECK(r.code == 2);
    CHECK(contains(r.err, "--bogus"));
  }
}

TEST_CASE("every CLI: numeric flags are checked (no NaN, no fractions where an integer belongs)") {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"train", "--config c.json --time-limit nan"},
      {"train", "--config c.json --steps 2.7"},
      {"eval", "--run d --tokens nan"},
      {"eval", "--run d --tokens -5"},
      {"sample", "--run d --temperature nan"},
      {"sample", "--run d --seed -1"},
      {"sample", "--run d --length 1e3"},
      {"draw", "--metrics m.jsonl --out o.png --width nan"},
      {"draw", "--from-layer l.safetensors --out d --gamma inf"},
      {"audit", "--config c.json --eps nan"},
      {"audit", "--config c.json --entries 2.5"},
      {"bench", "--reps 0"},
      {"mlp", "--lr nan"},
  };
  for (const auto& [name, args] : bad) {
    INFO(name, " ", args);
    Outcome r = run_tool(name, args);
    CHECK(r.code == 2);
    CHECK(contains(r.err, ": expected "));
  }
}

TEST_CASE("train, layer and audit take --detect-anomaly") {
  // The flag is known: the run gets past parsing and fails on the missing file (1, not 2).
  for (const auto& [name, args] : {std::pair<std::string, std::string>{"train", "--config /nonexistent.json"},
                                   {"layer", "--layer mha --inputs /nonexistent.safetensors --out /nonexistent/o"},
                                   {"audit", "--config /nonexistent.json"}}) {
    INFO(name);
    Outcome r = run_tool(name, args + " --detect-anomaly");
    CHECK(r.code == 1);
    CHECK(contains(r.err, "/nonexistent"));
  }
}

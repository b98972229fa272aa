// Runs one of the PyTorch baseline scripts in ../shared/baselines (Debian's python3-torch) and
// returns the JSON line it prints, so benchmarks can put attnlab and PyTorch side by side in one run.
// PyTorch is a yardstick only: when it is missing, callers report attnlab alone.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace attnlab {

// Finds the baselines folder: $ATTNLAB_BASELINES, else ../shared/baselines next to the checkout.
std::optional<std::string> baselines_dir();
bool pytorch_available();
// `/usr/bin/python3 <dir>/<script> <args>`; nullopt (with the reason in *why) when it cannot run.
std::optional<nlohmann::json> run_pytorch_baseline(const std::string& script, const std::string& args,
                                                   std::string* why = nullptr);
// The same for a script that prints one JSON object per line (sparsemax_bench.py): all of them, in order.
std::optional<std::vector<nlohmann::json>> run_pytorch_baseline_lines(const std::string& script,
                                                                      const std::string& args,
                                                                      std::string* why = nullptr);

}  // namespace attnlab

#include "tools/pytorch_baseline.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace attnlab {

namespace fs = std::filesystem;

std::optional<std::string> baselines_dir() {
  if (const char* env = std::getenv("ATTNLAB_BASELINES")) return std::string(env);
  // The binary lives in <checkout>/build/tools; the shared folder sits beside the checkout.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path p = exe.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path()) {
    fs::path candidate = p.parent_path() / "shared" / "baselines";
    if (fs::exists(candidate / "benchutil.py")) return candidate.string();
  }
  return std::nullopt;
}

bool pytorch_available() {
  return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
}

std::optional<nlohmann::json> run_pytorch_baseline(const std::string& script, const std::string& args,
                                                   std::string* why) {
  auto dir = baselines_dir();
  if (!dir) {
    if (why) *why = "baselines folder not found (set ATTNLAB_BASELINES)";
    return std::nullopt;
  }
  if (!pytorch_available()) {
    if (why) *why = "PyTorch not installed (apt-get install python3-torch)";
    return std::nullopt;
  }
  std::string cmd = "cd '" + *dir + "' && /usr/bin/python3 " + script + " " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    if (why) *why = "could not start python";
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int rc = pclose(p);
  // The JSON is the last non-empty line.
  size_t end = out.find_last_not_of("\n ");
  size_t start = end == std::string::npos ? std::string::npos : out.rfind('\n', end);
  std::string last = end == std::string::npos ? "" : out.substr(start == std::string::npos ? 0 : start + 1);
  auto j = nlohmann::json::parse(last, nullptr, false);
  if (rc != 0 || j.is_discarded()) {
    if (why) *why = "baseline failed (exit " + std::to_string(rc) + "): " + last;
    return std::nullopt;
  }
  return j;
}

}  // namespace attnlab

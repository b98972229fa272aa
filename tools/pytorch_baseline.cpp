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

namespace {

// The script's stdout and exit status, or nullopt (with the reason in *why) when it cannot start.
struct ScriptRun {
  std::string out;
  int rc = 0;
};
std::optional<ScriptRun> run_script(const std::string& script, const std::string& args, std::string* why) {
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
  ScriptRun r;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  r.rc = pclose(p);
  return r;
}

}  // namespace

std::optional<nlohmann::json> run_pytorch_baseline(const std::string& script, const std::string& args,
                                                   std::string* why) {
  auto run = run_script(script, args, why);
  if (!run) return std::nullopt;
  const std::string& out = run->out;
  // The JSON is the last non-empty line.
  size_t end = out.find_last_not_of("\n ");
  size_t start = end == std::string::npos ? std::string::npos : out.rfind('\n', end);
  std::string last = end == std::string::npos ? "" : out.substr(start == std::string::npos ? 0 : start + 1);
  auto j = nlohmann::json::parse(last, nullptr, false);
  if (run->rc != 0 || j.is_discarded()) {
    if (why) *why = "baseline failed (exit " + std::to_string(run->rc) + "): " + last;
    return std::nullopt;
  }
  return j;
}

std::optional<std::vector<nlohmann::json>> run_pytorch_baseline_lines(const std::string& script,
                                                                      const std::string& args, std::string* why) {
  auto run = run_script(script, args, why);
  if (!run) return std::nullopt;
  std::vector<nlohmann::json> rows;
  size_t pos = 0;
  while (pos < run->out.size()) {
    size_t nl = run->out.find('\n', pos);
    if (nl == std::string::npos) nl = run->out.size();
    auto j = nlohmann::json::parse(run->out.substr(pos, nl - pos), nullptr, false);
    if (!j.is_discarded() && j.is_object()) rows.push_back(std::move(j));
    pos = nl + 1;
  }
  if (run->rc != 0 || rows.empty()) {
    if (why)
      *why = "baseline failed (exit " + std::to_string(run->rc) + ", " + std::to_string(rows.size()) + " JSON rows)";
    return std::nullopt;
  }
  return rows;
}

}  // namespace attnlab

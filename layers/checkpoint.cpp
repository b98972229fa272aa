// Training checkpoints: a sidecar JSON committing to safetensors weight files (layout and crash-
// safety argument in checkpoint.h).
#include "layers/checkpoint.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "core/safetensors.h"

namespace attnlab {

namespace fs = std::filesystem;

namespace {

constexpr int kFormatVersion = 1;
constexpr const char* kFormat = "attnlab.checkpoint";
constexpr uint64_t kMaxSmallFileBytes = 100'000'000;  // the sidecar and attached files are read whole

// A weight file as the sidecar records it: a bare file name in the sidecar's directory.
struct FileRef {
  std::string name;
  FileDigest digest;
};

struct Sidecar {
  CheckpointState state;
  FileRef model;
  std::optional<FileRef> optim;
  std::map<std::string, FileRef> attached;  // by role
};

// "runs/a/ckpt" -> directory "runs/a" (or "."), base name "ckpt".
struct Prefix {
  fs::path dir;
  std::string base;
  std::string sidecar() const { return (dir / (base + ".json")).string(); }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

Prefix split_prefix(const char* op, const std::string& prefix) {
  fs::path p(prefix);
  Prefix out{p.parent_path(), p.filename().string()};
  if (out.base.empty() || out.base == "." || out.base == "..")
    fail<ValueError>(op, "prefix '", prefix, "' must end in a file name stem (e.g. runs/a/ckpt)");
  if (out.dir.empty()) out.dir = ".";
  return out;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json ref_json(const FileRef& r) {
  return {{"name", r.name}, {"bytes", r.digest.bytes}, {"crc32", r.digest.crc32}};
}

template <class... A>
[[noreturn]] void bad_sidecar(const std::string& path, const A&... what) {
  fail<IOError>("load_checkpoint", path, ": ", what...);
}

FileRef parse_ref(const std::string& path, const nlohmann::json& j, const char* which) {
  if (!j.is_object() || !j.contains("name") || !j.contains("bytes") || !j.contains("crc32"))
    bad_sidecar(path, "files.", which, " must be an object with name, bytes and crc32");
  const auto &name = j["name"], &bytes = j["bytes"], &crc = j["crc32"];
  // A bare name: the sidecar may only point at files beside it.
  if (!name.is_string() || name.get<std::string>().empty() || name.get<std::string>().find('/') != std::string::npos ||
      name == "." || name == "..")
    bad_sidecar(path, "files.", which, ".name must be a plain file name, got ", name.dump());
  if (!bytes.is_number_unsigned() || !crc.is_number_unsigned() || crc.get<uint64_t>() > 0xffffffffu)
    bad_sidecar(path, "files.", which, ": bytes and crc32 must be non-negative integers (crc32 below 2^32)");
  return {name.get<std::string>(), {bytes.get<uint64_t>(), uint32_t(crc.get<uint64_t>())}};
}

// A whole small file; IOError "<op>: <sidecar>: <what> cannot be read ..." when it cannot be read.
std::string read_small_file(const char* op, const std::string& sidecar, const std::string& path,
                            const std::string& what) {
  std::error_code ec;
  uint64_t size = fs::file_size(path, ec);
  if (ec) fail<IOError>(op, sidecar, ": ", what, " cannot be read: ", ec.message());
  if (size > kMaxSmallFileBytes) fail<IOError>(op, sidecar, ": ", what, " is ", size, " bytes, over the 100 MB limit");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) fail<IOError>(op, sidecar, ": ", what, " cannot be read");
  return text.str();
}

Sidecar read_sidecar(const Prefix& pre) {
  const std::string path = pre.sidecar();
  const std::string text = read_small_file("load_checkpoint", path, path, "the checkpoint sidecar");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) bad_sidecar(path, "sidecar is not a JSON object (truncated or corrupted?)");

  if (!j.contains("format") || j["format"] != kFormat)
    bad_sidecar(path, "not an attnlab checkpoint sidecar (format is not '", kFormat, "')");
  if (!j.contains("format_version") || !j["format_version"].is_number_integer())
    bad_sidecar(path, "format_version is missing");
  if (j["format_version"].get<int64_t>() != kFormatVersion)
    bad_sidecar(path, "format_version ", j["format_version"].get<int64_t>(), " is not the one this build reads (",
                kFormatVersion, ")");
  if (!j.contains("step") || !j["step"].is_number_unsigned() || j["step"].get<uint64_t>() > uint64_t(INT64_MAX))
    bad_sidecar(path, "step must be a non-negative integer");
  if (!j.contains("files") || !j["files"].is_object() || !j["files"].contains("model"))
    bad_sidecar(path, "files.model is missing");

  Sidecar s;
  for (auto& [role, ref] : j["files"].items()) {
    FileRef r = parse_ref(path, ref, role.c_str());
    if (role == "model") s.model = r;
    else if (role == "optimizer") s.optim = r;
    else {
      s.attached[role] = r;
      s.state.attached[role] = r.name;
    }
  }
  s.state.step = j["step"].get<int64_t>();
  s.state.config = j.value("config", nlohmann::json());
  s.state.optimizer = j.value("optimizer", nlohmann::json());
  s.state.rng = j.value("rng", nlohmann::json());
  s.state.extra = j.value("extra", nlohmann::json());
  if (j.contains("created") && j["created"].is_string()) s.state.created = j["created"].get<std::string>();
  return s;
}

// Loads a weight file and checks it is byte for byte the one the sidecar committed to.
SafetensorsFile load_verified(const Prefix& pre, const FileRef& ref) {
  const std::string path = pre.file(ref.name), sidecar = pre.sidecar();
  std::error_code ec;
  uint64_t size = fs::file_size(path, ec);
  if (ec) bad_sidecar(sidecar, "its weight file ", path, " cannot be read: ", ec.message());
  if (size != ref.digest.bytes)
    bad_sidecar(sidecar, "its weight file ", path, " has ", size, " bytes but the sidecar records ", ref.digest.bytes,
                " (truncated, or replaced after the checkpoint was written)");
  SafetensorsFile f = load_safetensors(path);
  if (f.digest != ref.digest)
    bad_sidecar(sidecar, "its weight file ", path, " has CRC-32 ", f.digest.crc32, " but the sidecar records ",
                ref.digest.crc32, " (corrupted, or replaced after the checkpoint was written)");
  return f;
}

// The bytes of an attached file, checked like a weight file.
std::string read_verified(const Prefix& pre, const FileRef& ref) {
  const std::string path = pre.file(ref.name), sidecar = pre.sidecar();
  std::string bytes = read_small_file("load_checkpoint", sidecar, path, "its file " + path);
  FileDigest d;
  d.add(bytes.data(), bytes.size());
  if (d != ref.digest)
    bad_sidecar(sidecar, "its file ", path, " has ", d.bytes, " bytes and CRC-32 ", d.crc32,
                " but the sidecar records ", ref.digest.bytes, " and ", ref.digest.crc32,
                " (changed after the checkpoint was written)");
  return bytes;
}

// Refuses weights that do not fit the model before load_state_dict starts copying, so a mismatch
// leaves the model as it was.
void check_fits(const std::string& sidecar, const Module& model, const StateDict& weights) {
  StateDict mine = model.state_dict();
  for (auto& [name, t] : mine) {
    auto it = weights.find(name);
    if (it == weights.end()) fail<ValueError>("load_checkpoint", sidecar, ": the checkpoint has no '", name, "'");
    if (it->second.shape() != t.shape())
      fail<ShapeError>("load_checkpoint", sidecar, ": '", name, "' is ", shape_str(it->second.shape()),
                       " in the checkpoint but ", shape_str(t.shape()), " in the model");
  }
  for (auto& [name, t] : weights)
    if (!mine.count(name))
      fail<ValueError>("load_checkpoint", sidecar, ": unexpected key '", name, "' (", describe(t), ")");
}

// "ckpt.step12.optim.safetensors.tmp.345" -> true for base "ckpt": a file of ours (committed,
// stale, or a temp file of an interrupted save).
bool is_checkpoint_file(const std::string& name, const std::string& base) {
  auto all_digits = [](const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
  };
  std::string rest = name;
  if (auto tmp = rest.rfind(".tmp."); tmp != std::string::npos && all_digits(rest.substr(tmp + 5))) {
    rest.erase(tmp);
    if (rest == base + ".json") return true;  // an interrupted sidecar write
  }
  const std::string head = base + ".step";
  if (rest.compare(0, head.size(), head) != 0) return false;
  size_t i = head.size();
  while (i < rest.size() && std::isdigit(static_cast<unsigned char>(rest[i]))) ++i;
  if (!all_digits(rest.substr(head.size(), i - head.size()))) return false;
  rest.erase(0, i);
  return rest == ".safetensors" || rest == ".optim.safetensors" || rest == ".alt.safetensors" ||
         rest == ".alt.optim.safetensors";
}

// Best effort: the new checkpoint is already committed, so a file we cannot delete is only litter.
void remove_stale_files(const Prefix& pre, const std::set<std::string>& keep) {
  std::error_code ec;
  for (fs::directory_iterator it(pre.dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!keep.count(name) && is_checkpoint_file(name, pre.base)) fs::remove(it->path(), ec);
    ec.clear();
  }
}

// Digests a file the caller wrote beside the sidecar, for the sidecar to commit to.
FileRef attached_ref(const Prefix& pre, const std::string& role, const std::string& name) {
  const char* op = "save_checkpoint";
  if (role == "model" || role == "optimizer") fail<ValueError>(op, "'", role, "' is reserved for the weight files");
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      is_checkpoint_file(name, pre.base) || name == pre.base + ".json")
    fail<ValueError>(op, "attached file '", name, "' (", role, ") must be a plain file name beside the sidecar");
  const std::string path = pre.file(name);
  FileRef ref{name, {}};
  std::string bytes = read_small_file(op, pre.sidecar(), path, "its " + role + " file " + path);
  ref.digest.add(bytes.data(), bytes.size());
  return ref;
}

}  // namespace

void save_checkpoint(const std::string& prefix, const Module& model, const Optimizer* opt, const CheckpointState& st) {
  const char* op = "save_checkpoint";
  if (st.step < 0) fail<ValueError>(op, prefix, ": step must be >= 0, got ", st.step);
  Prefix pre = split_prefix(op, prefix);

  // Never overwrite a file the current sidecar names (saving the same step twice): use the other
  // of the two names for this step. An unreadable sidecar protects nothing, so it is ignored.
  std::set<std::string> in_use;
  try {
    Sidecar cur = read_sidecar(pre);
    in_use.insert(cur.model.name);
    if (cur.optim) in_use.insert(cur.optim->name);
  } catch (const IOError&) {
  }
  std::string stem = pre.base + ".step" + std::to_string(st.step);
  if (in_use.count(stem + ".safetensors") || in_use.count(stem + ".optim.safetensors")) stem += ".alt";

  // The attached files first: a missing one fails before anything is written.
  std::map<std::string, FileRef> attached;
  for (auto& [role, name] : st.attached) attached[role] = attached_ref(pre, role, name);

  // (1) the weight files, each durable before (2).
  FileRef model_ref{stem + ".safetensors", {}};
  model_ref.digest = save_safetensors(pre.file(model_ref.name), model.state_dict(),
                                      {{"format", "pt"}, {"step", std::to_string(st.step)}});
  std::optional<FileRef> optim_ref;
  if (opt) {
    optim_ref = FileRef{stem + ".optim.safetensors", {}};
    optim_ref->digest = save_safetensors(pre.file(optim_ref->name), opt->state_tensors(), {{"format", "pt"}});
  }

  // (2) the sidecar: its rename is the commit.
  nlohmann::json files = {{"model", ref_json(model_ref)}};
  if (optim_ref) files["optimizer"] = ref_json(*optim_ref);
  for (auto& [role, ref] : attached) files[role] = ref_json(ref);
  nlohmann::json j = {{"format", kFormat},
                      {"format_version", kFormatVersion},
                      {"created", utc_now()},
                      {"step", st.step},
                      {"files", files},
                      {"config", st.config},
                      {"optimizer", opt ? opt->state_json() : nlohmann::json()},
                      {"rng", st.rng},
                      {"extra", st.extra}};
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail<ValueError>(op, prefix, ": the checkpoint state holds a string that is not valid UTF-8 (", e.what(), ")");
  }
  write_file_atomic(pre.sidecar(), text, op);

  // (3) everything else of ours: the previous checkpoint, leftovers of interrupted saves.
  std::set<std::string> keep = {model_ref.name};
  if (optim_ref) keep.insert(optim_ref->name);
  remove_stale_files(pre, keep);
}

CheckpointState read_checkpoint_info(const std::string& prefix) {
  return read_sidecar(split_prefix("load_checkpoint", prefix)).state;
}

CheckpointState load_checkpoint(const std::string& prefix, Module& model, Optimizer* opt) {
  Prefix pre = split_prefix("load_checkpoint", prefix);
  Sidecar s = read_sidecar(pre);
  SafetensorsFile weights = load_verified(pre, s.model);
  std::optional<SafetensorsFile> optim;
  if (opt) {
    if (!s.optim) bad_sidecar(pre.sidecar(), "the checkpoint was saved without optimizer state");
    optim = load_verified(pre, *s.optim);
  }
  for (auto& [role, ref] : s.attached) read_verified(pre, ref);
  check_fits(pre.sidecar(), model, weights.tensors);
  // The optimizer first: it is the one that can still refuse (wrong name, count, shapes).
  if (opt) opt->load_state(optim->tensors, s.state.optimizer);
  model.load_state_dict(weights.tensors, /*strict=*/true);
  return s.state;
}

std::string read_attached_file(const std::string& prefix, const std::string& role) {
  Prefix pre = split_prefix("load_checkpoint", prefix);
  Sidecar s = read_sidecar(pre);
  auto it = s.attached.find(role);
  if (it == s.attached.end())
    bad_sidecar(pre.sidecar(), "the checkpoint records no ", role, " file (saved by an older attnlab?)");
  return read_verified(pre, it->second);
}

nlohmann::json generator_to_json(const Generator& g) {
  return {{"seed", g.seed()}, {"stream", g.stream()}, {"offset", g.offset()}};
}

Generator generator_from_json(const nlohmann::json& j) {
  for (const char* key : {"seed", "stream", "offset"})
    if (!j.is_object() || !j.contains(key) || !j[key].is_number_unsigned())
      fail<ValueError>("generator_from_json",
                       "expected {\"seed\", \"stream\", \"offset\"} as non-negative integers, got ", j.dump());
  Generator g(j["seed"].get<uint64_t>(), j["stream"].get<uint64_t>());
  g.set_offset(j["offset"].get<uint64_t>());
  return g;
}

}  // namespace attnlab

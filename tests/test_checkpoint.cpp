// safetensors files (bit-exact round trips, the byte layout of the spec, rejection of corrupted
// files) and training checkpoints (round trip of a model and optimizer, interrupted saves).
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/safetensors.h"
#include "layers/checkpoint.h"
#include "layers/transformer.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

uint64_t header_length(const Bytes& b) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(b[size_t(i)]) << (8 * i);
  return n;
}

void set_header_length(Bytes& b, uint64_t n) {
  for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(n >> (8 * i));
}

std::string header_text(const Bytes& b) {
  return std::string(b.begin() + 8, b.begin() + 8 + std::ptrdiff_t(header_length(b)));
}
Bytes data_buffer(const Bytes& b) { return Bytes(b.begin() + 8 + std::ptrdiff_t(header_length(b)), b.end()); }

// A file with the given header text and data buffer (no padding: readers must not need it).
Bytes assemble(const std::string& header, const Bytes& buffer) {
  Bytes b(8 + header.size() + buffer.size());
  set_header_length(b, header.size());
  std::copy(header.begin(), header.end(), b.begin() + 8);
  std::copy(buffer.begin(), buffer.end(), b.begin() + 8 + std::ptrdiff_t(header.size()));
  return b;
}

// Same dtype and shape, identical bytes (NaN payloads and -0.0 included).
bool bits_equal(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  size_t n = size_t(a.numel()) * a.element_size();
  return n == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), n) == 0;
}

// f32 [2, 3], b8 [3], i64 [2] and f64 0-d, written to `path`; returns the tensors.
std::map<std::string, Tensor> write_sample(const std::string& path) {
  std::map<std::string, Tensor> t = {
      {"w", from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3})},
      {"mask", from_vector(std::vector<double>{1, 0, 1}, {3}, DType::b8)},
      {"ids", from_vector(std::vector<int64_t>{7, -8}, {2})},
      {"s", scalar_tensor(2.5, DType::f64)},
  };
  save_safetensors(path, t, {{"note", "sample"}});
  return t;
}

}  // namespace

TEST_CASE("safetensors: round trip is bit-exact for f32, f64, i64 and b8, 0-d, empty and strided tensors") {
  TempDir dir;
  const float fnan = std::numeric_limits<float>::quiet_NaN(), finf = std::numeric_limits<float>::infinity();
  const double dmin = std::numeric_limits<double>::denorm_min();
  const int64_t imin = std::numeric_limits<int64_t>::min(), imax = std::numeric_limits<int64_t>::max();
  Tensor base = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4});
  std::map<std::string, Tensor> in = {
      {"f32", from_vector(std::vector<float>{-0.0f, fnan, finf, -finf, 1e-45f, 3.4028235e38f}, {2, 3})},
      {"f64", from_vector(std::vector<double>{-0.0, dmin, 1.0 / 3.0, -1e308}, {4})},
      {"i64", from_vector(std::vector<int64_t>{imin, -1, 0, imax}, {2, 1, 2})},
      {"b8", from_vector(std::vector<double>{1, 0, 0, 1, 1}, {5}, DType::b8)},
      {"scalar_f32", scalar_tensor(-7.25, DType::f32)},
      {"scalar_i64", from_vector(std::vector<int64_t>{42}, {})},
      {"empty_f32", zeros({0}, DType::f32)},
      {"empty_i64_2d", zeros({3, 0}, DType::i64)},
      {"empty_b8", zeros({0, 4}, DType::b8)},
      {"transposed", base.t()},                                     // non-contiguous
      {"strided", base.slice(1, 0, 4, 2)},                          // every other column
      {"expanded", base.select(0, 1).unsqueeze(0).expand({2, 4})},  // stride 0
      {"offset_view", base.narrow(0, 1, 2)},                        // storage offset != 0
  };
  REQUIRE_FALSE(in["transposed"].is_contiguous());
  const std::string path = dir.file("all.safetensors");
  FileDigest written = save_safetensors(path, in);
  SafetensorsFile out = load_safetensors(path);
  CHECK(out.digest == written);
  CHECK(written.bytes == fs::file_size(path));
  CHECK(out.metadata.empty());
  REQUIRE(out.tensors.size() == in.size());
  for (auto& [name, t] : in) {
    CAPTURE(name);
    REQUIRE(out.tensors.count(name));
    CHECK(bits_equal(out.tensors[name], t));
    CHECK(out.tensors[name].is_contiguous());
  }
  CHECK(out.tensors["transposed"].to_vector<double>() == std::vector<double>{1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12});
  CHECK(out.tensors["expanded"].to_vector<double>() == std::vector<double>{5, 6, 7, 8, 5, 6, 7, 8});

  // No tensors at all is a valid file too.
  save_safetensors(dir.file("none.safetensors"), {});
  CHECK(load_safetensors(dir.file("none.safetensors")).tensors.empty());
}

TEST_CASE("safetensors: metadata round trip") {
  TempDir dir;
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "12"}, {"empty", ""}, {"unicode", "λ → ∞"}};
  save_safetensors(dir.file("m.safetensors"), {{"x", ones({2})}}, meta);
  SafetensorsFile f = load_safetensors(dir.file("m.safetensors"));
  CHECK(f.metadata == meta);
  // Without metadata the header has no __metadata__ entry.
  save_safetensors(dir.file("n.safetensors"), {{"x", ones({2})}});
  CHECK(header_text(read_bytes(dir.file("n.safetensors"))).find("__metadata__") == std::string::npos);
}

TEST_CASE("safetensors: byte layout of a tiny file follows the spec") {
  TempDir dir;
  const std::string path = dir.file("tiny.safetensors");
  save_safetensors(path,
                   {{"a", from_vector(std::vector<float>{1.0f, 2.0f}, {2})},
                    {"b", from_vector(std::vector<double>{1, 0, 1}, {3}, DType::b8)},
                    {"c", from_vector(std::vector<int64_t>{-2}, {1})}},
                   {{"k", "v"}});
  Bytes b = read_bytes(path);
  REQUIRE(b.size() >= 8);
  uint64_t n = header_length(b);
  CHECK((8 + n) % 8 == 0);  // the buffer starts 8-byte aligned
  REQUIRE(b.size() == 8 + n + 8 + 8 + 3);
  std::string header = header_text(b);
  CHECK(header.front() == '{');
  size_t last = header.find_last_not_of(' ');
  CHECK(header.find_first_not_of(' ', last + 1) == std::string::npos);  // padded with spaces only
  CHECK(header.size() - last - 1 < 8);
  // Largest element size first, so each tensor is aligned to its element size.
  nlohmann::json expected = {{"__metadata__", {{"k", "v"}}},
                             {"c", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {0, 8}}}},
                             {"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}}},
                             {"b", {{"dtype", "BOOL"}, {"shape", {3}}, {"data_offsets", {16, 19}}}}};
  CHECK(nlohmann::json::parse(header) == expected);
  Bytes buffer = data_buffer(b);
  Bytes want = {0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // int64 -2, little-endian
                0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,  // float 1.0, 2.0
                0x01, 0x00, 0x01};
  CHECK(buffer == want);
  // A header without padding (as other writers may produce) reads the same.
  write_bytes(dir.file("unpadded.safetensors"), assemble(nlohmann::json::parse(header).dump(), buffer));
  CHECK(bits_equal(load_safetensors(dir.file("unpadded.safetensors")).tensors["c"],
                   from_vector(std::vector<int64_t>{-2}, {1})));
}

TEST_CASE("safetensors: corrupted files are rejected with an IOError naming the file and the problem") {
  TempDir dir;
  const std::string good_path = dir.file("good.safetensors");
  write_sample(good_path);
  const Bytes good = read_bytes(good_path);
  const uint64_t n = header_length(good);
  const nlohmann::json header = nlohmann::json::parse(header_text(good));
  const Bytes buffer = data_buffer(good);
  REQUIRE(load_safetensors(good_path).tensors.size() == 4);
  // Layout of the sample (largest elements first): ids [0,16), s [16,24), w [24,48), mask [48,51).
  REQUIRE(header["ids"]["data_offsets"] == nlohmann::json({0, 16}));
  REQUIRE(header["mask"]["data_offsets"] == nlohmann::json({48, 51}));

  struct Case {
    std::string what;
    Bytes bytes;
    std::string message;  // a piece of the expected message
  };
  std::vector<Case> cases;
  auto with_header = [&](const std::function<void(nlohmann::json&)>& edit, const Bytes& buf) {
    nlohmann::json h = header;
    edit(h);
    return assemble(h.dump(), buf);
  };
  auto edit = [&](const std::function<void(nlohmann::json&)>& e) { return with_header(e, buffer); };

  for (size_t cut : {size_t(0), size_t(4), size_t(7), size_t(8), size_t(8 + n / 2), size_t(8 + n), good.size() - 1})
    cases.push_back({"truncated to " + std::to_string(cut) + " bytes",
                     Bytes(good.begin(), good.begin() + std::ptrdiff_t(cut)),
                     cut < 8       ? "too short"
                     : cut < 8 + n ? "exceeds"
                                   : "do not lie within"});
  Bytes huge = good;
  set_header_length(huge, uint64_t(1) << 63);
  cases.push_back({"header length 2^63", huge, "100 MB"});
  set_header_length(huge, 200'000'000);
  cases.push_back({"header length 200 MB", huge, "100 MB"});
  set_header_length(huge, good.size() - 7);
  cases.push_back({"header length one past the file", huge, "exceeds"});
  cases.push_back({"header not JSON", assemble("{\"w\": {\"dtype\": \"F32\", ", buffer), "not valid JSON"});
  cases.push_back({"header JSON but not an object", assemble("[1, 2, 3]", buffer), "does not start with '{'"});
  cases.push_back({"header not UTF-8", assemble("{\"\xff\xfe\": 1}", buffer), "not valid JSON"});
  cases.push_back({"entry not an object", edit([](auto& h) { h["w"] = 3; }), "not a JSON object"});
  cases.push_back({"dtype F16", edit([](auto& h) { h["w"]["dtype"] = "F16"; }), "dtype F16"});
  cases.push_back({"dtype BF16", edit([](auto& h) { h["w"]["dtype"] = "BF16"; }), "does not support"});
  cases.push_back({"dtype made up", edit([](auto& h) { h["w"]["dtype"] = "F33"; }), "unknown dtype 'F33'"});
  cases.push_back({"dtype not a string", edit([](auto& h) { h["w"]["dtype"] = 1; }), "dtype is not a string"});
  cases.push_back({"dtype missing", edit([](auto& h) { h["w"].erase("dtype"); }), "needs the fields"});
  cases.push_back({"extra field", edit([](auto& h) { h["w"]["strides"] = {3, 1}; }), "unexpected field 'strides'"});
  cases.push_back({"negative dim", edit([](auto& h) { h["w"]["shape"] = {-2, -3}; }), "non-negative integers"});
  cases.push_back({"fractional dim", edit([](auto& h) { h["w"]["shape"] = {2.0, 3}; }), "non-negative integers"});
  cases.push_back({"shape not an array", edit([](auto& h) { h["w"]["shape"] = "2x3"; }), "not an array"});
  cases.push_back({"enormous empty shape", edit([](auto& h) {
                     h["w"]["shape"] = {1ull << 40, 1ull << 40, 0};
                   }),
                   "too large"});
  cases.push_back({"offsets past the buffer", edit([](auto& h) {
                     h["mask"]["data_offsets"] = {48, 60};
                   }),
                   "do not lie within"});
  cases.push_back({"offsets reversed", edit([](auto& h) {
                     h["w"]["data_offsets"] = {48, 24};
                   }),
                   "end before they begin"});
  cases.push_back({"offsets not a pair", edit([](auto& h) { h["w"]["data_offsets"] = {24}; }), "pair"});
  cases.push_back({"negative offset", edit([](auto& h) { h["w"]["data_offsets"] = {-24, 0}; }), "pair"});
  cases.push_back({"overlapping offsets", edit([](auto& h) {
                     h["s"]["data_offsets"] = {8, 16};  // inside ids
                   }),
                   "overlaps"});
  cases.push_back({"numel does not match the byte span", edit([](auto& h) { h["w"]["shape"] = {2, 2}; }), "needs 16"});
  cases.push_back(
      {"dtype size does not match the byte span", edit([](auto& h) { h["w"]["dtype"] = "F64"; }), "needs 48"});
  Bytes gap_buffer = buffer;
  gap_buffer.insert(gap_buffer.begin() + 48, {0, 0, 0, 0});  // 4 stray bytes before mask
  cases.push_back({"gap in the buffer",
                   with_header(
                       [](auto& h) {
                         h["mask"]["data_offsets"] = {52, 55};
                       },
                       gap_buffer),
                   "belong to no tensor"});
  Bytes trailing = good;
  trailing.push_back(0);
  cases.push_back({"trailing byte", trailing, "trailing data"});
  cases.push_back({"tensor dropped from the header", edit([](auto& h) { h.erase("s"); }), "belong to no tensor"});
  cases.push_back(
      {"metadata value not a string", edit([](auto& h) { h["__metadata__"]["note"] = 3; }), "not a string"});
  cases.push_back({"metadata not an object", edit([](auto& h) { h["__metadata__"] = "a"; }), "__metadata__ is not"});
  Bytes bad_bool = good;
  bad_bool[8 + n + 49] = 2;
  cases.push_back({"BOOL byte 2", bad_bool, "must be 0 or 1"});
  std::string deep = "{\"w\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  cases.push_back({"deeply nested header", assemble(deep, buffer), "not a JSON object"});

  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string path = dir.file("bad.safetensors");
    write_bytes(path, c.bytes);
    std::string message;
    try {
      load_safetensors(path);
    } catch (const IOError& e) {
      message = e.what();
    }
    CHECK_MESSAGE(message.find("load_safetensors: " + path + ": ") == 0, message);
    CHECK_MESSAGE(message.find(c.message) != std::string::npos, message);
  }

  CHECK_THROWS_AS(load_safetensors(dir.file("missing.safetensors")), IOError);
  CHECK_THROWS_AS(load_safetensors(dir.path.string()), IOError);  // a directory
}

TEST_CASE("safetensors: bad arguments and failed writes leave the target untouched") {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  auto original = write_sample(path);
  const Bytes before = read_bytes(path);

  CHECK_THROWS_AS(save_safetensors(path, {{"u", Tensor()}}), ValueError);
  CHECK_THROWS_AS(save_safetensors(path, {{"__metadata__", ones({1})}}), ValueError);
  CHECK_THROWS_AS(save_safetensors(path, {{"\xff", ones({1})}}), ValueError);
  CHECK_THROWS_AS(save_safetensors(path, {{"x", ones({1})}}, {{"k", "\xc3"}}), ValueError);
  // The temp file cannot be created (a directory sits at its name): IOError, target unchanged.
  const std::string blocker = path + ".tmp." + std::to_string(::getpid());
  fs::create_directories(blocker + "/x");
  CHECK_THROWS_AS(save_safetensors(path, {{"x", ones({1})}}), IOError);
  fs::remove_all(blocker);
  CHECK_THROWS_AS(save_safetensors(dir.file("no/such/dir/x.safetensors"), {{"x", ones({1})}}), IOError);
  CHECK(read_bytes(path) == before);
  CHECK(dir.names() == std::vector<std::string>{"keep.safetensors"});  // no temp files left behind
  // A successful save replaces it whole.
  save_safetensors(path, {{"x", ones({1})}});
  CHECK(load_safetensors(path).tensors.size() == 1);
}

// ---- checkpoints ---------------------------------------------------------------------------------

namespace {

ModelConfig small_config(uint64_t seed) {
  ModelConfig c;
  c.vocab_size = 11;
  c.d_model = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.d_ff = 16;
  c.max_len = 8;
  c.seed = seed;
  return c;
}

// One "velocity" slot per parameter, updated from the parameters, and a step count: enough to
// check that a checkpoint carries the optimizer's tensors and scalars.
class FakeOptimizer : public Optimizer {
 public:
  explicit FakeOptimizer(std::vector<Tensor> ps, double lr = 0.1) : Optimizer(std::move(ps)), lr_(lr) {
    for (const Tensor& p : params_) slots_.push_back(zeros(p.shape(), p.dtype()));
  }
  void step() override {
    NoGradGuard ng;
    ++steps_;
    for (size_t i = 0; i < params_.size(); ++i) slots_[i].add_(params_[i].detach(), double(steps_) + double(i));
  }
  std::string name() const override { return "fake"; }
  double lr() const override { return lr_; }
  void set_lr(double lr) override { lr_ = lr; }
  StateDict state_tensors() const override {
    StateDict sd;
    for (size_t i = 0; i < slots_.size(); ++i) sd[std::to_string(i) + ".velocity"] = slots_[i];
    return sd;
  }
  nlohmann::json state_json() const override { return {{"name", "fake"}, {"step", steps_}, {"lr", lr_}}; }
  void load_state(const StateDict& tensors, const nlohmann::json& scalars) override {
    // Everything is checked before anything is written.
    if (scalars.value("name", "") != "fake") fail<ValueError>("FakeOptimizer", "not a fake optimizer's state");
    if (tensors.size() != slots_.size()) fail<ValueError>("FakeOptimizer", "slot count differs");
    for (size_t i = 0; i < slots_.size(); ++i) {
      auto it = tensors.find(std::to_string(i) + ".velocity");
      if (it == tensors.end() || it->second.shape() != slots_[i].shape())
        fail<ValueError>("FakeOptimizer", "slot ", i, " missing or misshapen");
    }
    for (size_t i = 0; i < slots_.size(); ++i) slots_[i].copy_(tensors.at(std::to_string(i) + ".velocity"));
    steps_ = scalars.at("step").get<int64_t>();
    lr_ = scalars.at("lr").get<double>();
  }
  int64_t steps() const { return steps_; }

 private:
  std::vector<Tensor> slots_;
  int64_t steps_ = 0;
  double lr_;
};

Tensor sample_ids() { return from_vector(std::vector<int64_t>{1, 2, 3, 10, 0, 4, 4, 5, 9, 7}, {2, 5}); }

// Changes every weight of `m` (as a training step would).
void perturb(Module& m, double by) {
  NoGradGuard ng;
  for (Tensor& p : m.parameters()) p.detach().add_(ones_like(p), by);
}

bool same_state(const StateDict& a, const StateDict& b) {
  if (a.size() != b.size()) return false;
  for (auto& [name, t] : a)
    if (!b.count(name) || !bits_equal(t, b.at(name))) return false;
  return true;
}

StateDict snapshot(const StateDict& sd) {
  StateDict out;
  for (auto& [name, t] : sd) out[name] = t.clone();
  return out;
}

}  // namespace

TEST_CASE("checkpoint: save -> load gives bit-identical outputs, optimizer state and scalars") {
  TempDir dir;
  const std::string prefix = dir.file("ckpt");
  CausalLM a(small_config(1));
  FakeOptimizer opt_a(a.parameters(), 0.05);
  opt_a.step();
  opt_a.step();
  Generator data_gen(77, 3);
  data_gen.advance(1234);
  CheckpointState st;
  st.config = a.config().to_json();
  st.step = 2;
  st.rng = {{"dropout", generator_to_json(a.dropout_generator())}, {"data", generator_to_json(data_gen)}};
  st.extra = {{"loss", 2.25}, {"tokens", 640}};
  save_checkpoint(prefix, a, &opt_a, st);
  CHECK(dir.names() == std::vector<std::string>{"ckpt.json", "ckpt.step2.optim.safetensors", "ckpt.step2.safetensors"});

  // The weights file is a plain PyTorch state dict: the model's dotted names and nothing else.
  SafetensorsFile w = load_safetensors(dir.file("ckpt.step2.safetensors"));
  CHECK(same_state(w.tensors, a.state_dict()));
  CHECK(w.metadata.at("format") == "pt");

  // Rebuild from the sidecar's config (as a resuming run does), then load.
  CheckpointState info = read_checkpoint_info(prefix);
  CHECK(info.step == 2);
  ModelConfig c = ModelConfig::from_json(info.config);
  c.seed = 99;  // different initial weights, so the load has something to do
  CausalLM b(c);
  FakeOptimizer opt_b(b.parameters(), 1.0);
  Tensor ids = sample_ids();
  REQUIRE_FALSE(bits_equal(a.forward(ids), b.forward(ids)));
  CheckpointState got = load_checkpoint(prefix, b, &opt_b);
  CHECK(bits_equal(a.forward(ids), b.forward(ids)));
  CHECK(same_state(opt_a.state_tensors(), opt_b.state_tensors()));
  CHECK(opt_b.steps() == 2);
  CHECK(opt_b.lr() == 0.05);
  CHECK(got.step == 2);
  CHECK(got.config == a.config().to_json());
  CHECK(got.optimizer == opt_a.state_json());
  CHECK(got.extra == st.extra);
  CHECK(got.rng == st.rng);
  CHECK_FALSE(got.created.empty());
  Generator restored = generator_from_json(got.rng["data"]);
  CHECK(restored.seed() == 77);
  CHECK(restored.stream() == 3);
  CHECK(restored.offset() == 1234);
  CHECK_THROWS_AS(generator_from_json({{"seed", 1}}), ValueError);

  // Weights only, into a third model without an optimizer.
  CausalLM d(small_config(5));
  load_checkpoint(prefix, d, nullptr);
  CHECK(bits_equal(a.forward(ids), d.forward(ids)));
}

TEST_CASE("checkpoint: later saves replace earlier ones, re-saving a step keeps the old files until the commit") {
  TempDir dir;
  const std::string prefix = dir.file("run");
  CausalLM m(small_config(1));
  FakeOptimizer opt(m.parameters());
  CheckpointState st;
  st.config = m.config().to_json();
  for (int64_t step : {10, 20}) {
    st.step = step;
    save_checkpoint(prefix, m, &opt, st);
  }
  CHECK(dir.names() == std::vector<std::string>{"run.json", "run.step20.optim.safetensors", "run.step20.safetensors"});
  // The same step again: written under the alternate name, then the first pair is removed.
  perturb(m, 0.5);
  save_checkpoint(prefix, m, &opt, st);
  CHECK(dir.names() ==
        std::vector<std::string>{"run.json", "run.step20.alt.optim.safetensors", "run.step20.alt.safetensors"});
  save_checkpoint(prefix, m, nullptr, st);  // and back; without an optimizer there is no optimizer file
  CHECK(dir.names() == std::vector<std::string>{"run.json", "run.step20.safetensors"});
  CausalLM back(small_config(3));
  load_checkpoint(prefix, back, nullptr);
  CHECK(same_state(back.state_dict(), m.state_dict()));
  FakeOptimizer opt2(back.parameters());
  CHECK_THROWS_WITH_AS(load_checkpoint(prefix, back, &opt2), doctest::Contains("without optimizer state"), IOError);
}

TEST_CASE("checkpoint: an interrupted save never yields a mixed state") {
  TempDir dir;
  const std::string prefix = dir.file("ck");
  CausalLM m(small_config(1));
  FakeOptimizer opt(m.parameters());
  opt.step();
  CheckpointState st;
  st.config = m.config().to_json();
  st.step = 5;
  save_checkpoint(prefix, m, &opt, st);
  const StateDict good = snapshot(m.state_dict());
  const StateDict good_opt = snapshot(opt.state_tensors());
  const Bytes good_sidecar = read_bytes(prefix + ".json");

  auto loads_previous = [&] {
    CausalLM r(small_config(9));
    FakeOptimizer ro(r.parameters());
    CheckpointState got = load_checkpoint(prefix, r, &ro);
    CHECK(got.step == 5);
    CHECK(same_state(r.state_dict(), good));
    CHECK(same_state(ro.state_tensors(), good_opt));
  };

  SUBCASE("killed while writing the next step's weights: garbage and truncated files at its names") {
    write_bytes(dir.file("ck.step6.safetensors"), Bytes(100, 0xab));
    Bytes half = read_bytes(dir.file("ck.step5.optim.safetensors"));
    half.resize(half.size() / 2);
    write_bytes(dir.file("ck.step6.optim.safetensors"), half);
    write_bytes(dir.file("ck.step6.safetensors.tmp.4242"), Bytes(7, 1));
    loads_previous();
    // The next successful save overwrites them and clears the litter.
    st.step = 6;
    save_checkpoint(prefix, m, &opt, st);
    CHECK(dir.names() == std::vector<std::string>{"ck.json", "ck.step6.optim.safetensors", "ck.step6.safetensors"});
  }

  SUBCASE("the sidecar write fails after the new weights are written") {
    perturb(m, 1.0);
    opt.step();
    const std::string blocker = prefix + ".json.tmp." + std::to_string(::getpid());
    fs::create_directories(blocker + "/x");  // a non-empty directory where the sidecar's temp file goes
    st.step = 6;
    CHECK_THROWS_AS(save_checkpoint(prefix, m, &opt, st), IOError);
    CHECK(read_bytes(prefix + ".json") == good_sidecar);
    loads_previous();
    // Re-saving the same step under the same circumstances must not touch the committed files either.
    st.step = 5;
    CHECK_THROWS_AS(save_checkpoint(prefix, m, &opt, st), IOError);
    loads_previous();
    fs::remove_all(blocker);
  }

  SUBCASE("a committed weights file truncated or altered afterwards is a clear error") {
    const std::string weights = dir.file("ck.step5.safetensors");
    Bytes bytes = read_bytes(weights);
    CausalLM r(small_config(9));
    const StateDict before = snapshot(r.state_dict());
    Bytes cut(bytes.begin(), bytes.end() - 4);
    write_bytes(weights, cut);
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("truncated"), IOError);
    Bytes flipped = bytes;
    flipped[flipped.size() - 3] ^= 0x40;  // one bit of one weight: still a valid safetensors file
    write_bytes(weights, flipped);
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("CRC-32"), IOError);
    fs::remove(weights);
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("cannot be read"), IOError);
    CHECK(same_state(r.state_dict(), before));  // untouched by the failed loads
  }

  SUBCASE("a truncated or foreign sidecar is a clear error") {
    CausalLM r(small_config(9));
    Bytes half(good_sidecar.begin(), good_sidecar.begin() + std::ptrdiff_t(good_sidecar.size() / 2));
    write_bytes(prefix + ".json", half);
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("not a JSON object"), IOError);
    write_bytes(prefix + ".json", Bytes{'{', '}'});
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("not an attnlab checkpoint"), IOError);
    nlohmann::json j = nlohmann::json::parse(good_sidecar.begin(), good_sidecar.end());
    j["files"]["model"]["name"] = "../elsewhere.safetensors";
    std::string text = j.dump();
    write_bytes(prefix + ".json", Bytes(text.begin(), text.end()));
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("plain file name"), IOError);
    j = nlohmann::json::parse(good_sidecar.begin(), good_sidecar.end());
    j["format_version"] = 2;
    text = j.dump();
    write_bytes(prefix + ".json", Bytes(text.begin(), text.end()));
    CHECK_THROWS_WITH_AS(load_checkpoint(prefix, r, nullptr), doctest::Contains("format_version 2"), IOError);
    CHECK_THROWS_AS(load_checkpoint(dir.file("nothing"), r, nullptr), IOError);
  }
}

TEST_CASE("checkpoint: weights or optimizer state that do not fit leave the model unchanged") {
  TempDir dir;
  const std::string prefix = dir.file("fit");
  CausalLM m(small_config(1));
  FakeOptimizer opt(m.parameters());
  CheckpointState st;
  st.config = m.config().to_json();
  save_checkpoint(prefix, m, &opt, st);

  ModelConfig wider = small_config(2);
  wider.d_ff = 24;
  CausalLM other(wider);
  const StateDict before = snapshot(other.state_dict());
  CHECK_THROWS_AS(load_checkpoint(prefix, other, nullptr), ShapeError);
  CHECK(same_state(other.state_dict(), before));

  ModelConfig deeper = small_config(2);
  deeper.n_layers = 2;
  CausalLM two(deeper);
  CHECK_THROWS_AS(load_checkpoint(prefix, two, nullptr), ValueError);

  // The optimizer refuses (its parameters differ): the model must not have been loaded either.
  CausalLM same(small_config(3));
  const StateDict same_before = snapshot(same.state_dict());
  std::vector<Tensor> fewer = same.parameters();
  fewer.pop_back();
  FakeOptimizer mismatched(fewer);
  CHECK_THROWS_AS(load_checkpoint(prefix, same, &mismatched), ValueError);
  CHECK(same_state(same.state_dict(), same_before));

  CHECK_THROWS_AS(save_checkpoint(dir.path.string() + "/", m, nullptr, st), ValueError);
  st.step = -1;
  CHECK_THROWS_AS(save_checkpoint(prefix, m, nullptr, st), ValueError);
}

TEST_CASE("checkpoint: attached files are committed to like the weights (missing or changed: IOError)") {
  TempDir dir;
  const std::string prefix = dir.file("ck");
  CausalLM m(small_config(1));
  write_file(dir.file("vocab.json"), "{\"v\": 1}\n");
  CheckpointState st;
  st.attached = {{"vocab", "vocab.json"}};
  save_checkpoint(prefix, m, nullptr, st);
  const nlohmann::json sidecar = nlohmann::json::parse(read_bytes(prefix + ".json"));
  CHECK(sidecar["files"]["vocab"] == nlohmann::json{{"name", "vocab.json"}, {"bytes", 9}, {"crc32", 0xfe3e03bau}});
  CHECK(read_attached_file(prefix, "vocab") == "{\"v\": 1}\n");
  CHECK(read_checkpoint_info(prefix).attached == st.attached);
  CHECK(dir.names() == std::vector<std::string>{"ck.json", "ck.step0.safetensors", "vocab.json"});  // kept

  CausalLM back(small_config(2));
  write_file(dir.file("vocab.json"), "{\"v\": 2}\n");  // same size, other bytes
  CHECK_THROWS_WITH_AS(read_attached_file(prefix, "vocab"), doctest::Contains("vocab.json has 9 bytes and CRC-32"),
                       IOError);
  CHECK_THROWS_WITH_AS(load_checkpoint(prefix, back, nullptr), doctest::Contains("vocab.json"), IOError);
  fs::remove(dir.file("vocab.json"));
  CHECK_THROWS_WITH_AS(read_attached_file(prefix, "vocab"), doctest::Contains("vocab.json cannot be read"), IOError);
  CHECK_THROWS_WITH_AS(read_attached_file(prefix, "tokenizer"), doctest::Contains("records no tokenizer file"),
                       IOError);

  // Saving needs the file, a plain name that is not the checkpoint's own, and a role of its own.
  const Bytes before = read_bytes(prefix + ".json");
  CHECK_THROWS_WITH_AS(save_checkpoint(prefix, m, nullptr, st), doctest::Contains("vocab.json cannot be read"),
                       IOError);
  CHECK(read_bytes(prefix + ".json") == before);
  write_file(dir.file("vocab.json"), "{}");
  for (auto bad : std::vector<std::map<std::string, std::string>>{
           {{"model", "vocab.json"}}, {{"v", "../vocab.json"}}, {{"v", "ck.json"}}, {{"v", "ck.step0.safetensors"}}}) {
    st.attached = bad;
    CHECK_THROWS_AS(save_checkpoint(prefix, m, nullptr, st), ValueError);
  }
}

TEST_CASE("checkpoint: an optimizer state that lost a tensor is refused, naming it") {
  TempDir dir;
  const std::string prefix = dir.file("ck");
  CausalLM m(small_config(1));
  Adam adam(m.parameters(), adamw_options(0.01));
  m.loss(sample_ids(), sample_ids()).backward();
  adam.step();
  save_checkpoint(prefix, m, &adam, {});

  // The optimizer file rewritten without parameter 1's moments, the sidecar updated to match (as a
  // tool or a hand edit would): the CRC cannot catch this, the optimizer must.
  StateDict slots = adam.state_tensors();
  slots.erase("1.exp_avg");
  slots.erase("1.exp_avg_sq");
  nlohmann::json sidecar = nlohmann::json::parse(read_bytes(prefix + ".json"));
  const std::string optim_file = dir.file(sidecar["files"]["optimizer"]["name"].get<std::string>());
  FileDigest d = save_safetensors(optim_file, slots);
  sidecar["files"]["optimizer"]["bytes"] = d.bytes;
  sidecar["files"]["optimizer"]["crc32"] = d.crc32;
  write_file(prefix + ".json", sidecar.dump());

  CausalLM back(small_config(2));
  const StateDict before = snapshot(back.state_dict());
  Adam fresh(back.parameters(), adamw_options(0.01));
  CHECK_THROWS_WITH_AS(load_checkpoint(prefix, back, &fresh), doctest::Contains("no tensor '1.exp_avg'"), ValueError);
  CHECK(same_state(back.state_dict(), before));
  CHECK(fresh.state_tensors().empty());

  // SGD likewise; a parameter that never had a gradient legitimately has no buffer.
  Tensor p = ones({2}).set_requires_grad(), unused = ones({2}).set_requires_grad();
  SGD sgd({p, unused}, {.lr = 0.1, .momentum = 0.9});
  p.set_grad(ones({2}));
  sgd.step();
  REQUIRE(sgd.state_tensors().size() == 1);
  SGD other({p, unused}, {.lr = 0.1, .momentum = 0.9});
  CHECK_NOTHROW(other.load_state(sgd.state_tensors(), sgd.state_json()));
  CHECK_THROWS_WITH_AS(other.load_state({}, sgd.state_json()), doctest::Contains("no tensor '0.momentum_buffer'"),
                       ValueError);
  nlohmann::json unlisted = sgd.state_json();
  unlisted.erase("stateful_params");
  CHECK_THROWS_WITH_AS(other.load_state(sgd.state_tensors(), unlisted), doctest::Contains("stateful_params"),
                       ValueError);
}

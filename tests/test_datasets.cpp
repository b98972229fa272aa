// IDX reader, Fashion-MNIST loader and batch plans, on tiny fixtures written here (raw and gzip),
// so none of it needs the dataset package.
#include <doctest/doctest.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "datasets/batches.h"
#include "datasets/fashion_mnist.h"
#include "datasets/idx.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;

// The IDX header for unsigned bytes: 00 00 08 ndim, then each size as a big-endian uint32.
Bytes idx_header(const std::vector<uint32_t>& dims, uint8_t type = 0x08) {
  Bytes b = {0, 0, type, uint8_t(dims.size())};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) b.push_back(uint8_t(d >> shift));
  return b;
}

Bytes idx_file(const std::vector<uint32_t>& dims, const Bytes& payload) {
  Bytes b = idx_header(dims);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

Bytes iota_bytes(size_t n, uint8_t start = 0) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t(start + i);
  return b;
}

void write_raw(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  REQUIRE(f.good());
}

void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(gzwrite(f, b.data(), unsigned(b.size())) == int(b.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

Bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Runs f, expects IOError, and returns its message for further checks.
template <class F>
std::string io_error_message(F&& f) {
  try {
    f();
  } catch (const IOError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL((std::string("expected IOError, got another exception: ") + e.what()));
  }
  FAIL("expected IOError, nothing was thrown");
  return "";
}

}  // namespace

TEST_CASE("read_idx: raw and gzip files give the same shape and bytes") {
  TempDir dir;
  Bytes payload = iota_bytes(2 * 3 * 4, 7);
  write_raw(dir.file("a.idx"), idx_file({2, 3, 4}, payload));
  write_gz(dir.file("a.idx.gz"), idx_file({2, 3, 4}, payload));
  for (const char* name : {"a.idx", "a.idx.gz"}) {
    CAPTURE(name);
    IdxArray a = read_idx(dir.file(name));
    CHECK(a.shape == Shape{2, 3, 4});
    CHECK(a.data == payload);
  }
}

TEST_CASE("read_idx: 1-D labels, sizes beyond one byte, and an empty array") {
  TempDir dir;
  Bytes labels = iota_bytes(300);  // 300 needs two bytes of the big-endian size
  write_gz(dir.file("labels.gz"), idx_file({300}, labels));
  IdxArray a = read_idx(dir.file("labels.gz"));
  CHECK(a.shape == Shape{300});
  CHECK(a.data == labels);

  write_raw(dir.file("empty.idx"), idx_file({0, 28, 28}, {}));
  IdxArray e = read_idx(dir.file("empty.idx"));
  CHECK(e.shape == Shape{0, 28, 28});
  CHECK(e.data.empty());
}

TEST_CASE("read_idx: a missing file or a directory throws IOError naming the path") {
  TempDir dir;
  std::string missing = dir.file("nope.gz");
  CHECK(contains(io_error_message([&] { read_idx(missing); }), missing));
  CHECK(contains(io_error_message([&] { read_idx(dir.path.string()); }), "directory"));
}

TEST_CASE("read_idx: bad headers throw IOError") {
  TempDir dir;
  SUBCASE("bad magic") {
    Bytes b = idx_file({2}, {1, 2});
    b[0] = 0x1f;
    write_raw(dir.file("bad"), b);
    std::string msg = io_error_message([&] { read_idx(dir.file("bad")); });
    CHECK(contains(msg, "magic"));
    CHECK(contains(msg, dir.file("bad")));
  }
  SUBCASE("unsupported element type") {
    Bytes b = idx_header({2}, 0x0D);  // float32
    b.resize(b.size() + 8);
    write_gz(dir.file("float.gz"), b);
    CHECK(contains(io_error_message([&] { read_idx(dir.file("float.gz")); }), "0xd"));
  }
  SUBCASE("zero dimensions") {
    write_raw(dir.file("zero"), {0, 0, 8, 0});
    CHECK(contains(io_error_message([&] { read_idx(dir.file("zero")); }), "0 dimensions"));
  }
  SUBCASE("empty file") {
    write_raw(dir.file("empty"), {});
    CHECK(contains(io_error_message([&] { read_idx(dir.file("empty")); }), "magic"));
  }
  SUBCASE("file ends inside the sizes") {
    Bytes b = idx_header({60000, 28, 28});
    b.resize(10);
    write_gz(dir.file("short.gz"), b);
    CHECK(contains(io_error_message([&] { read_idx(dir.file("short.gz")); }), "header"));
  }
}

TEST_CASE("read_idx: payload must be exactly the declared size") {
  TempDir dir;
  for (bool gz : {false, true}) {
    CAPTURE(gz);
    auto write = [&](const std::string& name, const Bytes& b) {
      gz ? write_gz(dir.file(name), b) : write_raw(dir.file(name), b);
    };

    write("short", idx_file({2, 3}, iota_bytes(5)));  // one byte missing
    std::string msg = io_error_message([&] { read_idx(dir.file("short")); });
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "6 bytes"));
    CHECK(contains(msg, dir.file("short")));

    write("long", idx_file({2, 3}, iota_bytes(7)));  // one byte too many: a wrong count in the header
    CHECK(contains(io_error_message([&] { read_idx(dir.file("long")); }), "longer"));
  }
}

TEST_CASE("read_idx: a cut-off or corrupted gzip stream throws IOError") {
  TempDir dir;
  // Incompressible-ish payload so the compressed stream is long enough to cut in the middle.
  Bytes payload(5000);
  uint32_t x = 12345;
  for (uint8_t& v : payload) v = uint8_t((x = x * 1664525u + 1013904223u) >> 24);
  write_gz(dir.file("full.gz"), idx_file({5000}, payload));
  Bytes gz = read_raw(dir.file("full.gz"));
  REQUIRE(gz.size() > 1000);
  CHECK(read_idx(dir.file("full.gz")).data == payload);

  SUBCASE("stream cut in the middle") {
    write_raw(dir.file("cut.gz"), Bytes(gz.begin(), gz.begin() + long(gz.size() / 2)));
    CHECK(contains(io_error_message([&] { read_idx(dir.file("cut.gz")); }), "cut.gz"));
  }
  SUBCASE("only the 8-byte trailer (CRC + length) missing") {
    write_raw(dir.file("notrailer.gz"), Bytes(gz.begin(), gz.end() - 8));
    CHECK(contains(io_error_message([&] { read_idx(dir.file("notrailer.gz")); }), "truncated"));
  }
  SUBCASE("flipped bytes in the deflate data") {
    Bytes bad = gz;
    for (size_t i = bad.size() / 2; i < bad.size() / 2 + 16; ++i) bad[i] ^= 0xA5;
    write_raw(dir.file("flipped.gz"), bad);
    CHECK(contains(io_error_message([&] { read_idx(dir.file("flipped.gz")); }), "flipped.gz"));
  }
}

// ---- Fashion-MNIST ---------------------------------------------------------------------------

namespace {
// A 3-image split in the package's layout: pixel (i, r, c) = (i * 50 + r + c) % 256, labels 9, 0, 4.
void write_fashion_split(const TempDir& dir, const std::string& prefix, uint32_t n = 3, uint32_t side = 28,
                         Bytes labels = {9, 0, 4}) {
  Bytes pixels;
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t r = 0; r < side; ++r)
      for (uint32_t c = 0; c < side; ++c) pixels.push_back(uint8_t((i * 50 + r + c) % 256));
  write_gz(dir.file(prefix + "-images-idx3-ubyte.gz"), idx_file({n, side, side}, pixels));
  write_gz(dir.file(prefix + "-labels-idx1-ubyte.gz"), idx_file({uint32_t(labels.size())}, labels));
}
}  // namespace

TEST_CASE("load_fashion_mnist: reads a split into f32 [N, 784] in [0, 1] and i64 labels") {
  TempDir dir;
  write_fashion_split(dir, "train");
  write_fashion_split(dir, "t10k", 2, 28, {1, 2});
  ImageClassificationSet train = load_fashion_mnist(dir.path.string(), true);
  CHECK(train.size() == 3);
  CHECK(train.images.shape() == Shape{3, 784});
  CHECK(train.images.dtype() == DType::f32);
  CHECK(train.labels.dtype() == DType::i64);
  CHECK(train.labels.to_vector<int64_t>() == std::vector<int64_t>{9, 0, 4});
  CHECK(train.class_names.size() == 10);
  CHECK(train.class_names[9] == "Ankle boot");
  CHECK(train.images.at({0, 0}) == 0.0);
  CHECK(train.images.at({1, 28 * 2 + 3}) == doctest::Approx((50 + 2 + 3) / 255.0));
  CHECK(train.images.at({2, 783}) == doctest::Approx((100 + 27 + 27) / 255.0));
  CHECK(max(train.images).item<float>() <= 1.0f);

  ImageClassificationSet test = load_fashion_mnist(dir.path.string(), false);
  CHECK(test.images.shape() == Shape{2, 784});
  CHECK(test.labels.to_vector<int64_t>() == std::vector<int64_t>{1, 2});
}

TEST_CASE("load_fashion_mnist: a missing directory or file tells how to install the package") {
  TempDir dir;
  std::string msg = io_error_message([&] { load_fashion_mnist(dir.file("absent")); });
  CHECK(contains(msg, "apt-get install dataset-fashion-mnist"));
  CHECK(contains(msg, dir.file("absent")));

  write_fashion_split(dir, "train");
  msg = io_error_message([&] { load_fashion_mnist(dir.path.string(), false); });  // no t10k files
  CHECK(contains(msg, "t10k-images-idx3-ubyte.gz"));
  CHECK(contains(msg, "apt-get install dataset-fashion-mnist"));
}

TEST_CASE("load_fashion_mnist: inconsistent files throw IOError") {
  TempDir dir;
  SUBCASE("label count differs from image count") {
    write_fashion_split(dir, "train", 3, 28, {1, 2});
    CHECK(contains(io_error_message([&] { load_fashion_mnist(dir.path.string()); }), "2 labels"));
  }
  SUBCASE("images are not 28x28") {
    write_fashion_split(dir, "train", 3, 27);
    CHECK(contains(io_error_message([&] { load_fashion_mnist(dir.path.string()); }), "[3, 27, 27]"));
  }
  SUBCASE("a label outside the 10 classes") {
    write_fashion_split(dir, "train", 3, 28, {1, 10, 2});
    CHECK(contains(io_error_message([&] { load_fashion_mnist(dir.path.string()); }), "label 10"));
  }
}

TEST_CASE("load_fashion_mnist: the installed package, when present, has the documented layout") {
  if (!fs::exists(std::string(kFashionMnistDir) + "/t10k-labels-idx1-ubyte.gz")) {
    MESSAGE("dataset-fashion-mnist not installed; skipped");
    return;
  }
  ImageClassificationSet test = load_fashion_mnist(kFashionMnistDir, false);
  CHECK(test.images.shape() == Shape{10000, 784});
  std::vector<int64_t> counts(10, 0);
  for (int64_t y : test.labels.to_vector<int64_t>()) counts[size_t(y)]++;
  CHECK(counts == std::vector<int64_t>(10, 1000));  // exactly balanced (docs/datasets.md §1.1)
}

// ---- batch plans -----------------------------------------------------------------------------

TEST_CASE("shuffled_batches: every index exactly once, in batches of the requested size") {
  Generator g(42);
  std::vector<Tensor> batches = shuffled_batches(10, 4, g);
  REQUIRE(batches.size() == 3);
  CHECK(batches[0].shape() == Shape{4});
  CHECK(batches[2].shape() == Shape{2});
  std::multiset<int64_t> seen;
  for (const Tensor& b : batches) {
    CHECK(b.dtype() == DType::i64);
    for (int64_t i : b.to_vector<int64_t>()) seen.insert(i);
  }
  CHECK(seen == std::multiset<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});

  Generator g2(42);
  std::vector<Tensor> dropped = shuffled_batches(10, 4, g2, /*drop_last=*/true);
  CHECK(dropped.size() == 2);
  CHECK(equal(dropped[0], batches[0]));  // same seed, same order
  CHECK(shuffled_batches(0, 4, g).empty());
}

TEST_CASE("shuffled_batches: seeded, and successive epochs differ") {
  Generator a(7), b(7), c(8);
  std::vector<int64_t> pa = random_permutation(1000, a);
  CHECK(pa == random_permutation(1000, b));
  CHECK(pa != random_permutation(1000, c));
  CHECK(pa != random_permutation(1000, a));  // the generator advanced: a new epoch, a new order
  std::vector<int64_t> identity(1000);
  for (size_t i = 0; i < identity.size(); ++i) identity[i] = int64_t(i);
  CHECK(pa != identity);
}

TEST_CASE("shuffled_batches: each position is roughly uniform over indices") {
  // 4000 shuffles of 4 items: each item should land first about 1000 times.
  Generator g(3);
  std::vector<int> first(4, 0);
  for (int t = 0; t < 4000; ++t) first[size_t(random_permutation(4, g)[0])]++;
  for (int count : first) CHECK(std::abs(count - 1000) < 150);  // about 5 standard deviations
}

TEST_CASE("shuffled_batches: works with index_select on a data tensor") {
  Tensor x = arange(0.0, 12.0).reshape({6, 2});
  Generator g(1);
  for (const Tensor& idx : shuffled_batches(6, 4, g)) {
    Tensor rows = index_select(x, 0, idx);
    CHECK(rows.size(0) == idx.numel());
    std::vector<int64_t> ids = idx.to_vector<int64_t>();
    for (size_t r = 0; r < ids.size(); ++r) CHECK(rows.at({int64_t(r), 1}) == double(2 * ids[r] + 1));
  }
}

TEST_CASE("shuffled_batches: bad sizes throw ValueError") {
  Generator g(0);
  CHECK_THROWS_AS(shuffled_batches(10, 0, g), ValueError);
  CHECK_THROWS_AS(shuffled_batches(-1, 4, g), ValueError);
  CHECK_THROWS_AS(random_permutation(-3, g), ValueError);
}

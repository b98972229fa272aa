// Tokenizers, text corpora and splits, LM batchers, and the sorting task. Everything runs on small
// generated fixtures; the one real-KJV check is skipped (with a MESSAGE) when `bible` is absent.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "datasets/corpus.h"
#include "datasets/sort_task.h"
#include "datasets/tokenizer.h"
#include "tests/support.h"

using namespace attnlab;
using namespace attnlab::testing;
namespace fs = std::filesystem;

namespace {

std::vector<int64_t> iota_tokens(int64_t n) {
  std::vector<int64_t> v(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = i;
  return v;
}

// Text with the shape validate_kjv wants, without being the real thing.
std::string fake_kjv() {
  std::string text = "\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n";
  while (text.size() < 4'100'000) text += "  2 And the earth was without form, and void.\n";
  return text + "  21 The grace of our Lord Jesus Christ be with you all. Amen.\n";
}

}  // namespace

// ---- tokenizers --------------------------------------------------------------------------------

TEST_CASE("ByteTokenizer is the identity on bytes and round-trips anything") {
  ByteTokenizer tok;
  CHECK(tok.vocab_size() == 256);
  CHECK(tok.name() == "byte");
  const std::string text = std::string("a\0b", 3) + "\xff\x80 caf\xc3\xa9";
  const auto ids = tok.encode(text);
  REQUIRE(ids.size() == text.size());
  CHECK(ids[0] == 'a');
  CHECK(ids[1] == 0);
  CHECK(ids[3] == 255);
  CHECK(tok.decode(ids) == text);
  CHECK(tok.encode("").empty());
  CHECK(contains(message_of<ValueError>([&] { tok.decode({65, 256}); }), "id 256 at position 1"));
  CHECK_THROWS_AS(tok.decode({-1}), ValueError);
}

TEST_CASE("CharTokenizer numbers the sorted distinct bytes of its corpus") {
  auto tok = CharTokenizer::from_corpus("hello world");
  CHECK(tok.name() == "char");
  CHECK(tok.vocab_size() == 8);  // ' ' d e h l o r w
  CHECK(tok.symbols() == std::vector<uint8_t>{' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w'});
  CHECK(tok.encode("hello") == std::vector<int64_t>{3, 2, 4, 4, 5});
  CHECK(tok.decode(tok.encode("world hello")) == "world hello");
  CHECK(tok.contains('w'));
  CHECK_FALSE(tok.contains('x'));

  const std::string msg = message_of<ValueError>([&] { tok.encode("hex"); });
  CHECK(contains(msg, "CharTokenizer::encode"));
  CHECK(contains(msg, "0x78 ('x')"));
  CHECK(contains(msg, "position 2"));
  CHECK(contains(message_of<ValueError>([&] { tok.encode("a\n"); }), "0x61"));
  CHECK(contains(message_of<ValueError>([&] { tok.decode({8}); }), "id 8"));

  CHECK_THROWS_AS(CharTokenizer::from_corpus(""), ValueError);
  CHECK_THROWS_AS(CharTokenizer(std::vector<uint8_t>{'b', 'a'}), ValueError);
  CHECK_THROWS_AS(CharTokenizer(std::vector<uint8_t>{'a', 'a'}), ValueError);

  // Both kinds behind the common interface.
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(std::make_unique<ByteTokenizer>());
  toks.push_back(std::make_unique<CharTokenizer>(tok));
  for (const auto& t : toks) CHECK(t->decode(t->encode("hello")) == "hello");
}

TEST_CASE("CharTokenizer JSON round trip, in memory and on disk") {
  // Includes NUL, a newline and bytes >= 0x80, which a JSON string could not hold as-is.
  const std::string corpus = std::string("Zebra\n\0\x80\xff", 9);
  auto tok = CharTokenizer::from_corpus(corpus);
  nlohmann::json j = tok;
  CHECK(j["tokenizer"] == "char");
  CHECK(j["version"] == 1);
  CharTokenizer back = j.get<CharTokenizer>();
  CHECK(back.symbols() == tok.symbols());
  CHECK(back.decode(back.encode(corpus)) == corpus);

  TempDir dir;
  tok.save(dir.file("tok.json"));
  CharTokenizer loaded = CharTokenizer::load(dir.file("tok.json"));
  CHECK(loaded.symbols() == tok.symbols());
  CHECK(loaded.encode(corpus) == tok.encode(corpus));

  CHECK(contains(message_of<IOError>([&] { CharTokenizer::load(dir.file("missing.json")); }), "missing.json"));
  write_file(dir.file("bad.json"), "{ not json");
  CHECK(contains(message_of<IOError>([&] { CharTokenizer::load(dir.file("bad.json")); }), "not valid JSON"));
  write_file(dir.file("bad_symbol.json"), R"({"tokenizer": "char", "version": 1, "symbols": [10, 300]})");
  CHECK(contains(message_of<IOError>([&] { CharTokenizer::load(dir.file("bad_symbol.json")); }), "300"));
  CHECK_THROWS_AS(tok.save(dir.file("no_such_dir/tok.json")), IOError);

  CHECK_THROWS_AS((nlohmann::json{{"tokenizer", "byte"}, {"version", 1}, {"symbols", {65}}}.get<CharTokenizer>()), ValueError);
  CHECK_THROWS_AS((nlohmann::json{{"tokenizer", "char"}, {"version", 2}, {"symbols", {65}}}.get<CharTokenizer>()), ValueError);
  CHECK_THROWS_AS((nlohmann::json{{"tokenizer", "char"}, {"version", 1}, {"symbols", {66, 65}}}.get<CharTokenizer>()), ValueError);
  CHECK_THROWS_AS((nlohmann::json{{"tokenizer", "char"}, {"version", 1}}.get<CharTokenizer>()), ValueError);
}

// ---- corpora -----------------------------------------------------------------------------------

TEST_CASE("split_text makes contiguous, deterministic 90/5/5 splits") {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += char('a' + i % 26);
  TextCorpus c = split_text(text, "abc");
  CHECK(c.name == "abc");
  CHECK(c.train.size() == 900);
  CHECK(c.val.size() == 50);
  CHECK(c.test.size() == 50);
  CHECK(c.total_bytes() == 1000);
  CHECK(c.train + c.val + c.test == text);
  TextCorpus again = split_text(text, "abc");
  CHECK(again.train == c.train);
  CHECK(again.val == c.val);
  CHECK(again.test == c.test);

  // Configurable; test takes the rounding remainder.
  TextCorpus d = split_text(text + "z", "abc", {0.8, 0.1, 0.1});
  CHECK(d.train.size() == 800);
  CHECK(d.val.size() == 100);
  CHECK(d.test.size() == 101);
  // 0.29 * 100 is 28.999999999999996 in floating point; the split still takes 29 bytes.
  CHECK(split_text(text.substr(0, 100), "x", {0.29, 0.71, 0.0}).train.size() == 29);
  CHECK(split_text("", "empty").total_bytes() == 0);

  CHECK(contains(message_of<ValueError>([&] { split_text(text, "x", {0.9, 0.2, 0.1}); }), "sum to 1"));
  CHECK_THROWS_AS(split_text(text, "x", {1.1, -0.05, -0.05}), ValueError);
}

TEST_CASE("text files load by path; missing files give IOError naming them") {
  TempDir dir;
  const std::string path = dir.file("little_book.txt");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "line " + std::to_string(i) + "\n";
  write_file(path, text);
  CHECK(read_text_file(path) == text);

  TextCorpus c = load_corpus(path);
  CHECK(c.name == "little_book");
  CHECK(c.train + c.val + c.test == text);
  CHECK(c.train.size() == text.size() * 9 / 10);

  const std::string missing = dir.file("nope.txt");
  CHECK(contains(message_of<IOError>([&] { read_text_file(missing); }), missing));
  const std::string msg = message_of<IOError>([&] { load_corpus(missing); });
  CHECK(contains(msg, missing));
  CHECK(contains(msg, "kjv"));
  CHECK(contains(message_of<IOError>([&] { read_text_file(dir.path.string()); }), "directory"));
}

TEST_CASE("KJV loader: cache use, validation and the missing-program error, without bible-kjv") {
  TempDir dir;
  const std::string cache = dir.file("sub/kjv.txt");
  const std::string no_program = "attnlab-test-no-such-program";

  // No cache and no program: tells the user what to install.
  const std::string msg = message_of<IOError>([&] { kjv_text(cache, no_program); });
  CHECK(contains(msg, no_program));
  CHECK(contains(msg, "apt-get install -y bible-kjv"));

  // A cached file is used as-is (no program needed) once it passes validation.
  fs::create_directories(dir.path / "sub");
  write_file(cache, fake_kjv());
  const bool cached_used = kjv_text(cache, no_program) == fake_kjv();  // a bool: never print 4 MB
  CHECK(cached_used);

  // A bad cache is reported, not silently replaced.
  write_file(cache, "Genesis 1\n  1 In the beginning\n");
  CHECK(contains(message_of<IOError>([&] { kjv_text(cache, no_program); }), "delete the cache file"));

  std::string truncated = fake_kjv();
  truncated.resize(truncated.size() - 30);
  CHECK(contains(message_of<IOError>([&] { validate_kjv(truncated, "t"); }), "Revelation 22:21"));
  std::string no_heading = fake_kjv();
  no_heading[1] = 'X';  // "Xenesis 1"
  CHECK(contains(message_of<IOError>([&] { validate_kjv(no_heading, "t"); }), "Genesis 1"));
  CHECK_NOTHROW(validate_kjv(fake_kjv(), "t"));

  CHECK(contains(default_kjv_cache_path(), "attnlab"));
}

TEST_CASE("KJV loader with the real bible-kjv package") {
  if (std::system("command -v bible >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: the `bible` program is not installed (apt-get install -y bible-kjv)");
    return;
  }
  TempDir dir;
  const std::string cache = dir.file("cache/kjv.txt");
  const std::string text = kjv_text(cache);  // runs `bible` and writes the cache
  MESSAGE("KJV from `bible`: " << text.size() << " bytes");
  CHECK_MESSAGE(text.size() == kKjvExpectedBytes, "bible-kjv 4.38 gives 4,298,239 bytes; another version?");
  std::set<unsigned char> symbols(text.begin(), text.end());
  CHECK_MESSAGE(symbols.size() == 73, "bible-kjv 4.38 has 73 distinct bytes");
  CHECK(CharTokenizer::from_corpus(text).vocab_size() == int64_t(symbols.size()));
  REQUIRE(fs::exists(cache));
  // Compared as bools, so a failure does not print 4 MB of text.
  const bool cache_matches = read_text_file(cache) == text;
  const bool second_call_matches = kjv_text(cache, "attnlab-test-no-such-program") == text;  // from the cache
  CHECK(cache_matches);
  CHECK(second_call_matches);

  TextCorpus c = load_kjv(cache);
  CHECK(c.name == "kjv");
  CHECK(c.total_bytes() == text.size());
  CHECK(c.train.rfind("\nGenesis 1\n", 0) == 0);
  CHECK(c.train.size() == text.size() * 9 / 10);
  CHECK(c.test.find("Amen.") != std::string::npos);

  // The registry name, with the default cache under a temporary XDG_CACHE_HOME (restored after).
  const char* old_xdg = std::getenv("XDG_CACHE_HOME");
  const std::string saved_xdg = old_xdg ? old_xdg : "";
  ::setenv("XDG_CACHE_HOME", dir.file("xdg").c_str(), 1);
  CHECK(default_kjv_cache_path() == dir.file("xdg") + "/attnlab/kjv.txt");
  TextCorpus by_name = load_corpus("kjv");
  CHECK(fs::file_size(dir.file("xdg") + "/attnlab/kjv.txt") == text.size());
  if (old_xdg) ::setenv("XDG_CACHE_HOME", saved_xdg.c_str(), 1);
  else ::unsetenv("XDG_CACHE_HOME");
  CHECK(by_name.name == "kjv");
  const bool same_split = by_name.val == c.val;
  CHECK(same_split);
}

// ---- LM batches --------------------------------------------------------------------------------

TEST_CASE("LMBatcher: random windows, targets shifted by one") {
  const int64_t n = 1000, T = 16, B = 8;
  LMBatcher batcher(iota_tokens(n), T, B, Generator(42));
  CHECK(batcher.num_windows() == n - T);
  for (int step = 0; step < 5; ++step) {
    LMBatch b = batcher.next();
    REQUIRE(b.input.shape() == Shape{B, T});
    REQUIRE(b.target.shape() == Shape{B, T});
    CHECK(b.input.dtype() == DType::i64);
    const auto in = b.input.to_vector<int64_t>(), tg = b.target.to_vector<int64_t>();
    for (int64_t r = 0; r < B; ++r) {
      const int64_t s = in[size_t(r * T)];
      CHECK(s >= 0);
      CHECK(s + T < n);  // the target window still fits
      for (int64_t t = 0; t < T; ++t) {
        CHECK(in[size_t(r * T + t)] == s + t);  // a contiguous window of the stream
        CHECK(tg[size_t(r * T + t)] == s + t + 1);
      }
    }
  }
  CHECK(batcher.offset() == uint64_t(5 * B));
}

TEST_CASE("LMBatcher: deterministic per seed, resumable from the generator offset") {
  const auto tokens = iota_tokens(5000);
  LMBatcher a(tokens, 32, 4, Generator(7)), b(tokens, 32, 4, Generator(7)), c(tokens, 32, 4, Generator(8));
  bool differs = false;
  for (int i = 0; i < 4; ++i) {
    LMBatch x = a.next(), y = b.next(), z = c.next();
    CHECK(equal(x.input, y.input));
    CHECK(equal(x.target, y.target));
    differs = differs || !equal(x.input, z.input);
  }
  CHECK(differs);

  // "Checkpoint" a after 4 steps, run on, then resume a fresh batcher from the saved offset.
  const uint64_t saved = a.offset();
  std::vector<LMBatch> expected;
  for (int i = 0; i < 3; ++i) expected.push_back(a.next());
  LMBatcher resumed(from_vector(tokens, Shape{int64_t(tokens.size())}), 32, 4, Generator(7));
  resumed.set_offset(saved);
  for (const LMBatch& e : expected) {
    LMBatch r = resumed.next();
    CHECK(equal(r.input, e.input));
    CHECK(equal(r.target, e.target));
  }
  CHECK(resumed.offset() == a.offset());
}

TEST_CASE("LMBatcher: every start position is reachable, argument errors") {
  const int64_t n = 20, T = 4;
  LMBatcher batcher(iota_tokens(n), T, 8, Generator(1));
  std::set<int64_t> starts;
  for (int i = 0; i < 100; ++i) {
    const auto in = batcher.next().input.to_vector<int64_t>();
    for (size_t r = 0; r < 8; ++r) starts.insert(in[r * size_t(T)]);
  }
  CHECK(starts.size() == size_t(n - T));
  CHECK(*starts.rbegin() == n - T - 1);

  LMBatcher tight(iota_tokens(T + 1), T, 3, Generator(1));  // exactly one window
  CHECK(tight.next().input.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3});

  CHECK(contains(message_of<ValueError>([&] { LMBatcher(iota_tokens(T), T, 2, Generator(1)); }), "seq_len + 1"));
  CHECK_THROWS_AS(LMBatcher(iota_tokens(10), 0, 2, Generator(1)), ValueError);
  CHECK_THROWS_AS(LMBatcher(iota_tokens(10), 2, 0, Generator(1)), ValueError);
  CHECK_THROWS_AS(LMBatcher(zeros({10}), 2, 2, Generator(1)), DTypeError);
  CHECK_THROWS_AS(LMBatcher(zeros({2, 10}, DType::i64), 2, 2, Generator(1)), ShapeError);
}

TEST_CASE("LMEvalBatches covers every target exactly once, tail included") {
  struct Case { int64_t n, T, B; };
  for (Case k : {Case{23, 5, 2}, Case{21, 5, 2}, Case{2, 5, 3}, Case{100, 7, 64}, Case{64, 1, 10}}) {
    CAPTURE(k.n);
    CAPTURE(k.T);
    CAPTURE(k.B);
    const auto tokens = iota_tokens(k.n);
    LMEvalBatches eval(tokens, k.T, k.B);
    CHECK(eval.num_targets() == k.n - 1);
    std::vector<int64_t> inputs, targets;
    int64_t batches = 0;
    LMBatch b;
    while (eval.next(b)) {
      ++batches;
      REQUIRE(b.input.shape() == b.target.shape());
      CHECK(b.input.size(0) <= k.B);
      CHECK(b.input.size(1) <= k.T);
      const auto in = b.input.to_vector<int64_t>(), tg = b.target.to_vector<int64_t>();
      for (size_t i = 0; i < in.size(); ++i) CHECK(tg[i] == in[i] + 1);
      inputs.insert(inputs.end(), in.begin(), in.end());
      targets.insert(targets.end(), tg.begin(), tg.end());
    }
    CHECK(batches == eval.num_batches());
    // In order, each once: inputs are tokens[0, n-1), targets tokens[1, n).
    CHECK(inputs == std::vector<int64_t>(tokens.begin(), tokens.end() - 1));
    CHECK(targets == std::vector<int64_t>(tokens.begin() + 1, tokens.end()));
    CHECK_FALSE(eval.next(b));
    eval.reset();
    CHECK(eval.next(b));
  }

  // 22 targets, T = 5, B = 2: [2, 5], [2, 5], then the 2-token tail as [1, 2].
  LMEvalBatches eval(from_vector(iota_tokens(23), Shape{23}), 5, 2);
  LMBatch b;
  std::vector<Shape> shapes;
  while (eval.next(b)) shapes.push_back(b.input.shape());
  CHECK(shapes == std::vector<Shape>{{2, 5}, {2, 5}, {1, 2}});

  CHECK_THROWS_AS(LMEvalBatches(iota_tokens(1), 5, 2), ValueError);
  CHECK_THROWS_AS(LMEvalBatches(iota_tokens(10), 0, 2), ValueError);
}

// ---- sort task ---------------------------------------------------------------------------------

TEST_CASE("make_sort_batch: targets are the sorted inputs, T2T layout") {
  SortTaskConfig cfg{10, 1, 16};
  CHECK(sort_vocab_size(cfg) == 12);
  Generator g(3);
  const int64_t B = 300, W = cfg.max_len + 1;
  SortBatch batch = make_sort_batch(cfg, B, g);
  REQUIRE(batch.input.shape() == Shape{B, W});
  REQUIRE(batch.target.shape() == Shape{B, W});
  REQUIRE(batch.lengths.shape() == Shape{B});
  CHECK(batch.input.dtype() == DType::i64);
  CHECK(g.offset() == uint64_t(B * W));

  const auto in = batch.input.to_vector<int64_t>(), tg = batch.target.to_vector<int64_t>();
  const auto len = batch.lengths.to_vector<int64_t>();
  std::set<int64_t> lengths_seen, symbols_seen;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t L = len[size_t(r)];
    REQUIRE(L >= cfg.min_len);
    REQUIRE(L <= cfg.max_len);
    lengths_seen.insert(L);
    auto x = in.begin() + r * W, y = tg.begin() + r * W;
    for (int64_t j = 0; j < L; ++j) {
      CHECK(x[j] >= kSortNumReserved);
      CHECK(x[j] < kSortNumReserved + cfg.num_symbols);
      symbols_seen.insert(x[j]);
    }
    CHECK(std::is_sorted(y, y + L));
    CHECK(std::is_permutation(x, x + L, y));
    CHECK(x[L] == kSortEos);
    CHECK(y[L] == kSortEos);
    for (int64_t j = L + 1; j < W; ++j) {
      CHECK(x[j] == kSortPad);
      CHECK(y[j] == kSortPad);
    }
  }
  CHECK(lengths_seen.size() == size_t(cfg.max_len));         // 1..16 all drawn in 300 examples
  CHECK(symbols_seen.size() == size_t(cfg.num_symbols));     // and every symbol
}

TEST_CASE("make_sort_batch: deterministic, each example regenerable alone, fixed lengths") {
  SortTaskConfig cfg{64, 1, 32};
  Generator g1(11), g2(11);
  SortBatch a = make_sort_batch(cfg, 20, g1), b = make_sort_batch(cfg, 20, g2);
  CHECK(equal(a.input, b.input));
  CHECK(equal(a.target, b.target));
  CHECK(equal(a.lengths, b.lengths));

  Generator one(11);
  one.set_offset(uint64_t(7 * (cfg.max_len + 1)));
  SortBatch row7 = make_sort_batch(cfg, 1, one);
  CHECK(equal(row7.input, a.input.narrow(0, 7, 1).contiguous()));

  SortTaskConfig fixed{8, 5, 5};
  Generator g(0);
  CHECK(make_sort_batch(fixed, 10, g).lengths.to_vector<int64_t>() == std::vector<int64_t>(10, 5));

  CHECK_THROWS_AS(make_sort_batch({0, 1, 4}, 1, g), ValueError);
  CHECK_THROWS_AS(make_sort_batch({8, 0, 4}, 1, g), ValueError);
  CHECK(contains(message_of<ValueError>([&] { make_sort_batch({8, 5, 4}, 1, g); }), "max_len"));
  CHECK(make_sort_batch(cfg, 0, g).input.shape() == Shape{0, cfg.max_len + 1});
}

TEST_CASE("edit distance and exact match on hand-computed examples") {
  const std::vector<int64_t> kitten{'k', 'i', 't', 't', 'e', 'n'}, sitting{'s', 'i', 't', 't', 'i', 'n', 'g'};
  CHECK(edit_distance(kitten, sitting) == 3);
  CHECK(edit_distance(sitting, kitten) == 3);
  CHECK(edit_distance({}, std::vector<int64_t>{1, 2, 3}) == 3);
  CHECK(edit_distance(std::vector<int64_t>{1, 2, 3}, {}) == 3);
  CHECK(edit_distance(std::vector<int64_t>{1, 2, 3}, std::vector<int64_t>{1, 3}) == 1);
  CHECK(edit_distance(kitten, kitten) == 0);
  // [5, 3] -> [3, 5, 7]: insert 3 in front, then substitute the last 3 by 7.
  CHECK(normalized_edit_distance(std::vector<int64_t>{5, 3}, std::vector<int64_t>{3, 5, 7}) == doctest::Approx(2.0 / 3));
  CHECK(normalized_edit_distance(std::vector<int64_t>{1, 2}, {}) == 2.0);

  CHECK(strip_sort_row(std::vector<int64_t>{4, 3, kSortEos, 9, kSortPad}) == std::vector<int64_t>{4, 3});
  CHECK(strip_sort_row(std::vector<int64_t>{4, 3, 9}) == std::vector<int64_t>{4, 3, 9});

  // Row 0 exact; row 1 one substitution in 3; row 2 misses one of 2 tokens (pred narrower than target).
  Tensor pred = from_vector(std::vector<int64_t>{2, 3, 4, 1,  2, 2, 5, 1,  3, 1, 0, 0}, Shape{3, 4});
  Tensor target = from_vector(std::vector<int64_t>{2, 3, 4, 1, 0,  2, 3, 5, 1, 0,  3, 4, 1, 0, 0}, Shape{3, 5});
  SortMetrics m = sort_metrics(pred, target);
  CHECK(m.count == 3);
  CHECK(m.exact_match == doctest::Approx(1.0 / 3));
  CHECK(m.edit_distance == doctest::Approx((0.0 + 1.0 / 3 + 1.0 / 2) / 3));

  Generator g(5);
  SortBatch batch = make_sort_batch({20, 1, 10}, 50, g);
  SortMetrics perfect = sort_metrics(batch.target, batch.target);
  CHECK(perfect.exact_match == 1.0);
  CHECK(perfect.edit_distance == 0.0);
  SortMetrics identity = sort_metrics(batch.input, batch.target);  // the unsorted input as a "prediction"
  CHECK(identity.exact_match < 1.0);
  CHECK(identity.edit_distance > 0.0);

  CHECK_THROWS_AS(sort_metrics(pred, target.narrow(0, 0, 2)), ShapeError);
  CHECK_THROWS_AS(sort_metrics(pred.to(DType::f32), target), DTypeError);
  CHECK_THROWS_AS(sort_metrics(pred.flatten(), target), ShapeError);
}

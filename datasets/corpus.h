// Text corpora for character/byte-level language modelling (docs/datasets.md §2), and the batchers
// that turn a split's token ids into (input, target) pairs.
//
// Splits follow the enwik8 convention: contiguous train / val / test slices of the bytes, 90/5/5 by
// default, so no text leaks between them and the split is the same on every machine.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace attnlab {

struct TextCorpus {
  std::string train, val, test;
  std::string name;  // "kjv", or the file's stem for a path
  size_t total_bytes() const { return train.size() + val.size() + test.size(); }
};

struct SplitFractions {
  double train = 0.90, val = 0.05, test = 0.05;  // each in [0, 1], summing to 1
};

// The whole file, byte for byte. IOError names the path on a missing file, a directory or a read error.
std::string read_text_file(const std::string& path);

// Contiguous split: train = the first floor(f.train * n) bytes, val = the next floor(f.val * n),
// test = the rest. ValueError on fractions outside [0, 1] or not summing to 1.
TextCorpus split_text(const std::string& text, const std::string& name, const SplitFractions& f = {});

// read_text_file + split_text; the corpus is named after the file's stem.
TextCorpus load_text_corpus(const std::string& path, const SplitFractions& f = {});

// ---- KJV Bible (public domain), via the Debian package bible-kjv -------------------------------
// `bible -l100000 Gen1:1-Rev22:21` prints the 31,102 verses under "Genesis 1"-style headings.
// bible-kjv 4.38 (Debian bookworm) gives 4,298,239 bytes of pure ASCII with 73 distinct bytes
// (SHA-256 6f74f5589333c56c...aaae0b4a855eda). Other package versions may differ slightly;
// validate_kjv checks only the shape of the text, tests/test_text_data.cpp pins these numbers.
inline constexpr size_t kKjvExpectedBytes = 4298239;

// $XDG_CACHE_HOME/attnlab/kjv.txt, else $HOME/.cache/attnlab/kjv.txt, else <tmp>/attnlab-cache/kjv.txt.
std::string default_kjv_cache_path();

// The KJV text: read from cache_path ("" = the default) when that file exists, otherwise produced
// by running `program` (normally "bible", looked up on PATH) and written to cache_path for next
// time. IOError when the program is missing (telling you to apt-get install bible-kjv), fails,
// or the cache cannot be written; IOError when the cached or produced text fails validate_kjv.
std::string kjv_text(const std::string& cache_path = "", const std::string& program = "bible");

// Checks that text looks like the whole KJV: over 4,000,000 bytes, opening with the "Genesis 1"
// heading and Gen 1:1, ending with Rev 22:21. Throws IOError mentioning `where` (a path or a command).
void validate_kjv(const std::string& text, const std::string& where);

TextCorpus load_kjv(const std::string& cache_path = "", const SplitFractions& f = {});

// "kjv" -> load_kjv(); anything else is taken as the path of a plain text file. IOError for a path
// that does not exist names the known corpus names too, in case of a typo.
TextCorpus load_corpus(const std::string& name_or_path, const SplitFractions& f = {});

// ---- language-model batches --------------------------------------------------------------------
struct LMBatch {
  Tensor input;   // i64 [B, T]: tokens[s .. s+T)
  Tensor target;  // i64 [B, T]: tokens[s+1 .. s+T+1), the next token at every position
};

// Training batches from uniformly random windows (with replacement) of a token stream. Each batch
// draws exactly batch_size counters from the generator, so the whole stream is a function of
// (seed, stream, offset): checkpoint offset() and set_offset() it back to resume the same batches.
class LMBatcher {
 public:
  // tokens needs at least seq_len + 1 entries (ValueError otherwise, as for seq_len or batch_size <= 0).
  LMBatcher(std::vector<int64_t> tokens, int64_t seq_len, int64_t batch_size, Generator gen);
  // tokens: a 1-D i64 tensor (DTypeError / ShapeError otherwise); it is copied.
  LMBatcher(const Tensor& tokens, int64_t seq_len, int64_t batch_size, Generator gen);

  LMBatch next();

  uint64_t offset() const { return gen_.offset(); }
  void set_offset(uint64_t o) { gen_.set_offset(o); }
  const Generator& generator() const { return gen_; }

  int64_t seq_len() const { return seq_len_; }
  int64_t batch_size() const { return batch_; }
  int64_t num_tokens() const { return int64_t(tokens_.size()); }
  int64_t num_windows() const { return num_tokens() - seq_len_; }  // distinct start positions

 private:
  std::vector<int64_t> tokens_;
  int64_t seq_len_, batch_;
  Generator gen_;
};

// Evaluation batches: consecutive non-overlapping windows, so every token after the first is a
// target exactly once (n - 1 targets for n tokens). Full windows come batch_size at a time (the
// last full batch may have fewer rows); the leftover tail, shorter than seq_len, comes last as
// its own [1, rest] batch rather than padded, so losses need no mask.
class LMEvalBatches {
 public:
  // tokens needs at least 2 entries; ValueError for seq_len or batch_size <= 0.
  LMEvalBatches(std::vector<int64_t> tokens, int64_t seq_len, int64_t batch_size);
  LMEvalBatches(const Tensor& tokens, int64_t seq_len, int64_t batch_size);

  // Writes the next batch into out and returns true, or returns false at the end.
  bool next(LMBatch& out);
  void reset() { pos_ = 0; }

  int64_t num_targets() const { return int64_t(tokens_.size()) - 1; }
  int64_t num_batches() const;

 private:
  std::vector<int64_t> tokens_;
  int64_t seq_len_, batch_;
  int64_t pos_ = 0;  // start of the next window
};

}  // namespace attnlab

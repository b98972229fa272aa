// Tokenizers for the character/byte-level language models: text (bytes) <-> i64 token ids.
//
// ByteTokenizer is the identity on bytes (vocab 256): it needs no fitting and handles any input,
// including UTF-8 multi-byte sequences, which become several tokens. CharTokenizer numbers only
// the distinct bytes of a corpus (e.g. 73 for the KJV), which shrinks the softmax; it must be
// saved next to a model because the ids depend on the corpus it was built from.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace attnlab {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int64_t vocab_size() const = 0;
  // Throws ValueError naming the offending byte (CharTokenizer) ...
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // ... or the offending id, when it is outside [0, vocab_size()).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual std::string name() const = 0;  // "byte" or "char"
};

class ByteTokenizer final : public Tokenizer {
 public:
  int64_t vocab_size() const override { return 256; }
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string name() const override { return "byte"; }
};

class CharTokenizer final : public Tokenizer {
 public:
  CharTokenizer() { index_.fill(-1); }  // empty vocabulary: encodes only ""
  // symbols[i] is the byte with id i; must be strictly increasing (ValueError otherwise).
  explicit CharTokenizer(std::vector<uint8_t> symbols);
  // The sorted distinct bytes of text; ValueError if text is empty.
  static CharTokenizer from_corpus(std::string_view text);

  int64_t vocab_size() const override { return int64_t(symbols_.size()); }
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string name() const override { return "char"; }

  const std::vector<uint8_t>& symbols() const { return symbols_; }
  bool contains(uint8_t byte) const { return index_[byte] >= 0; }

  // JSON file: {"tokenizer": "char", "version": 1, "symbols": [10, 32, ...]}. Bytes are stored as
  // numbers, not a string, because a vocabulary may hold bytes that are not valid UTF-8 alone.
  void save(const std::string& path) const;            // atomically (never half-written); IOError on failure
  static CharTokenizer load(const std::string& path);  // IOError on a missing/unreadable/malformed file

 private:
  std::vector<uint8_t> symbols_;    // id -> byte
  std::array<int32_t, 256> index_;  // byte -> id, or -1 when the byte is not in the vocabulary
};

// nlohmann_json hooks (found by ADL), so a tokenizer can sit inside a larger checkpoint JSON.
// from_json throws ValueError on a wrong "tokenizer" tag, version or symbol list.
void to_json(nlohmann::json& j, const CharTokenizer& tok);
void from_json(const nlohmann::json& j, CharTokenizer& tok);

// Either kind as JSON, so a run can record which one its ids belong to: CharTokenizer's object above,
// or {"tokenizer": "byte", "version": 1}. from_json throws ValueError on an unknown or malformed one.
nlohmann::json tokenizer_to_json(const Tokenizer& tok);
std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j);

}  // namespace attnlab

#include "datasets/tokenizer.h"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safetensors.h"

namespace attnlab {
namespace {

// "0x0a" plus the character itself when printable, so messages show what is actually wrong.
std::string byte_str(uint8_t b) {
  static const char* hex = "0123456789abcdef";
  std::string s = {'0', 'x', hex[b >> 4], hex[b & 15]};
  if (std::isprint(b)) s += std::string(" ('") + char(b) + "')";
  return s;
}

void check_id(const char* op, int64_t id, size_t i, int64_t vocab) {
  if (id < 0 || id >= vocab) fail<ValueError>(op, "id ", id, " at position ", i, " is outside [0, ", vocab, ")");
}

}  // namespace

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = int64_t(uint8_t(text[i]));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string s(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    check_id("ByteTokenizer::decode", ids[i], i, 256);
    s[i] = char(uint8_t(ids[i]));
  }
  return s;
}

CharTokenizer::CharTokenizer(std::vector<uint8_t> symbols) : symbols_(std::move(symbols)) {
  index_.fill(-1);
  for (size_t i = 0; i < symbols_.size(); ++i) {
    if (i > 0 && symbols_[i] <= symbols_[i - 1])
      fail<ValueError>("CharTokenizer", "symbols must be strictly increasing, but byte ", byte_str(symbols_[i]),
                       " at id ", i, " follows ", byte_str(symbols_[i - 1]));
    index_[symbols_[i]] = int32_t(i);
  }
}

CharTokenizer CharTokenizer::from_corpus(std::string_view text) {
  if (text.empty()) fail<ValueError>("CharTokenizer::from_corpus", "the corpus is empty");
  std::array<bool, 256> seen{};
  for (char c : text) seen[uint8_t(c)] = true;
  std::vector<uint8_t> symbols;
  for (int b = 0; b < 256; ++b)
    if (seen[size_t(b)]) symbols.push_back(uint8_t(b));
  return CharTokenizer(std::move(symbols));
}

std::vector<int64_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const uint8_t b = uint8_t(text[i]);
    if (index_[b] < 0)
      fail<ValueError>("CharTokenizer::encode", "byte ", byte_str(b), " at position ", i, " is not in the vocabulary (",
                       symbols_.size(), " symbols from the corpus it was built on)");
    ids[i] = index_[b];
  }
  return ids;
}

std::string CharTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string s(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    check_id("CharTokenizer::decode", ids[i], i, vocab_size());
    s[i] = char(symbols_[size_t(ids[i])]);
  }
  return s;
}

void to_json(nlohmann::json& j, const CharTokenizer& tok) {
  j = nlohmann::json{{"tokenizer", "char"}, {"version", 1}, {"symbols", tok.symbols()}};
}

void from_json(const nlohmann::json& j, CharTokenizer& tok) {
  const char* op = "CharTokenizer from_json";
  if (!j.is_object()) fail<ValueError>(op, "expected an object, got ", j.type_name());
  const auto tag = j.find("tokenizer"), version = j.find("version");
  if (tag == j.end() || *tag != "char")
    fail<ValueError>(op, "expected \"tokenizer\": \"char\", got ", tag == j.end() ? "no tag" : tag->dump());
  if (version == j.end() || *version != 1)
    fail<ValueError>(op, "unsupported version ", version == j.end() ? "(none)" : version->dump(), " (expected 1)");
  const auto it = j.find("symbols");
  if (it == j.end() || !it->is_array()) fail<ValueError>(op, "\"symbols\" must be an array of byte values");
  std::vector<uint8_t> symbols;
  for (const auto& v : *it) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 255)
      fail<ValueError>(op, "symbol ", v.dump(), " is not a byte value in [0, 255]");
    symbols.push_back(uint8_t(v.get<int64_t>()));
  }
  tok = CharTokenizer(std::move(symbols));
}

void CharTokenizer::save(const std::string& path) const {
  write_file_atomic(path, nlohmann::json(*this).dump(1) + "\n", "CharTokenizer::save");
}

nlohmann::json tokenizer_to_json(const Tokenizer& tok) {
  if (auto* c = dynamic_cast<const CharTokenizer*>(&tok)) return *c;
  return {{"tokenizer", tok.name()}, {"version", 1}};
}

std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j) {
  if (j.is_object() && j.value("tokenizer", nlohmann::json()) == "byte") {
    if (j.size() != 2 || j.value("version", nlohmann::json()) != 1)
      fail<ValueError>("tokenizer_from_json", "expected {\"tokenizer\": \"byte\", \"version\": 1}, got ", j.dump());
    return std::make_unique<ByteTokenizer>();
  }
  return std::make_unique<CharTokenizer>(j.get<CharTokenizer>());
}

CharTokenizer CharTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<IOError>("CharTokenizer::load", "cannot open '", path, "' (", std::strerror(errno), ")");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail<IOError>("CharTokenizer::load", "'", path, "' is not valid JSON: ", e.what());
  }
  try {
    return j.get<CharTokenizer>();
  } catch (const ValueError& e) {
    fail<IOError>("CharTokenizer::load", "'", path, "': ", e.what());
  }
}

}  // namespace attnlab

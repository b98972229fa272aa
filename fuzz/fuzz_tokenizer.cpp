// CharTokenizer::load (datasets/tokenizer.h), the run directory's tokenizer.json: a tokenizer it
// accepts must round-trip every id it knows.
#include <numeric>

#include "datasets/tokenizer.h"
#include "fuzz/harness.h"

using namespace attnlab;

ATTNLAB_FUZZ_TARGET(tokenizer) {
  CharTokenizer tok = CharTokenizer::load(fuzz::write_input("tokenizer.json", data, size));
  std::vector<int64_t> ids(size_t(tok.vocab_size()));
  std::iota(ids.begin(), ids.end(), int64_t(0));
  fuzz::check(tok.encode(tok.decode(ids)) == ids, "decode then encode gives the ids back");
}

#include "tools/run_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "autograd/grad_mode.h"
#include "datasets/corpus.h"
#include "layers/functional.h"

namespace attnlab {

namespace fs = std::filesystem;

std::string run_checkpoint_prefix(const std::string& dir) { return dir + "/checkpoint"; }

std::unique_ptr<Tokenizer> load_checkpoint_tokenizer(const std::string& prefix) {
  const std::string text = read_attached_file(prefix, "tokenizer");
  try {
    return tokenizer_from_json(nlohmann::json::parse(text));
  } catch (const nlohmann::json::exception& e) {
    fail<IOError>("load_checkpoint", prefix, ".json: its tokenizer file is not valid JSON: ", e.what());
  } catch (const ValueError& e) {
    fail<IOError>("load_checkpoint", prefix, ".json: its tokenizer file: ", e.what());
  }
}

void check_vocab_size(const Tokenizer& tok, const ModelConfig& model) {
  if (tok.vocab_size() > model.vocab_size)
    fail<ValueError>("train config", "model.vocab_size is ", model.vocab_size, " but the ", tok.name(),
                     " tokenizer has ", tok.vocab_size(), " symbols; it must be at least that");
}

namespace {
// The config the checkpoint was trained with, so edits to DIR/config.json cannot change what is loaded.
TrainConfig recorded_config(const std::string& prefix, const std::string& dir) {
  try {
    TrainConfig c = TrainConfig::from_json(read_checkpoint_info(prefix).config);
    c.out_dir = dir;
    return c;
  } catch (const IOError&) {
    throw;
  } catch (const Error& e) {
    fail<IOError>("load_run", prefix, ".json: the config it records is not a valid training config (", e.what(), ")");
  }
}
}  // namespace

LoadedRun load_run(const std::string& dir) {
  const std::string prefix = run_checkpoint_prefix(dir);
  if (!fs::exists(prefix + ".json"))
    fail<IOError>("load_run", dir, " holds no checkpoint (", prefix, ".json is missing)");
  LoadedRun run;
  run.config = recorded_config(prefix, dir);
  if (run.config.model.num_classes > 0) {
    run.classifier = std::make_unique<SequenceClassifier>(run.config.model);
    run.step = load_checkpoint(prefix, *run.classifier, nullptr).step;
    run.classifier->eval();
    return run;
  }
  if (!run.config.data.sort()) {  // the sort task's ids are its own: no tokenizer
    run.tokenizer = load_checkpoint_tokenizer(prefix);
    check_vocab_size(*run.tokenizer, run.config.model);
  }
  run.model = std::make_unique<CausalLM>(run.config.model);
  run.step = load_checkpoint(prefix, *run.model, nullptr).step;
  run.model->eval();
  return run;
}

EvalResult evaluate_lm(CausalLM& model, std::vector<int64_t> tokens, const DataConfig& data, int64_t max_tokens) {
  if (max_tokens > 0 && int64_t(tokens.size()) > max_tokens + 1) tokens.resize(size_t(max_tokens + 1));
  LMEvalBatches batches(std::move(tokens), data.seq_len, data.batch_size);
  NoGradGuard ng;
  model.eval();
  double total = 0;
  int64_t count = 0;
  LMBatch b;
  while (batches.next(b)) {
    int64_t n = b.target.numel();
    total += model.loss(b.input, b.target).item<double>() * double(n);
    count += n;
  }
  EvalResult r;
  r.tokens = count;
  r.loss = count ? total / double(count) : 0;
  r.bpc = bits_per_character(r.loss);
  return r;
}

EvalResult evaluate_run(LoadedRun& run, const std::string& split, int64_t max_tokens) {
  if (split != "val" && split != "test") fail<ValueError>("eval", "the split must be val or test, got '", split, "'");
  if (!run.model) fail<ValueError>("eval", run.config.out_dir, " holds a classifier run, not a language model");
  if (!run.tokenizer) fail<ValueError>("eval", "a sort-task run has no text splits (see evaluate_sort)");
  TextCorpus corpus = load_corpus(run.config.data.corpus);
  return evaluate_lm(*run.model, run.tokenizer->encode(split == "val" ? corpus.val : corpus.test), run.config.data,
                     max_tokens);
}

int64_t cut_metrics_to_checkpoint(const std::string& path, int64_t rows, int64_t step) {
  const char* op = "train --resume";
  std::error_code ec;
  if (!fs::exists(path, ec)) return 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail<IOError>(op, "cannot open ", path, ": ", std::strerror(errno));
  // The byte offset just past the rows-th newline.
  uint64_t end = 0, offset = 0;
  int64_t found = 0;
  std::vector<char> buf(1 << 16);
  while (found < rows) {
    in.read(buf.data(), std::streamsize(buf.size()));
    const auto n = size_t(in.gcount());
    if (n == 0) break;
    for (size_t i = 0; i < n && found < rows; ++i)
      if (buf[i] == '\n') ++found, end = offset + i + 1;
    offset += n;
  }
  if (in.bad()) fail<IOError>(op, "reading ", path, " failed");
  if (found < rows)
    fail<IOError>(op, path, " holds ", found, " complete rows but the checkpoint at step ", step, " commits to ", rows,
                  ": it was cut short or edited, and resuming would lose rows (restore it, or move it aside to resume "
                  "with a new one)");
  in.close();
  const uint64_t size = fs::file_size(path, ec);
  if (!ec && size > end) fs::resize_file(path, end, ec);
  if (ec) fail<IOError>(op, "cannot cut ", path, " back to the checkpoint's ", rows, " rows: ", ec.message());
  return rows;
}

void sync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail<IOError>("sync_file", "cannot open ", path, ": ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) fail<IOError>("sync_file", "syncing ", path, " failed: ", std::strerror(err));
}

}  // namespace attnlab

// attnlab sample --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/lm_sample.h"
#include "tools/run_dir.h"

using namespace attnlab;

static const char* kUsage =
    "usage: attnlab sample --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]\n"
    "  Generates N tokens (default 200) after the prompt from DIR's checkpoint, sampling from\n"
    "  softmax(logits / T) (default T = 0.8) restricted to the K most likely tokens (0 = all).\n";

int main(int argc, char** argv) {
  return cli::run_cli("attnlab sample", kUsage, [&] {
    cli::Args args(argc, argv, {"run", "prompt", "length", "temperature", "top-k", "seed"}, {});
    if (args.flag("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (!args.has("run")) throw cli::UsageError("--run is required");
    const std::string dir = args.str("run");
    const int64_t length = int64_t(args.num("length", 200));
    const double temperature = args.num("temperature", 0.8);
    const int64_t top_k = int64_t(args.num("top-k", 0));
    if (length < 0 || !(temperature > 0) || top_k < 0)
      throw cli::UsageError("--length and --top-k must be >= 0 and --temperature > 0");
    LoadedRun run = load_run(dir);
    auto& tok = run.tokenizer;
    std::vector<int64_t> ids = tok->encode(args.str("prompt", "\n"));
    if (ids.empty()) ids.push_back(0);
    Generator gen(uint64_t(args.num("seed", 0)), 11);
    SampleOptions opts;
    opts.length = length;
    opts.temperature = temperature;
    opts.top_k = top_k;
    opts.vocab_limit = tok->vocab_size();  // the model's vocabulary may be larger
    std::cout << args.str("prompt", "");
    generate(*run.model, ids, opts, gen, [&](int64_t id) { std::cout << tok->decode({id}) << std::flush; });
    std::cout << "\n";
    return 0;
  });
}

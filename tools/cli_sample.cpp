// attnlab sample --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/lm_sample.h"
#include "tools/run_dir.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd(
      "attnlab sample",
      "usage: attnlab sample --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]\n",
      "  Generates N tokens (default 200) after the prompt from DIR's checkpoint, sampling from\n"
      "  softmax(logits / T) (default T = 0.8) restricted to the K most likely tokens (0 = all).");
  std::string dir, prompt = "\n";
  int64_t length = 200, top_k = 0, seed = 0;
  double temperature = 0.8;
  cmd.text("--run", dir, "the run directory")->type_name("DIR")->required();
  cmd.text("--prompt", prompt, "the text to continue (default: a newline)");
  cmd.integer("--length", length, 0, int64_t(1) << 30, "tokens to generate (default 200)");
  cmd.number("--temperature", temperature, NumberRange::above(0), "sampling temperature (default 0.8)")->type_name("T");
  cmd.integer("--top-k", top_k, 0, std::numeric_limits<int64_t>::max(),
              "sample from the K most likely tokens (default 0: all)")
      ->type_name("K");
  cmd.integer("--seed", seed, 0, std::numeric_limits<int64_t>::max(), "sampling seed (default 0)")->type_name("S");
  return cmd.run(argc, argv, [&] {
    LoadedRun run = load_run(dir);
    if (!run.model) fail<ValueError>("sample", dir, " holds an image classifier run: sample needs a language model");
    if (!run.tokenizer) fail<ValueError>("sample", dir, " holds a sort-task run: use attnlab eval for its decodes");
    auto& tok = run.tokenizer;
    std::vector<int64_t> ids = tok->encode(prompt);
    if (ids.empty()) ids.push_back(0);
    Generator gen(uint64_t(seed), 11);
    SampleOptions opts;
    opts.length = length;
    opts.temperature = temperature;
    opts.top_k = top_k;
    opts.vocab_limit = tok->vocab_size();  // the model's vocabulary may be larger
    std::cout << (cmd.given("--prompt") ? prompt : "");
    generate(*run.model, ids, opts, gen, [&](int64_t id) { std::cout << tok->decode({id}) << std::flush; });
    std::cout << "\n";
    return 0;
  });
}

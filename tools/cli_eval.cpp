// attnlab eval --run DIR [--split val|test] [--tokens N]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/run_dir.h"

using namespace attnlab;

int main(int argc, char** argv) {
  cli::Command cmd("attnlab eval", "usage: attnlab eval --run DIR [--split val|test] [--tokens N]\n",
                   "  Loads DIR's checkpoint and reports loss (nats/token) and bits per character on a split\n"
                   "  (all of it unless --tokens limits it).");
  std::string run_dir, split = "test";
  int64_t tokens = 0;
  cmd.text("--run", run_dir, "the run directory")->type_name("DIR")->required();
  cmd.choice("--split", split, {"val", "test"}, "the split to evaluate (default test)");
  cmd.integer("--tokens", tokens, 0, kMaxTokens, "evaluate the first N tokens of the split (default 0: all)");
  return cmd.run(argc, argv, [&] {
    LoadedRun run = load_run(run_dir);
    EvalResult r = evaluate_run(run, split, tokens);
    std::cout << split << ": loss " << r.loss << " nats/token, " << r.bpc << " bpc over " << r.tokens
              << " tokens (step " << run.step << ")\n";
    return 0;
  });
}

// attnlab eval --run DIR [--split val|test] [--tokens N]
#include <iostream>

#include "tools/cli_common.h"
#include "tools/run_dir.h"

using namespace attnlab;

static const char* kUsage =
    "usage: attnlab eval --run DIR [--split val|test] [--tokens N]\n"
    "  Loads DIR's checkpoint and reports loss (nats/token) and bits per character on a split\n"
    "  (all of it unless --tokens limits it).\n";

int main(int argc, char** argv) {
  return cli::run_cli("attnlab eval", kUsage, [&] {
    cli::Args args(argc, argv, {"run", "split", "tokens"}, {});
    if (args.flag("help")) {
      std::cout << kUsage;
      return 0;
    }
    if (!args.has("run")) throw cli::UsageError("--run is required");
    std::string split = args.str("split", "test");
    if (split != "val" && split != "test") throw cli::UsageError("--split must be val or test");
    LoadedRun run = load_run(args.str("run"));
    EvalResult r = evaluate_run(run, split, int64_t(args.num("tokens", 0)));
    std::cout << split << ": loss " << r.loss << " nats/token, " << r.bpc << " bpc over " << r.tokens
              << " tokens (step " << run.step << ")\n";
    return 0;
  });
}

// attnlab sample --run DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]
#include <cmath>
#include <iostream>

#include "autograd/grad_mode.h"
#include "layers/checkpoint.h"
#include "tools/cli_common.h"
#include "tools/lm_trainer.h"

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
    TrainConfig cfg = TrainConfig::from_file(dir + "/config.json");
    CausalLM model(cfg.model);
    load_checkpoint(dir + "/checkpoint", model, nullptr);
    model.eval();
    auto tok = load_tokenizer(dir);
    std::vector<int64_t> ids = tok->encode(args.str("prompt", "\n"));
    if (ids.empty()) ids.push_back(0);
    Generator gen(uint64_t(args.num("seed", 0)), 11);
    NoGradGuard ng;
    std::cout << args.str("prompt", "");
    for (int64_t i = 0; i < length; ++i) {
      // The last max_len tokens as context (no KV cache: each step reruns the window).
      int64_t start = std::max<int64_t>(0, int64_t(ids.size()) - cfg.model.max_len);
      std::vector<int64_t> ctx(ids.begin() + start, ids.end());
      Tensor logits = model.forward(from_vector(ctx, {1, int64_t(ctx.size())}));
      std::vector<double> l = logits.select(1, -1).to_vector<double>();
      std::vector<double> sorted = l;
      std::sort(sorted.rbegin(), sorted.rend());
      double cutoff = top_k > 0 && top_k < int64_t(l.size()) ? sorted[size_t(top_k - 1)] : -INFINITY;
      double mx = sorted[0], total = 0;
      std::vector<double> p(l.size(), 0.0);
      for (size_t j = 0; j < l.size(); ++j)
        if (l[j] >= cutoff) total += p[j] = std::exp((l[j] - mx) / temperature);
      double u = rand({}, DType::f64, &gen).item<double>() * total;
      int64_t next = 0;
      for (size_t j = 0; j < p.size(); ++j) {
        u -= p[j];
        if (u <= 0 && p[j] > 0) {
          next = int64_t(j);
          break;
        }
        if (p[j] > 0) next = int64_t(j);
      }
      ids.push_back(next);
      std::cout << tok->decode({next}) << std::flush;
    }
    std::cout << "\n";
    return 0;
  });
}

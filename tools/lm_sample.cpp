#include "tools/lm_sample.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"

namespace attnlab {

int64_t sample_logits(const std::vector<double>& logits, double temperature, int64_t top_k, double u) {
  if (logits.empty()) fail<ValueError>("sample", "no logits to sample from");
  if (!(temperature > 0)) fail<ValueError>("sample", "temperature must be positive, got ", temperature);
  std::vector<double> sorted = logits;
  std::sort(sorted.rbegin(), sorted.rend());
  const double cutoff = top_k > 0 && top_k < int64_t(sorted.size()) ? sorted[size_t(top_k - 1)] : -INFINITY;
  const double mx = sorted[0];
  std::vector<double> p(logits.size(), 0.0);
  double total = 0;
  for (size_t j = 0; j < logits.size(); ++j)
    if (logits[j] >= cutoff) total += p[j] = std::exp((logits[j] - mx) / temperature);
  double target = u * total;
  int64_t last = 0;
  for (size_t j = 0; j < p.size(); ++j) {
    if (p[j] == 0) continue;
    last = int64_t(j);
    target -= p[j];
    if (target <= 0) return last;
  }
  return last;  // rounding left a sliver: the last candidate
}

std::vector<int64_t> generate(const CausalLM& model, std::vector<int64_t> prompt, const SampleOptions& opts,
                              Generator& gen, const std::function<void(int64_t)>& on_token) {
  if (prompt.empty()) fail<ValueError>("generate", "needs a non-empty prompt");
  if (opts.length < 0 || opts.top_k < 0)
    fail<ValueError>("generate", "length and top_k must be >= 0, got ", opts.length, " and ", opts.top_k);
  const int64_t vocab = model.config().vocab_size;
  if (opts.vocab_limit < 0 || opts.vocab_limit > vocab)
    fail<ValueError>("generate", "vocab_limit must be in [0, ", vocab, "] (the model's vocab_size), got ",
                     opts.vocab_limit);
  const int64_t candidates = opts.vocab_limit > 0 ? opts.vocab_limit : vocab;
  NoGradGuard ng;
  const int64_t max_len = model.config().max_len;
  std::vector<int64_t> ids = std::move(prompt);
  for (int64_t i = 0; i < opts.length; ++i) {
    const int64_t start = std::max<int64_t>(0, int64_t(ids.size()) - max_len);
    std::vector<int64_t> ctx(ids.begin() + start, ids.end());
    Tensor logits = model.forward(from_vector(ctx, {1, int64_t(ctx.size())}));
    const double u = rand({}, DType::f64, &gen).item<double>();
    std::vector<double> last = logits.select(1, -1).select(0, 0).to_vector<double>();
    last.resize(size_t(candidates));
    const int64_t next = sample_logits(last, opts.temperature, opts.top_k, u);
    ids.push_back(next);
    if (on_token) on_token(next);
  }
  return ids;
}

}  // namespace attnlab

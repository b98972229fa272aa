// Text generation from a causal LM: temperature and top-k sampling with a seeded generator.
#pragma once
#include <vector>

#include "core/rng.h"
#include "layers/transformer.h"

namespace attnlab {

struct SampleOptions {
  int64_t length = 200;      // tokens to generate
  double temperature = 0.8;  // > 0; logits are divided by it
  int64_t top_k = 0;         // keep the k most likely tokens (0: all)
  int64_t vocab_limit = 0;   // > 0: sample only ids below it, the tokenizer's size when the model's
                             // vocabulary is larger (ids beyond it have no text)
};

// Returns `prompt` followed by `length` sampled tokens. The context fed to the model is the last
// max_len tokens (no KV cache: each step reruns the window). on_token, if given, sees each new id.
std::vector<int64_t> generate(const CausalLM& model, std::vector<int64_t> prompt, const SampleOptions& opts,
                              Generator& gen, const std::function<void(int64_t)>& on_token = {});

// Draws an index from softmax(logits / temperature) restricted to the top_k largest logits.
int64_t sample_logits(const std::vector<double>& logits, double temperature, int64_t top_k, double uniform01);

}  // namespace attnlab

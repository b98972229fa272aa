// attnlab-mlp: trains a 784-256-10 ReLU MLP on real Fashion-MNIST with attnlab's own autograd and
// SGD + momentum, printing the falling train loss and throughput, then the test accuracy.
// Everything is built from library ops; no layer classes, so the whole model is visible here.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "datasets/batches.h"
#include "datasets/fashion_mnist.h"
#include "optim/sgd.h"
#include "tools/cli_common.h"

namespace attnlab {
namespace {

struct Options {
  int64_t steps = 0;  // 0: run `epochs` full epochs
  int64_t epochs = 3;
  int64_t batch = 128;
  double lr = 0.02;
  double momentum = 0.9;
  int64_t seed = 0;
  int64_t log_every = 50;
  std::string data_dir = kFashionMnistDir;
};

// Declares the flags on cmd, writing into o.
void add_options(cli::Command& cmd, Options& o) {
  cmd.integer("--steps", o.steps, 1, 1'000'000'000, "number of SGD steps (default: --epochs full epochs)");
  cmd.integer("--epochs", o.epochs, 1, 10'000,
              "full passes over the 60k training images when --steps is not given (default 3)");
  cmd.integer("--batch", o.batch, 1, 60'000, "minibatch size (default 128)");
  cmd.number("--lr", o.lr, NumberRange::above(0), "learning rate (default 0.02)");
  cmd.integer("--seed", o.seed, 0, INT64_MAX, "seed for the initial weights and the shuffling (default 0)");
  cmd.integer("--log-every", o.log_every, 1, 1'000'000'000, "print a progress line every N steps (default 50)");
  cmd.text("--data-dir", o.data_dir, std::string("directory with the IDX files (default ") + kFashionMnistDir + ")")
      ->type_name("DIR")
      ->check([](const std::string& d) { return d.empty() ? std::string("expected a directory") : std::string(); });
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- model -----------------------------------------------------------------------------------

// Kaiming-normal weights (std sqrt(2 / fan_in), right for ReLU), zero biases; all leaves with grad.
Tensor kaiming(int64_t fan_in, int64_t fan_out, Generator& g) {
  Tensor w = randn({fan_in, fan_out}, DType::f32, &g) * std::sqrt(2.0 / double(fan_in));
  return w.set_requires_grad(true);
}
Tensor zero_bias(int64_t n) { return zeros({n}).set_requires_grad(true); }

struct Mlp {
  Tensor w1, b1, w2, b2;
  Mlp(int64_t in, int64_t hidden, int64_t out, Generator& g)
      : w1(kaiming(in, hidden, g)), b1(zero_bias(hidden)), w2(kaiming(hidden, out, g)), b2(zero_bias(out)) {}
  std::vector<Tensor> params() const { return {w1, b1, w2, b2}; }
  int64_t num_params() const { return w1.numel() + b1.numel() + w2.numel() + b2.numel(); }
  // x [B, 784] -> logits [B, 10]
  Tensor forward(const Tensor& x) const { return add(matmul(relu(add(matmul(x, w1), b1)), w2), b2); }
};

// Mean negative log-likelihood of the true class: -mean(log_softmax(logits)[i, y_i]).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  return neg(mean(gather(log_softmax(logits, 1), 1, labels.unsqueeze(1))));
}

// Fraction of rows whose arg-max logit is the label; chunked so memory stays small.
double accuracy(const Mlp& model, const ImageClassificationSet& set) {
  NoGradGuard no_grad;
  const int64_t n = set.size(), chunk = 1000;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += chunk) {
    int64_t len = std::min(chunk, n - start);
    std::vector<int64_t> pred = argmax(model.forward(set.images.narrow(0, start, len)), 1).to_vector<int64_t>();
    std::vector<int64_t> truth = set.labels.narrow(0, start, len).to_vector<int64_t>();
    for (int64_t i = 0; i < len; ++i) correct += pred[size_t(i)] == truth[size_t(i)];
  }
  return n ? double(correct) / double(n) : 0.0;
}

// ---- training --------------------------------------------------------------------------------

int train(const Options& opt) {
  auto t_start = std::chrono::steady_clock::now();

  ImageClassificationSet train = load_fashion_mnist(opt.data_dir, true);
  ImageClassificationSet test = load_fashion_mnist(opt.data_dir, false);
  const double load_s = seconds_since(t_start);
  const int64_t n = train.size(), in = train.images.size(1), classes = int64_t(train.class_names.size());
  const int64_t steps_per_epoch = (n + opt.batch - 1) / opt.batch;
  const int64_t total_steps = opt.steps > 0 ? opt.steps : opt.epochs * steps_per_epoch;

  Generator init_gen(uint64_t(opt.seed), /*stream=*/0), shuffle_gen(uint64_t(opt.seed), /*stream=*/1);
  Mlp model(in, 256, classes, init_gen);
  SGD sgd(model.params(), {.lr = opt.lr, .momentum = opt.momentum});

  std::printf(
      "data: Fashion-MNIST %lld train / %lld test images, %lld features in [0,1], %lld classes "
      "(loaded in %.1f s) | model: MLP %lld-256-%lld ReLU, %lld params | SGD lr %g momentum %g, "
      "batch %lld, %lld steps (%.2f epochs), seed %llu\n",
      (long long)n, (long long)test.size(), (long long)in, (long long)classes, load_s, (long long)in,
      (long long)classes, (long long)model.num_params(), opt.lr, opt.momentum, (long long)opt.batch,
      (long long)total_steps, double(total_steps) / double(steps_per_epoch), (unsigned long long)opt.seed);
  std::fflush(stdout);

  auto t_train = std::chrono::steady_clock::now(), t_window = t_train;
  double window_loss = 0.0;
  int64_t window_steps = 0, window_examples = 0, total_examples = 0;
  std::vector<Tensor> plan;
  size_t next_batch = 0;
  for (int64_t step = 1; step <= total_steps; ++step) {
    if (next_batch == plan.size()) {  // a new epoch: a fresh shuffle
      plan = shuffled_batches(n, opt.batch, shuffle_gen);
      next_batch = 0;
    }
    const Tensor& idx = plan[next_batch++];
    Tensor x = index_select(train.images, 0, idx), y = index_select(train.labels, 0, idx);

    Tensor loss = cross_entropy(model.forward(x), y);
    sgd.zero_grad();
    loss.backward();
    sgd.step();

    double l = loss.item_double();
    if (!std::isfinite(l)) {
      std::fprintf(stderr, "attnlab-mlp: loss became %g at step %lld; try a smaller --lr\n", l, (long long)step);
      return 1;
    }
    window_loss += l;
    window_steps++;
    window_examples += idx.numel();
    total_examples += idx.numel();
    if (step % opt.log_every == 0 || step == total_steps) {
      double dt = seconds_since(t_window);
      std::printf("step %5lld/%lld | epoch %5.2f | train loss %.4f (mean of last %lld) | %6.0f examples/s\n",
                  (long long)step, (long long)total_steps, double(step) / double(steps_per_epoch),
                  window_loss / double(window_steps), (long long)window_steps, double(window_examples) / dt);
      std::fflush(stdout);
      window_loss = 0.0;
      window_steps = window_examples = 0;
      t_window = std::chrono::steady_clock::now();
    }
  }
  const double train_s = seconds_since(t_train);

  auto t_eval = std::chrono::steady_clock::now();
  const double test_acc = accuracy(model, test);
  std::printf("test accuracy %.2f%% (%lld images) | train %.1f s (%.0f examples/s), eval %.2f s, total %.1f s\n",
              100.0 * test_acc, (long long)test.size(), train_s, double(total_examples) / train_s,
              seconds_since(t_eval), seconds_since(t_start));
  return 0;
}

}  // namespace
}  // namespace attnlab

int main(int argc, char** argv) {
  attnlab::cli::Command cmd(
      "attnlab mlp", "usage: attnlab mlp [options]      (also: tools/attnlab demo mlp ...)\n",
      "Trains a 784-256-10 ReLU MLP on Fashion-MNIST (Debian package dataset-fashion-mnist) with\n"
      "attnlab autograd and SGD + momentum 0.9, then reports the test accuracy (about 85%+).");
  attnlab::Options opt;
  attnlab::add_options(cmd, opt);
  return cmd.run(argc, argv, [&] { return attnlab::train(opt); });
}

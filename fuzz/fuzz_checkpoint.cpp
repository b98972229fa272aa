// The checkpoint sidecar (layers/checkpoint.h) as `train --resume`, eval and sample read it. The
// input is ckpt.json, beside the weight files of a checkpoint saved once at start-up (exact values,
// so their sizes and CRCs are the same in every build): a sidecar that keeps the recorded names,
// sizes and CRCs reaches the optimizer's load_state and the model config, as the committed seed
// fuzz/corpus/checkpoint/valid-sidecar.json does. Set ATTNLAB_FUZZ_SEED_OUT=<file> to write that seed
// again (after a change to the checkpoint format).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "autograd/grad_mode.h"
#include "fuzz/harness.h"
#include "layers/checkpoint.h"
#include "layers/transformer.h"
#include "optim/adam.h"

using namespace attnlab;

namespace {

struct Trainee {
  Generator gen{0};
  Linear model{3, 2, true, gen};
  Adam opt{model.parameters(), adamw_options(1e-3)};
};

// Small multiples of a power of two: the same bits whatever the compiler and target.
Tensor exact(const Shape& s, float scale, int lo) {
  std::vector<float> v(size_t(shape_numel(s)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * float(int(i % 5) + lo);
  return from_vector(v, s);
}

const std::string& prefix() {
  static const std::string p = [] {
    const std::string dir = fuzz::scratch_dir() + "/checkpoint";
    std::filesystem::create_directories(dir);
    Trainee t;
    StateDict moments;
    for (size_t i = 0; i < t.opt.params().size(); ++i) {
      Tensor param = t.opt.params()[i];  // a handle: copy_ writes the parameter
      NoGradGuard ng;
      param.copy_(exact(param.shape(), 0.25f, -2));
      moments[std::to_string(i) + ".exp_avg"] = exact(param.shape(), 0.125f, -2);
      moments[std::to_string(i) + ".exp_avg_sq"] = exact(param.shape(), 0.0625f, 0);
    }
    nlohmann::json scalars = t.opt.state_json();
    scalars["step"] = 7;
    scalars["stateful_params"] = {0, 1};  // both parameters have moments
    t.opt.load_state(moments, scalars);
    CheckpointState st;
    st.step = 7;
    st.config = ModelConfig::from_json({{"vocab_size", 11}, {"d_model", 8}, {"n_layers", 1}, {"n_heads", 2}}).to_json();
    st.rng = {{"batcher_offset", 0}, {"dropout_offset", 0}};
    st.extra = {{"train_seconds", 1.5}};
    save_checkpoint(dir + "/ckpt", t.model, &t.opt, st);
    if (const char* out = std::getenv("ATTNLAB_FUZZ_SEED_OUT"))
      std::filesystem::copy_file(dir + "/ckpt.json", out, std::filesystem::copy_options::overwrite_existing);
    return dir + "/ckpt";
  }();
  return p;
}

}  // namespace

ATTNLAB_FUZZ_TARGET(checkpoint) {
  const std::string& pre = prefix();
  fuzz::write_input("checkpoint/ckpt.json", data, size);
  CheckpointState info = read_checkpoint_info(pre);
  Trainee t;
  CheckpointState st = load_checkpoint(pre, t.model, &t.opt);
  fuzz::check(st.step == info.step, "load_checkpoint and read_checkpoint_info agree on the step");
  if (!st.config.is_null()) ModelConfig::from_json(st.config);  // what eval and sample build the model from
  t.model.weight.set_grad(ones({2, 3}));
  t.opt.step();  // Adam's bias correction at the loaded step
}

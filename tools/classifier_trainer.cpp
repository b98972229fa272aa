#include "tools/classifier_trainer.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "autograd/grad_mode.h"
#include "layers/functional.h"
#include "tools/lm_trainer.h"
#include "tools/sort_trainer.h"

namespace attnlab {

ImageSplits load_image_splits(const TrainConfig& cfg) {
  const DataConfig& d = cfg.data;
  if (d.dataset == "fashion_mnist") {
    const std::string dir = d.dir.empty() ? kFashionMnistDir : d.dir;
    return split_images("fashion_mnist", 28, load_fashion_mnist(dir, true), load_fashion_mnist(dir, false),
                        d.train_size, d.val_size, d.test_size);
  }
  if (d.dataset == "synthetic_images") {
    // Fixed seeds, not the run's: every seed of an experiment sees the same images.
    const int64_t S = cfg.model.image_size, C = cfg.model.num_classes;
    const int64_t train = d.train_size > 0 ? d.train_size : 256, test = d.test_size > 0 ? d.test_size : 128;
    return split_images("synthetic_images", S, synthetic_images(train + d.val_size, S, C, 1),
                        synthetic_images(test, S, C, 2), 0, d.val_size, 0);
  }
  fail<ValueError>("config", "data.dataset: \"", d.dataset, "\" is not an image dataset");
}

ClassifierEval evaluate_classifier(SequenceClassifier& model, const ImageClassificationSet& set, int64_t batch,
                                   int64_t max_images) {
  const int64_t n = max_images > 0 ? std::min(max_images, set.size()) : set.size();
  NoGradGuard ng;
  model.eval();
  ClassifierEval r;
  double total = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t len = std::min(batch, n - start);
    Tensor images = set.images.narrow(0, start, len), labels = set.labels.narrow(0, start, len).contiguous();
    Tensor logits = model.forward(images);
    total += model.loss_of_logits(logits, labels).item<double>() * double(len);
    correct += int64_t(std::llround(accuracy(logits, labels) * double(len)));
  }
  r.images = n;
  r.loss = n ? total / double(n) : 0;
  r.accuracy = n ? double(correct) / double(n) : 0;
  return r;
}

std::string describe(const ClassifierEval& e) {
  std::ostringstream line;
  line << std::fixed << "loss " << std::setprecision(4) << e.loss << ", accuracy " << std::setprecision(2)
       << 100 * e.accuracy << "% (" << e.images << " images)";
  return line.str();
}

ClassifierTrainer::ClassifierTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite)
    : TrainerCore(cfg, log, resume, overwrite) {
  data_ = load_image_splits(cfg_);
  batcher_ = std::make_unique<ImageBatcher>(data_.train, cfg_.data.batch_size, cfg_.seed);
  model_ = std::make_unique<SequenceClassifier>(cfg_.model);
  start(*model_, *model_->trunk, model_->dropout_generator());
  const ModelConfig& m = cfg_.model;
  log_ << "model: ViT classifier, " << m.image_size << "x" << m.image_size << " images in " << m.patch_size << "x"
       << m.patch_size << " patches (" << m.num_patches() << " tokens, " << m.pooling << " pooling), " << m.n_layers
       << " layers, d=" << m.d_model << ", " << m.n_heads << " heads, attention " << m.attention.dump() << ", "
       << model_->num_parameters() << " parameters\n"
       << "data: " << data_.name << " (" << data_.train.size() << " / " << data_.val.size() << " / "
       << data_.test.size() << " images train/val/test), batch " << cfg_.data.batch_size << "\n";
}

ClassifierTrainer::~ClassifierTrainer() = default;

Tensor ClassifierTrainer::train_loss() {
  Tensor images, labels;
  batcher_->next(images, labels);
  return model_->loss(images, labels);
}

void ClassifierTrainer::probe_forward() {
  model_->eval();
  const int64_t n = std::min<int64_t>(16, data_.val.size() > 0 ? data_.val.size() : data_.train.size());
  const ImageClassificationSet& set = data_.val.size() > 0 ? data_.val : data_.train;
  model_->forward(set.images.narrow(0, 0, n));
}

ClassifierEval ClassifierTrainer::evaluate(const std::string& split, int64_t max_images) {
  const ImageClassificationSet& set = split == "test" ? data_.test : split == "train" ? data_.train : data_.val;
  ClassifierEval r = evaluate_classifier(*model_, set, std::max<int64_t>(cfg_.data.batch_size, 256), max_images);
  model_->train();
  return r;
}

Evaluation ClassifierTrainer::evaluate_split(const std::string& split, int64_t max_images) {
  ClassifierEval r = evaluate(split, max_images);
  return {{{"loss", r.loss}, {"acc", r.accuracy}}, describe(r)};
}

std::unique_ptr<TrainerCore> make_trainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite) {
  if (cfg.model.num_classes > 0) return std::make_unique<ClassifierTrainer>(cfg, resume, log, overwrite);
  if (cfg.data.sort()) return std::make_unique<SortTrainer>(cfg, resume, log, overwrite);
  return std::make_unique<LMTrainer>(cfg, resume, log, overwrite);
}

}  // namespace attnlab

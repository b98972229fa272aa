// Image classification (a ViT, model.image_size > 0) as `attnlab train` runs it: the data splits and
// the SequenceClassifier; the loop, metrics, checkpoints and resume are tools/trainer_core.h's.
#pragma once
#include <iosfwd>
#include <memory>

#include "datasets/image_splits.h"
#include "tools/trainer_core.h"

namespace attnlab {

// The splits a config's data section names (data.dataset: fashion_mnist or synthetic_images).
ImageSplits load_image_splits(const TrainConfig& cfg);

struct ClassifierEval {
  double loss = 0;      // the model's configured loss, mean over the images
  double accuracy = 0;  // argmax == label
  int64_t images = 0;
};

// Loss and accuracy of `model` on the first max_images of `set` (all when 0), batch images at a time.
// Leaves the model in eval mode.
ClassifierEval evaluate_classifier(SequenceClassifier& model, const ImageClassificationSet& set, int64_t batch,
                                   int64_t max_images);
std::string describe(const ClassifierEval& e);  // "loss 0.41, accuracy 85.20% (10000 images)"

class ClassifierTrainer : public TrainerCore {
 public:
  // As LMTrainer: resume continues out_dir's run, a fresh start refuses to replace one unless overwrite.
  ClassifierTrainer(const TrainConfig& cfg, bool resume, std::ostream& log, bool overwrite = false);
  ~ClassifierTrainer() override;

  ClassifierEval evaluate(const std::string& split, int64_t max_images);
  Evaluation evaluate_split(const std::string& split, int64_t max_images) override;
  SequenceClassifier& model() { return *model_; }

 protected:
  Tensor train_loss() override;
  uint64_t data_offset() const override { return batcher_->offset(); }
  void set_data_offset(uint64_t offset) override { batcher_->set_offset(offset); }
  void probe_forward() override;
  int64_t items_per_step() const override { return cfg_.data.batch_size; }
  const char* item_name() const override { return "img"; }

 private:
  ImageSplits data_;
  std::unique_ptr<ImageBatcher> batcher_;
  std::unique_ptr<SequenceClassifier> model_;
};

}  // namespace attnlab

// Image classification data for the ViT runs: a train/val/test split of a set, and a resumable
// minibatch stream over the training images.
#pragma once
#include <string>
#include <vector>

#include "core/rng.h"
#include "datasets/fashion_mnist.h"

namespace attnlab {

struct ImageSplits {
  std::string name;
  int64_t side = 0;  // images are side x side
  ImageClassificationSet train, val, test;
};

// val = the last val_size examples of `all`, train = the first train_size of the rest (0: all of
// it), test = the first test_size of `test` (0: all). ValueError naming the field when a split is
// empty or larger than what there is.
ImageSplits split_images(const std::string& name, int64_t side, const ImageClassificationSet& all,
                         const ImageClassificationSet& test, int64_t train_size, int64_t val_size, int64_t test_size);

// n images side x side in `classes` classes: a bright horizontal stripe whose row depends on the
// class, in uniform noise; learnable by a tiny ViT in a few dozen steps. Same seed, same set.
ImageClassificationSet synthetic_images(int64_t n, int64_t side, int64_t classes, uint64_t seed);

// The first n examples of a set (all when n is 0 or more than it has).
ImageClassificationSet head_of(const ImageClassificationSet& s, int64_t n);

// Epochs of shuffled batches (the last short batch dropped), epoch e's order drawn from the generator
// (seed, 7) at offset e·n: the stream is a function of the number of batches drawn, which is its whole state.
class ImageBatcher {
 public:
  ImageBatcher(const ImageClassificationSet& set, int64_t batch, uint64_t seed);
  // images [batch, side²], labels [batch]
  void next(Tensor& images, Tensor& labels);
  uint64_t offset() const { return drawn_; }
  void set_offset(uint64_t batches_drawn);

 private:
  const ImageClassificationSet& set_;
  int64_t batch_;
  uint64_t seed_, drawn_ = 0;
  int64_t epoch_ = -1;
  std::vector<Tensor> plan_;
};

}  // namespace attnlab

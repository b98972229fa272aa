// Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale clothing images in 10 balanced classes,
// 60k train / 10k test, read from the Debian package dataset-fashion-mnist (docs/datasets.md §1.1).
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace attnlab {

// Images flattened to rows, labels as class indices; the shape every image classifier here consumes.
struct ImageClassificationSet {
  Tensor images;  // f32 [N, H*W], pixel / 255, so in [0, 1]
  Tensor labels;  // i64 [N], in [0, class_names.size())
  std::vector<std::string> class_names;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// "T-shirt/top", "Trouser", ..., "Ankle boot", in label order.
const std::vector<std::string>& fashion_mnist_class_names();

// Loads the train (train-*-idx?-ubyte.gz) or test (t10k-*) split from dir. Throws IOError if the
// directory or a file is missing (with the apt-get hint), or if the files are malformed or disagree.
ImageClassificationSet load_fashion_mnist(const std::string& dir = kFashionMnistDir, bool train = true);

}  // namespace attnlab

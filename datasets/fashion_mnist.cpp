#include "datasets/fashion_mnist.h"

#include <filesystem>
#include <system_error>

#include "datasets/idx.h"

namespace attnlab {

namespace {
constexpr int64_t kSide = 28;

std::string install_hint() {
  return "install the Debian package with `apt-get install dataset-fashion-mnist`, or pass the directory "
         "holding the IDX files";
}
}  // namespace

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

ImageClassificationSet load_fashion_mnist(const std::string& dir, bool train) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail<IOError>("load_fashion_mnist", "directory '", dir, "' not found; ", install_hint());
  const std::string prefix = train ? "train" : "t10k";
  const std::string image_path = (fs::path(dir) / (prefix + "-images-idx3-ubyte.gz")).string();
  const std::string label_path = (fs::path(dir) / (prefix + "-labels-idx1-ubyte.gz")).string();
  for (const std::string& p : {image_path, label_path})
    if (!fs::exists(p, ec)) fail<IOError>("load_fashion_mnist", "'", p, "' not found; ", install_hint());

  IdxArray images = read_idx(image_path);
  IdxArray labels = read_idx(label_path);
  if (images.shape.size() != 3 || images.shape[1] != kSide || images.shape[2] != kSide)
    fail<IOError>("load_fashion_mnist", "'", image_path, "': expected images [N, 28, 28], got ",
                  shape_str(images.shape));
  if (labels.shape.size() != 1)
    fail<IOError>("load_fashion_mnist", "'", label_path, "': expected labels [N], got ", shape_str(labels.shape));
  const int64_t n = images.shape[0];
  if (labels.shape[0] != n)
    fail<IOError>("load_fashion_mnist", "'", image_path, "' has ", n, " images but '", label_path, "' has ",
                  labels.shape[0], " labels");

  ImageClassificationSet set;
  set.class_names = fashion_mnist_class_names();
  set.images = empty({n, kSide * kSide}, DType::f32);
  float* px = set.images.data<float>();
  for (size_t i = 0; i < images.data.size(); ++i) px[i] = float(images.data[i]) * (1.0f / 255.0f);

  set.labels = empty({n}, DType::i64);
  int64_t* pl = set.labels.data<int64_t>();
  const int64_t classes = int64_t(set.class_names.size());
  for (int64_t i = 0; i < n; ++i) {
    pl[i] = labels.data[size_t(i)];
    if (pl[i] >= classes)
      fail<IOError>("load_fashion_mnist", "'", label_path, "': label ", pl[i], " at index ", i, " is not in [0, ",
                    classes, ")");
  }
  return set;
}

}  // namespace attnlab

#include "datasets/image_splits.h"

#include "datasets/batches.h"

namespace attnlab {

ImageClassificationSet head_of(const ImageClassificationSet& s, int64_t n) {
  if (n <= 0 || n >= s.size()) return s;
  ImageClassificationSet out = s;
  out.images = s.images.narrow(0, 0, n).contiguous();
  out.labels = s.labels.narrow(0, 0, n).contiguous();
  return out;
}

ImageSplits split_images(const std::string& name, int64_t side, const ImageClassificationSet& all,
                         const ImageClassificationSet& test, int64_t train_size, int64_t val_size, int64_t test_size) {
  const int64_t n = all.size();
  if (val_size >= n)
    fail<ValueError>("config", "data.val_size: ", val_size, " leaves no training images of the ", n, " in ", name);
  if (train_size > n - val_size)
    fail<ValueError>("config", "data.train_size: ", train_size, " is more than the ", n - val_size,
                     " training images left beside the validation split");
  if (test.size() == 0) fail<ValueError>("config", "data: ", name, " has no test images");
  ImageSplits s;
  s.name = name;
  s.side = side;
  s.train = head_of(all, n - val_size);
  s.train = head_of(s.train, train_size);
  s.val = all;
  s.val.images = all.images.narrow(0, n - val_size, val_size).contiguous();
  s.val.labels = all.labels.narrow(0, n - val_size, val_size).contiguous();
  s.test = head_of(test, test_size);
  return s;
}

ImageClassificationSet synthetic_images(int64_t n, int64_t side, int64_t classes, uint64_t seed) {
  if (n < 1 || side < 1 || classes < 1 || classes > side)
    fail<ValueError>("synthetic_images", "need n >= 1 and 1 <= classes <= side, got n ", n, ", side ", side,
                     ", classes ", classes);
  Generator g(seed, 3);
  ImageClassificationSet s;
  s.images = 0.5 * rand({n, side * side}, DType::f32, &g);
  s.labels = randint(0, classes, {n}, &g);
  float* px = s.images.data<float>();
  const int64_t* pl = s.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = pl[i] * side / classes;
    for (int64_t c = 0; c < side; ++c) px[i * side * side + row * side + c] += 0.5f;
  }
  for (int64_t c = 0; c < classes; ++c) s.class_names.push_back("stripe " + std::to_string(c));
  return s;
}

ImageBatcher::ImageBatcher(const ImageClassificationSet& set, int64_t batch, uint64_t seed)
    : set_(set), batch_(batch), seed_(seed) {
  if (batch < 1 || batch > set.size())
    fail<ValueError>("config", "data.batch_size: ", batch, " must be in [1, ", set.size(), "], the training images");
}

void ImageBatcher::set_offset(uint64_t batches_drawn) {
  drawn_ = batches_drawn;
  epoch_ = -1;
}

void ImageBatcher::next(Tensor& images, Tensor& labels) {
  const int64_t per_epoch = set_.size() / batch_;
  const int64_t epoch = int64_t(drawn_ / uint64_t(per_epoch));
  if (epoch != epoch_) {
    Generator g(seed_, 7);
    g.set_offset(uint64_t(epoch) * uint64_t(set_.size()));
    plan_ = shuffled_batches(set_.size(), batch_, g, /*drop_last=*/true);
    epoch_ = epoch;
  }
  const Tensor& idx = plan_[size_t(drawn_ % uint64_t(per_epoch))];
  images = index_select(set_.images, 0, idx);
  labels = index_select(set_.labels, 0, idx);
  ++drawn_;
}

}  // namespace attnlab

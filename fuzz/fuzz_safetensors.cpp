// load_safetensors (core/safetensors.h) on arbitrary files: everything it accepts must be readable
// in full (each tensor within its storage) and sized as the file says.
#include "core/safetensors.h"
#include "fuzz/harness.h"

using namespace attnlab;

ATTNLAB_FUZZ_TARGET(safetensors) {
  SafetensorsFile f = load_safetensors(fuzz::write_input("in.safetensors", data, size));
  fuzz::check(f.digest.bytes == size, "the digest's byte count is the file's size");
  for (const auto& [name, t] : f.tensors) (void)t.to_vector<double>();  // ASan sees a read past the storage
}

// CUDA runtime queries. Kernels and the cuBLAS path arrive with the CUDA issue; this file keeps
// the toolchain wired up so that compile errors surface in CI from the start.
#include <cuda_runtime.h>

namespace attnlab::cuda {

int runtime_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;  // no driver or no GPU: a CPU-only machine
  return n;
}

}  // namespace attnlab::cuda

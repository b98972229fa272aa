#include "core/device.h"

#include <omp.h>

#include "core/cpu/blas.h"
#include "core/error.h"

namespace attnlab {

#ifdef ATTNLAB_WITH_CUDA
namespace cuda {
int runtime_device_count();  // core/cuda/runtime.cu
}
bool cuda_built() { return true; }
int cuda_device_count() { return cuda::runtime_device_count(); }
#else
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
#endif

std::string build_info() {
  return cat("attnlab 0.1 | OpenBLAS threads ", cpu::blas_threads(), " | OpenMP threads ", omp_get_max_threads(),
             " | CUDA backend ", cuda_built() ? "built" : "not built", ", GPUs ", cuda_device_count());
}

}  // namespace attnlab

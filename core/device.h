// What this build can run on. The CUDA backend is optional (CMake ATTNLAB_CUDA=AUTO/ON/OFF).
#pragma once
#include <string>

namespace attnlab {

bool cuda_built();        // compiled with the CUDA backend
int cuda_device_count();  // GPUs visible at run time (0 without the backend or a driver)
std::string build_info(); // one line: version, BLAS, threads, CUDA

}  // namespace attnlab

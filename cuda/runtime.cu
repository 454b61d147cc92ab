// lc::cuda (native/cuda_api.h) over the CUDA runtime, linked statically. A machine without a
// driver, or with a driver older than the runtime needs, makes device_count() return 0 with the
// reason kept, never an exception at load.
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>

#include "../native/cuda_api.h"
#include "include/common.cuh"
#include "kernels.h"

namespace lc::cuda {

using gpu::check;

namespace {
struct Probe {
  int count = 0;
  std::string reason;
};
// "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 ..." -> "580.65.06".
std::string driver_release() {
  std::ifstream f("/proc/driver/nvidia/version");
  std::string line, word, prev;
  if (!std::getline(f, line)) return "";
  std::istringstream words(line);
  while (words >> word) {
    if (prev == "Module" || prev == "Driver") return word;
    prev = word;
  }
  return "";
}
const Probe& probe() {
  static Probe p = [] {
    Probe r;
    // Either way cudaGetDeviceCount would fail with cudaErrorInsufficientDriver.
    r.reason =
        driver().cuda_version == 0 ? "no NVIDIA driver found (libcuda.so.1)" : driver_floor_reason(driver(), runtime_version());
    if (!r.reason.empty()) return r;
    cudaError_t e = cudaGetDeviceCount(&r.count);
    if (e != cudaSuccess) {
      r.count = 0;
      r.reason = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      cudaGetLastError();
    } else if (r.count == 0) {
      r.reason = "no CUDA device found";
    }
    return r;
  }();
  return p;
}

// Every entry point selects its device first: JS may touch several GPUs from one thread.
void use(int dev) { check(cudaSetDevice(dev), "cudaSetDevice"); }
}  // namespace

bool compiled() { return true; }
std::string archs() {
#ifdef LONGCAT_CUDA_ARCHS
  return LONGCAT_CUDA_ARCHS;
#else
  return "";
#endif
}
DriverInfo driver() {
  static const DriverInfo d = [] {
    DriverInfo r;
    if (cudaDriverGetVersion(&r.cuda_version) != cudaSuccess) r.cuda_version = 0;  // 0: no driver
    if (r.cuda_version) r.release = driver_release();
    return r;
  }();
  return d;
}
int runtime_version() { return CUDART_VERSION; }
int device_count() { return probe().count; }
std::string unavailable_reason() { return probe().reason; }

DeviceProps props(int dev) {
  use(dev);
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  DeviceProps r;
  r.name = p.name;
  r.cc_major = p.major;
  r.cc_minor = p.minor;
  r.sm_count = p.multiProcessorCount;
  check(cudaMemGetInfo(&r.free_bytes, &r.total_bytes), "cudaMemGetInfo");
  return r;
}

void set_device(int dev) { use(dev); }

void* malloc(int dev, size_t bytes) {
  use(dev);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail(Code::E_OOM, "CUDA out of memory on cuda:%d allocating %zu bytes (%zu of %zu bytes free)", dev, bytes, free_b, total_b);
  }
  check(e, "cudaMalloc");
  return p;
}

void free(int dev, void* p) {
  use(dev);
  check(cudaFree(p), "cudaFree");
}

void memcpy_h2d(int dev, void* dst, const void* src, size_t bytes) {
  use(dev);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host->device");
}
void memcpy_d2h(int dev, void* dst, const void* src, size_t bytes) {
  use(dev);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device->host");
}
void memcpy_d2d(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  use(dev);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync device->device");
}
void memset_async(int dev, void* p, int value, size_t bytes, void* stream) {
  use(dev);
  check(cudaMemsetAsync(p, value, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}
void* host_alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    fail(Code::E_OOM, "out of page-locked host memory allocating %zu bytes (cudaHostAlloc)", bytes);
  }
  check(e, "cudaHostAlloc");
  return p;
}
void host_free(void* p) { check(cudaFreeHost(p), "cudaFreeHost"); }
void memcpy_h2d_async(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  use(dev);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync host->device");
}
void memcpy_d2h_async(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  use(dev);
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync device->host");
}
bool stream_capturing(int dev, void* s) {
  use(dev);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(static_cast<cudaStream_t>(s), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}
void device_synchronize(int dev) {
  use(dev);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void* stream_create(int dev) {
  use(dev);
  gpu::kernel_image(dev);  // E_DEVICE now, naming the built archs, when none of this build's kernels runs here
  cudaStream_t s;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return s;
}
void stream_destroy(int dev, void* s) {
  use(dev);
  check(cudaStreamDestroy(static_cast<cudaStream_t>(s)), "cudaStreamDestroy");
}
void stream_synchronize(int dev, void* s) {
  use(dev);
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(s)), "cudaStreamSynchronize");
}
void* event_create(int dev) {
  use(dev);
  cudaEvent_t e;
  check(cudaEventCreate(&e), "cudaEventCreate");
  return e;
}
void event_destroy(int dev, void* e) {
  use(dev);
  check(cudaEventDestroy(static_cast<cudaEvent_t>(e)), "cudaEventDestroy");
}
void event_record(int dev, void* e, void* s) {
  use(dev);
  check(cudaEventRecord(static_cast<cudaEvent_t>(e), static_cast<cudaStream_t>(s)), "cudaEventRecord");
}
void stream_wait_event(int dev, void* s, void* e) {
  use(dev);
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(s), static_cast<cudaEvent_t>(e), 0), "cudaStreamWaitEvent");
}
void event_synchronize(int dev, void* e) {
  use(dev);
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(e)), "cudaEventSynchronize");
}
bool event_query(int dev, void* e) {
  use(dev);
  cudaError_t r = cudaEventQuery(static_cast<cudaEvent_t>(e));
  if (r == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(r, "cudaEventQuery");
  return true;
}
float event_elapsed_ms(int dev, void* a, void* b) {
  use(dev);
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a), static_cast<cudaEvent_t>(b)), "cudaEventElapsedTime");
  return ms;
}
void stream_begin_capture(int dev, void* s) {
  use(dev);
  // Relaxed: the pool may cudaMalloc a temporary while the step is being captured.
  check(cudaStreamBeginCapture(static_cast<cudaStream_t>(s), cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
}
void* stream_end_capture(int dev, void* s) {
  use(dev);
  cudaGraph_t graph = nullptr;
  check(cudaStreamEndCapture(static_cast<cudaStream_t>(s), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(e, "cudaGraphInstantiate");
  return exec;
}
void graph_launch(int dev, void* exec, void* s) {
  use(dev);
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(s)), "cudaGraphLaunch");
}
void graph_destroy(int dev, void* exec) {
  use(dev);
  check(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec)), "cudaGraphExecDestroy");
}
bool can_access_peer(int dev, int peer) {
  int can = 0;
  check(cudaDeviceCanAccessPeer(&can, dev, peer), "cudaDeviceCanAccessPeer");
  return can != 0;
}
void enable_peer_access(int dev, int peer) {
  if (dev == peer) return;
  if (!can_access_peer(dev, peer))
    fail(Code::E_DEVICE,
         "cuda:%d cannot reach the memory of cuda:%d (cudaDeviceCanAccessPeer says no: no NVLink or PCIe peer path "
         "between them); expert parallelism needs peer access between every pair of its devices",
         dev, peer);
  use(dev);
  const cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
  if (e == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();
    return;
  }
  check(e, "cudaDeviceEnablePeerAccess");
}
void check_launch(const char* what) { check(cudaGetLastError(), what); }

}  // namespace lc::cuda

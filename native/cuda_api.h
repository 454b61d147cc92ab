// The CUDA runtime as the rest of native/ sees it: plain C++, no CUDA headers, so the CPU-only
// node-gyp build compiles the same files. Implemented by cuda/runtime.cu when the addon is built
// with nvcc (LONGCAT_WITH_CUDA), and by native/cuda_absent.cc otherwise. Every function reports
// failure by throwing lc::Error (E_CUDA, E_OOM, E_DEVICE), never by aborting.
#pragma once
#include <cstddef>
#include <string>

namespace lc::cuda {

struct DeviceProps {
  std::string name;
  size_t total_bytes = 0, free_bytes = 0;
  int cc_major = 0, cc_minor = 0, sm_count = 0;
};

bool compiled();                   // built with nvcc
std::string archs();               // the SM architectures compiled in, e.g. "90a"
int device_count();                // 0 without a driver or device; never throws
std::string unavailable_reason();  // why device_count() is 0 ("" when it is not)
DeviceProps props(int dev);

// Makes `dev` the calling thread's current device: kernels launch on the current device, so a
// launch into a stream of `dev` selects it first.
void set_device(int dev);

void* malloc(int dev, size_t bytes);  // throws E_OOM naming the size
void free(int dev, void* p);
void memcpy_h2d(int dev, void* dst, const void* src, size_t bytes);
void memcpy_d2h(int dev, void* dst, const void* src, size_t bytes);
void memcpy_d2d(int dev, void* dst, const void* src, size_t bytes, void* stream);
void memset_async(int dev, void* p, int value, size_t bytes, void* stream);
// Page-locked host memory (cudaHostAlloc, portable: every device's copies may use it), so that
// copies from and to it are asynchronous on a stream and may be captured into a graph. host_alloc
// throws E_OOM naming the size.
void* host_alloc(size_t bytes);
void host_free(void* p);
// cudaMemcpyAsync between host and device memory of `dev` on `stream`. From or to pageable host
// memory the runtime stages the copy and returns once the host side is no longer needed (the
// source read, or the destination written); from or to page-locked memory it only queues it.
void memcpy_h2d_async(int dev, void* dst, const void* src, size_t bytes, void* stream);
void memcpy_d2h_async(int dev, void* dst, const void* src, size_t bytes, void* stream);
// Whether `stream` is being captured into a graph now (cudaStreamIsCapturing).
bool stream_capturing(int dev, void* stream);
void device_synchronize(int dev);

void* stream_create(int dev);
void stream_destroy(int dev, void* s);
void stream_synchronize(int dev, void* s);
void* event_create(int dev);
void event_destroy(int dev, void* e);
void event_record(int dev, void* e, void* s);
void stream_wait_event(int dev, void* s, void* e);
void event_synchronize(int dev, void* e);
bool event_query(int dev, void* e);
// Milliseconds between two recorded events (both complete).
float event_elapsed_ms(int dev, void* start, void* end);

// Stream capture into an executable CUDA graph (cudaGraphExec_t), replayed with graph_launch.
void stream_begin_capture(int dev, void* s);
void* stream_end_capture(int dev, void* s);
void graph_launch(int dev, void* exec, void* s);
void graph_destroy(int dev, void* exec);

// Peer access (expert parallelism over the GPUs of a node): whether kernels on `dev` can address
// memory of `peer` (cudaDeviceCanAccessPeer), and enabling that for kernels of `dev`
// (cudaDeviceEnablePeerAccess; already enabled is fine). Enabling throws E_DEVICE naming both
// devices when they cannot reach each other.
bool can_access_peer(int dev, int peer);
void enable_peer_access(int dev, int peer);

// Throws E_CUDA if the last kernel launch on this thread failed (bad configuration, etc.).
void check_launch(const char* what);

}  // namespace lc::cuda

// The CUDA runtime as the rest of native/ sees it: plain C++, no CUDA headers, so the CPU-only
// node-gyp build compiles the same files. Implemented by cuda/runtime.cu when the addon is built
// with nvcc (LONGCAT_WITH_CUDA), and by native/cuda_absent.cc otherwise. Every function reports
// failure by throwing lc::Error (E_CUDA, E_OOM, E_DEVICE), never by aborting.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>

namespace lc::cuda {

struct DeviceProps {
  std::string name;
  size_t total_bytes = 0, free_bytes = 0;
  int cc_major = 0, cc_minor = 0, sm_count = 0;
};

bool compiled();                   // built with nvcc
std::string archs();               // the SM architectures compiled in, e.g. "90a"
int device_count();                // 0 without a driver or device, or with a driver too old; never throws
std::string unavailable_reason();  // why device_count() is 0 ("" when it is not)

// The installed NVIDIA driver: the CUDA version it supports (cudaDriverGetVersion: 1000 * major +
// 10 * minor, 0 without a driver) and its release ("580.65.06", from /proc/driver/nvidia/version;
// "" when unknown). The CUDA runtime linked in (CUDART_VERSION; 0 without CUDA).
struct DriverInfo {
  int cuda_version = 0;
  std::string release;
};
DriverInfo driver();
int runtime_version();

// The oldest NVIDIA driver release for a CUDA runtime (the CUDA toolkit release notes' minimum for
// minor version compatibility): "580" for CUDA 13.x, "525" for 12.x; "" for others.
inline std::string min_driver_release(int runtime) { return runtime / 1000 == 13 ? "580" : runtime / 1000 == 12 ? "525" : ""; }
// "12.8" for 12080.
inline std::string cuda_version_text(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }
// The driver floor of the statically linked runtime: a runtime of CUDA M.x runs on a driver for CUDA
// M.0 or newer. Why the CUDA backend cannot run with driver `d` ("" when it can, or when there is
// no driver at all: the runtime's own error says that better).
inline std::string driver_floor_reason(const DriverInfo& d, int runtime) {
  if (d.cuda_version == 0 || d.cuda_version >= runtime / 1000 * 1000) return "";
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "the NVIDIA driver%s%s%s supports CUDA %s, but this addon's CUDA %s runtime needs a driver for CUDA %d.0 or "
                "newer (NVIDIA driver >= %s); using the CPU backend. Update the driver, or build from source with a "
                "CUDA toolkit that driver supports (README: Build from source)",
                d.release.empty() ? "" : " (", d.release.c_str(), d.release.empty() ? "" : ")",
                cuda_version_text(d.cuda_version).c_str(), cuda_version_text(runtime).c_str(), runtime / 1000,
                min_driver_release(runtime).c_str());
  return buf;
}
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

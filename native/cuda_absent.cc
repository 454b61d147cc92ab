// The CUDA runtime surface for builds without nvcc (node-gyp, or cmake without a CUDA compiler).
#ifndef LONGCAT_WITH_CUDA
#include "common.h"
#include "cuda_api.h"

namespace lc::cuda {

[[noreturn]] static void absent() {
  fail(Code::E_DEVICE, "this build of longcat-flash has no CUDA backend (built without nvcc)");
}

bool compiled() { return false; }
std::string archs() { return ""; }
int device_count() { return 0; }
std::string unavailable_reason() { return "the addon was built without nvcc"; }
DriverInfo driver() { return {}; }
int runtime_version() { return 0; }
DeviceProps props(int) { absent(); }
void set_device(int) { absent(); }
void* malloc(int, size_t) { absent(); }
void free(int, void*) {}
void memcpy_h2d(int, void*, const void*, size_t) { absent(); }
void memcpy_d2h(int, void*, const void*, size_t) { absent(); }
void memcpy_d2d(int, void*, const void*, size_t, void*) { absent(); }
void memset_async(int, void*, int, size_t, void*) { absent(); }
void* host_alloc(size_t) { absent(); }
void host_free(void*) {}
void memcpy_h2d_async(int, void*, const void*, size_t, void*) { absent(); }
void memcpy_d2h_async(int, void*, const void*, size_t, void*) { absent(); }
bool stream_capturing(int, void*) { return false; }
void device_synchronize(int) {}
void* stream_create(int) { absent(); }
void stream_destroy(int, void*) {}
void stream_synchronize(int, void*) {}
void* event_create(int) { absent(); }
void event_destroy(int, void*) {}
void event_record(int, void*, void*) { absent(); }
void stream_wait_event(int, void*, void*) { absent(); }
void event_synchronize(int, void*) {}
bool event_query(int, void*) { return true; }
float event_elapsed_ms(int, void*, void*) { absent(); }
void stream_begin_capture(int, void*) { absent(); }
void* stream_end_capture(int, void*) { absent(); }
void graph_launch(int, void*, void*) { absent(); }
void graph_destroy(int, void*) {}
bool can_access_peer(int, int) { return false; }
void enable_peer_access(int, int) { absent(); }
void check_launch(const char*) {}

}  // namespace lc::cuda
#endif

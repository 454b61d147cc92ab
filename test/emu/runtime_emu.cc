// native/cuda_api.h for the emulated CUDA device of test/emu (the addon built with
// -DLONGCAT_CUDA_EMU=ON, for tests only): "device" memory is host memory, every launch runs when it
// is issued (so streams, events and device synchronization have nothing to wait for), and a stream
// capture records the launches and device copies issued during it, which a graph launch replays in
// order. This runs the whole CUDA backend -- the op bindings' CUDA paths, the device pool with its
// stream fences and graph parking, the model's two streams and captured decode steps -- on the CPU.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../cuda/kernels.h"
#include "../../native/common.h"
#include "../../native/cuda_api.h"
#include "cuda_emu.h"

namespace lc::cuda {

namespace {
struct Graph {
  std::vector<std::function<void()>> work;
};
struct Event {
  std::chrono::steady_clock::time_point when;
};
std::unique_ptr<Graph> g_capturing;  // the graph being captured, or null
}  // namespace

bool compiled() { return true; }
std::string archs() { return "emulated"; }
int device_count() { return 1; }
std::string unavailable_reason() { return ""; }

DeviceProps props(int) {
  DeviceProps p;
  p.name = "CUDA emulator (CPU, test/emu)";
  p.cc_major = 9, p.cc_minor = 0, p.sm_count = 132;
  p.total_bytes = size_t{16} << 30, p.free_bytes = size_t{16} << 30;
  return p;
}

void* malloc(int dev, size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p) fail(Code::E_OOM, "CUDA out of memory on cuda:%d allocating %zu bytes (emulated)", dev, bytes);
  return p;
}
void free(int, void* p) { std::free(p); }

// Copies issued while a stream is captured become graph nodes, like cudaMemcpyAsync.
static void run_or_record(std::function<void()> fn) {
  if (g_capturing) g_capturing->work.push_back(std::move(fn));
  else fn();
}
void memcpy_h2d(int, void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void memcpy_d2h(int, void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void memcpy_d2d(int, void* dst, const void* src, size_t bytes, void*) {
  run_or_record([=] { std::memmove(dst, src, bytes); });
}
void memset_async(int, void* p, int value, size_t bytes, void*) {
  run_or_record([=] { std::memset(p, value, bytes); });
}
void device_synchronize(int) {}

void* stream_create(int) { return new int(0); }
void stream_destroy(int, void* s) { delete static_cast<int*>(s); }
void stream_synchronize(int, void*) {}
void* event_create(int) { return new Event(); }
void event_destroy(int, void* e) { delete static_cast<Event*>(e); }
void event_record(int, void* e, void*) { static_cast<Event*>(e)->when = std::chrono::steady_clock::now(); }
void stream_wait_event(int, void*, void*) {}
void event_synchronize(int, void*) {}
bool event_query(int, void*) { return true; }
float event_elapsed_ms(int, void* a, void* b) {
  return std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->when - static_cast<Event*>(a)->when).count();
}

void stream_begin_capture(int, void*) {
  if (g_capturing) fail(Code::E_CUDA, "stream capture: already capturing (emulated)");
  g_capturing = std::make_unique<Graph>();
  lc_emu::g_record = [](std::function<void()> fn) { g_capturing->work.push_back(std::move(fn)); };
}
void* stream_end_capture(int, void*) {
  lc_emu::g_record = nullptr;
  return g_capturing.release();
}
void graph_launch(int, void* exec, void*) {
  for (auto& fn : static_cast<Graph*>(exec)->work) fn();
}
void graph_destroy(int, void* exec) { delete static_cast<Graph*>(exec); }
void check_launch(const char*) {}

}  // namespace lc::cuda

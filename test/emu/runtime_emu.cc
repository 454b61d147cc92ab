// native/cuda_api.h for the emulated CUDA device of test/emu (the addon built with
// -DLONGCAT_CUDA_EMU=ON, for tests only): "device" memory is host memory, and streams really defer
// work, so that ordering bugs show as wrong results instead of passing by luck. Every launch, async
// copy, memset, event record, event wait and graph launch is queued on its stream; a stream's queue
// runs, in order, only when the host waits for it: stream / event / device synchronization, or an
// event wait queued on another stream when that one runs (it first runs the waited-for stream up to
// the event). An event query never runs anything: an event is pending until its stream reached it
// (the adversarial GPU: always slower than the host). Blocking host copies (cudaMemcpy) wait for the
// legacy default stream only, like with the cudaStreamNonBlocking streams of cuda/runtime.cu; an
// asynchronous copy is queued when its host side is page-locked (host_alloc), and otherwise done
// at once behind its stream's earlier work, like the runtime's staged copy of pageable memory. A
// destroyed stream's queued work still runs (at the next device synchronization or event wait that
// reaches it). A stream capture records the launches and device copies issued during it, which a
// graph launch queues as one item. This runs the whole CUDA backend -- the op bindings' CUDA paths,
// the device pool with its stream fences and graph parking, the model's two streams and captured
// decode steps -- on the CPU. Several devices: LONGCAT_EMU_DEVICES (test/emu/cuda_emu.h), with peer
// access modelled: every allocation is recorded with its device, and a launch that carries an
// address of another device's memory fails unless peer access to that device was enabled. An event
// wait may name an event of another device (it runs that device's stream up to the event).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../../cuda/kernels.h"
#include "../../native/common.h"
#include "../../native/cuda_api.h"
#include "cuda_emu.h"

namespace lc::cuda {

namespace {

struct Stream {
  int dev = 0;
  std::deque<std::function<void()>> queue;
  uint64_t queued = 0, done = 0;  // items ever queued / run (the n-th queued item is number n)
  bool running = false;           // an item of this stream is running now
  bool destroyed = false;
};
using StreamPtr = std::shared_ptr<Stream>;

// An event's latest record: the stream and its item number; complete once the stream ran it.
struct Event {
  StreamPtr stream;
  uint64_t seq = 0;
  std::shared_ptr<std::chrono::steady_clock::time_point> when;
};

struct Graph {
  std::shared_ptr<std::vector<std::function<void()>>> work = std::make_shared<std::vector<std::function<void()>>>();
};

// One host thread drives the device (the JS thread), but a Storage may be released elsewhere:
// every queue operation holds this (recursively: an item may run another stream's items).
std::recursive_mutex g_m;
std::vector<StreamPtr> g_streams;    // every live stream, and destroyed ones with work left
std::vector<StreamPtr> g_legacy;     // per device: the legacy default stream (stream handle null)
std::unique_ptr<Graph> g_capturing;  // the graph being captured, or null
// The thread that captures: only its launches, copies and event operations go into the graph (a
// worker thread's work on its own streams meanwhile runs, as it does on the hardware).
std::thread::id g_capturing_thread;
bool capturing_here() { return g_capturing && g_capturing_thread == std::this_thread::get_id(); }

[[noreturn]] void fail_cuda(cudaError_t e, const char* what) {
  fail(e == cudaErrorMemoryAllocation ? Code::E_OOM : Code::E_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e),
       cudaGetErrorName(e));
}

void use(int dev) {
  const cudaError_t e = cudaSetDevice(dev);
  if (e != cudaSuccess) fail_cuda(e, "cudaSetDevice");
}

const StreamPtr& legacy(int dev) {
  while (static_cast<int>(g_legacy.size()) <= dev) {
    g_legacy.push_back(std::make_shared<Stream>());
    g_legacy.back()->dev = static_cast<int>(g_legacy.size()) - 1;
  }
  return g_legacy[dev];
}

StreamPtr find(int dev, void* s) {
  if (!s) return legacy(dev);
  for (const StreamPtr& p : g_streams)
    if (p.get() == s && !p->destroyed) return p;
  fail_cuda(cudaErrorInvalidResourceHandle, "stream (emulated): not a live stream");
}

void forget_if_finished(const StreamPtr& s) {
  if (s->destroyed && s->queue.empty() && !s->running)
    g_streams.erase(std::remove(g_streams.begin(), g_streams.end(), s), g_streams.end());
}

// Runs the stream's items in order until its item `upto` has run.
void run_until(const StreamPtr& s, uint64_t upto) {
  std::lock_guard<std::recursive_mutex> lk(g_m);
  while (s->done < upto && !s->queue.empty()) {
    if (s->running) {  // an item of this stream waits for a later item of it: a cycle of waits
      std::fprintf(stderr, "cuda emulator: a stream waits for its own later work (cyclic event waits)\n");
      std::abort();
    }
    std::function<void()> fn = std::move(s->queue.front());
    s->queue.pop_front();
    s->running = true;
    fn();
    s->running = false;
    ++s->done;
  }
  forget_if_finished(s);
}
void run_all(const StreamPtr& s) { run_until(s, s->queued); }

void enqueue(const StreamPtr& s, std::function<void()> fn) {
  std::lock_guard<std::recursive_mutex> lk(g_m);
  s->queue.push_back(std::move(fn));
  ++s->queued;
}

// Launches and async copies (cuda_emu.h's submit hook): into the graph being captured, or onto the
// stream, which must belong to the current device like on the hardware.
void submit(cudaStream_t st, std::function<void()> fn) {
  std::lock_guard<std::recursive_mutex> lk(g_m);
  if (capturing_here()) {
    g_capturing->work.get()->push_back(std::move(fn));
    return;
  }
  StreamPtr s;
  if (!st) {
    s = legacy(lc_emu::t_device);
  } else {
    for (const StreamPtr& p : g_streams)
      if (p.get() == st && !p->destroyed) s = p;
  }
  if (!s || s->dev != lc_emu::t_device) {
    lc_emu::t_last_error = cudaErrorInvalidResourceHandle;
    return;
  }
  enqueue(s, std::move(fn));
}
// Every live allocation: start address -> (bytes, device); the owner hook of cuda_emu.h.
std::mutex g_alloc_m;
std::map<uintptr_t, std::pair<size_t, int>> g_allocs;
int owner(const void* p) {
  std::lock_guard<std::mutex> lk(g_alloc_m);
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return -1;
  --it;
  return a < it->first + it->second.first ? it->second.second : -1;
}

const bool g_installed = (lc_emu::g_submit = submit, lc_emu::g_owner = owner, true);

// Page-locked host allocations (host_alloc): start address -> bytes. An asynchronous copy from or
// to them is queued; one from or to any other host memory (pageable) behaves like the runtime's
// staged copy: it waits for its stream's earlier work and is done when the call returns.
std::mutex g_pinned_m;
std::map<uintptr_t, size_t> g_pinned;
bool page_locked(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lk(g_pinned_m);
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_pinned.upper_bound(a);
  if (it == g_pinned.begin()) return false;
  --it;
  return a + bytes <= it->first + it->second;
}

// An asynchronous host <-> device copy whose host side is `host`.
void copy_async(int dev, void* dst, const void* src, size_t bytes, const void* host, void* st, const char* what) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  if (page_locked(host, bytes)) {
    submit(st, [=] { std::memmove(dst, src, bytes); });
    if (lc_emu::t_last_error != cudaSuccess) fail_cuda(cudaGetLastError(), what);
    return;
  }
  if (capturing_here()) fail_cuda(cudaErrorInvalidValue, what);  // no staged copies in a graph
  run_all(find(dev, st));
  std::memmove(dst, src, bytes);
}

}  // namespace

bool compiled() { return true; }
std::string archs() { return "emulated"; }
// The emulated driver: LONGCAT_EMU_DRIVER (the CUDA version it supports, 1000 * major + 10 * minor;
// default 13000) against an emulated CUDA 13.0 runtime, through the real build's driver floor.
DriverInfo driver() {
  const char* v = std::getenv("LONGCAT_EMU_DRIVER");
  return {v ? std::atoi(v) : 13000, "emulated"};
}
int runtime_version() { return 13000; }
int device_count() {
  return (void)g_installed, driver_floor_reason(driver(), runtime_version()).empty() ? lc_emu::machine().devices : 0;
}
std::string unavailable_reason() { return driver_floor_reason(driver(), runtime_version()); }

DeviceProps props(int dev) {
  use(dev);
  DeviceProps p;
  p.name = "CUDA emulator (CPU, test/emu)";
  p.cc_major = lc_emu::machine().cc / 10, p.cc_minor = lc_emu::machine().cc % 10, p.sm_count = 132;
  p.total_bytes = size_t{16} << 30, p.free_bytes = size_t{16} << 30;
  return p;
}

void set_device(int dev) { use(dev); }

void* malloc(int dev, size_t bytes) {
  use(dev);
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p) fail(Code::E_OOM, "CUDA out of memory on cuda:%d allocating %zu bytes (emulated)", dev, bytes);
  std::lock_guard<std::mutex> lk(g_alloc_m);
  g_allocs[reinterpret_cast<uintptr_t>(p)] = {bytes, dev};
  return p;
}
void free(int dev, void* p) {
  use(dev);
  {
    std::lock_guard<std::mutex> lk(g_alloc_m);
    g_allocs.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
}

// cudaMemcpy: after the legacy default stream's work, not the other (non-blocking) streams'.
void memcpy_h2d(int dev, void* dst, const void* src, size_t bytes) {
  use(dev);
  run_all(legacy(dev));
  std::memcpy(dst, src, bytes);
}
void memcpy_d2h(int dev, void* dst, const void* src, size_t bytes) {
  use(dev);
  run_all(legacy(dev));
  std::memcpy(dst, src, bytes);
}
void memcpy_d2d(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  use(dev);
  if (cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess || lc_emu::t_last_error != cudaSuccess)
    fail_cuda(cudaGetLastError(), "cudaMemcpyAsync device->device");
}
void memset_async(int dev, void* p, int value, size_t bytes, void* stream) {
  use(dev);
  submit(stream, [=] { std::memset(p, value, bytes); });
  if (lc_emu::t_last_error != cudaSuccess) fail_cuda(cudaGetLastError(), "cudaMemsetAsync");
}
void* host_alloc(size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p) fail(Code::E_OOM, "out of page-locked host memory allocating %zu bytes (emulated)", bytes);
  std::lock_guard<std::mutex> lk(g_pinned_m);
  g_pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
  return p;
}
void host_free(void* p) {
  {
    std::lock_guard<std::mutex> lk(g_pinned_m);
    g_pinned.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
}
void memcpy_h2d_async(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  copy_async(dev, dst, src, bytes, src, stream, "cudaMemcpyAsync host->device");
}
void memcpy_d2h_async(int dev, void* dst, const void* src, size_t bytes, void* stream) {
  copy_async(dev, dst, src, bytes, dst, stream, "cudaMemcpyAsync device->host");
}
bool stream_capturing(int dev, void* st) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  find(dev, st);  // an invalid handle fails like on the hardware
  return capturing_here();
}
void device_synchronize(int dev) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  for (bool again = true; again;) {  // an item may queue more (a graph launch does not, but stay general)
    again = false;
    std::vector<StreamPtr> all = g_streams;
    all.push_back(legacy(dev));
    for (const StreamPtr& s : all)
      if (s->dev == dev && !s->queue.empty()) run_all(s), again = true;
  }
}

void* stream_create(int dev) {
  use(dev);
  gpu::kernel_image(dev);  // E_DEVICE when the emulated build has no image for the device
  std::lock_guard<std::recursive_mutex> lk(g_m);
  auto s = std::make_shared<Stream>();
  s->dev = dev;
  g_streams.push_back(s);
  return s.get();
}
// Like cudaStreamDestroy: returns at once; the stream's queued work still runs.
void stream_destroy(int dev, void* st) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  StreamPtr s = find(dev, st);
  s->destroyed = true;
  forget_if_finished(s);
}
void stream_synchronize(int dev, void* st) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  run_all(find(dev, st));
}
void* event_create(int dev) {
  use(dev);
  return new Event();
}
void event_destroy(int dev, void* e) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  delete static_cast<Event*>(e);
}
void event_record(int dev, void* e, void* st) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  if (capturing_here()) return;  // a captured record orders graph nodes; the graph runs its work in order anyway
  auto* ev = static_cast<Event*>(e);
  ev->stream = find(dev, st);
  auto when = std::make_shared<std::chrono::steady_clock::time_point>();
  ev->when = when;
  enqueue(ev->stream, [when] { *when = std::chrono::steady_clock::now(); });
  ev->seq = ev->stream->queued;
}
// The wait refers to the event's latest record at the time of the call, like cudaStreamWaitEvent.
void stream_wait_event(int dev, void* st, void* e) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  if (capturing_here()) return;
  const auto* ev = static_cast<Event*>(e);
  StreamPtr s = find(dev, st);
  if (!ev->stream) return;  // never recorded: nothing to wait for
  StreamPtr other = ev->stream;
  const uint64_t seq = ev->seq;
  enqueue(s, [other, seq] { run_until(other, seq); });
}
void event_synchronize(int dev, void* e) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  const auto* ev = static_cast<Event*>(e);
  if (ev->stream) run_until(ev->stream, ev->seq);
}
bool event_query(int dev, void* e) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  const auto* ev = static_cast<Event*>(e);
  return !ev->stream || ev->stream->done >= ev->seq;
}
float event_elapsed_ms(int dev, void* a, void* b) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  const auto *ea = static_cast<Event*>(a), *eb = static_cast<Event*>(b);
  if (!ea->stream || !eb->stream) fail_cuda(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime (an event never recorded)");
  if (ea->stream->done < ea->seq || eb->stream->done < eb->seq) fail_cuda(cudaErrorNotReady, "cudaEventElapsedTime");
  return std::chrono::duration<float, std::milli>(*eb->when - *ea->when).count();
}

void stream_begin_capture(int dev, void*) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  if (g_capturing) fail(Code::E_CUDA, "stream capture: already capturing (emulated)");
  g_capturing = std::make_unique<Graph>();
  g_capturing_thread = std::this_thread::get_id();
}
void* stream_end_capture(int dev, void*) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  return g_capturing.release();
}
void graph_launch(int dev, void* exec, void* st) {
  use(dev);
  std::lock_guard<std::recursive_mutex> lk(g_m);
  auto work = static_cast<Graph*>(exec)->work;
  enqueue(find(dev, st), [work] {
    for (auto& fn : *work) fn();
  });
}
void graph_destroy(int dev, void* exec) {
  use(dev);
  delete static_cast<Graph*>(exec);
}
bool can_access_peer(int dev, int peer) {
  int can = 0;
  const cudaError_t e = cudaDeviceCanAccessPeer(&can, dev, peer);
  if (e != cudaSuccess) fail_cuda(e, "cudaDeviceCanAccessPeer");
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
  if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) fail_cuda(e, "cudaDeviceEnablePeerAccess");
}
void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail_cuda(e, what);
}

}  // namespace lc::cuda

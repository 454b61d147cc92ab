// A CUDA emulator for the kernels in cuda/: just enough of the language and runtime for the kernel
// sources (after scripts/cuda-emu-sources.mjs rewrote their `<<<...>>>` launches and dynamic shared
// arrays) to compile as host C++ and run, one fiber per CUDA thread, so that test/native's
// emulation harness can hold them to the CPU oracle without a GPU. A launch is checked when issued
// (kernel image, dynamic shared memory opt-in of the current device), then queued on its stream
// by the addon's emulated runtime (test/emu/runtime_emu.cc: streams really defer work) or run at
// once (the native harness). A kernel runs its blocks one after another (so `__shared__` arrays
// can be function statics), the threads of a block as cooperatively scheduled fibers;
// __syncthreads and the warp intrinsics are barriers; exited threads drop out of them like on the
// hardware. ldmatrix / mma (cuda/include/mma.cuh) exchange fragments across the warp per the PTX
// definitions (test/emu/mma_emu.h). The machine (device count, compute capability, the archs the
// "binary" holds) comes from LONGCAT_EMU_DEVICES / LONGCAT_EMU_CC / LONGCAT_EMU_ARCHS (machine()).
//
// What it cannot tell: anything about timing, memory ordering beyond the barriers, occupancy,
// register limits, or the PTX instructions themselves.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <memory>
#include <csetjmp>
#include <type_traits>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) alignas(n)
#define __grid_constant__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- runtime: what the launchers call ----------------------------------------------------------------
using cudaStream_t = void*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorPeerAccessUnsupported = 217,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorPeerAccessAlreadyEnabled = 704
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };

namespace lc_emu {

// The emulated machine, from the environment (read once): LONGCAT_EMU_DEVICES devices (default 1;
// every pair can reach each other's memory once peer access is enabled, except the pairs listed in
// LONGCAT_EMU_NO_PEER, e.g. "0-1,2-3": devices without a peer path, in either direction)
// of compute capability LONGCAT_EMU_CC (default 90: an H100 SXM), and a "binary" whose kernels were
// built for LONGCAT_EMU_ARCHS (default 90a; the syntax of LONGCAT_CUDA_ARCHS, ';' or ','
// separated, "compute_NN" for embedded PTX). The image a device runs is picked like the driver
// picks: among the SASS targets the highest arch of the device's major version not above its compute
// capability, an arch-specific "a" target only on exactly its compute capability; without one, the
// newest PTX not above the compute capability, compiled for the device (a generic image of that arch).
struct Image {
  int arch = 0;           // 0: the binary has no image for the device
  bool specific = false;  // an sm_XXa image
  bool ptx = false;       // compute_XX: PTX the driver compiles for a device of compute capability >= XX
};
struct Machine {
  int devices = 1, cc = 90;
  std::vector<std::pair<int, int>> no_peer;  // pairs (lower index first) that cannot reach each other
  std::string archs_text;                    // as given
  std::vector<Image> archs;
  Image image;  // what every device (all alike) runs
};
inline Image parse_arch(const std::string& a) {
  Image im;
  im.ptx = a.rfind("compute_", 0) == 0;
  im.arch = std::atoi(a.c_str() + (im.ptx ? 8 : 0));
  im.specific = !a.empty() && a.back() == 'a';
  return im;
}
inline const Machine& machine() {
  static const Machine m = [] {
    Machine r;
    if (const char* v = std::getenv("LONGCAT_EMU_DEVICES")) r.devices = std::max(1, std::atoi(v));
    if (const char* v = std::getenv("LONGCAT_EMU_CC")) r.cc = std::atoi(v);
    if (const char* v = std::getenv("LONGCAT_EMU_NO_PEER")) {
      for (const char* p = v; *p;) {
        char* end = nullptr;
        const long a = std::strtol(p, &end, 10);
        if (end == p || *end != '-') break;
        const long b = std::strtol(end + 1, &end, 10);
        r.no_peer.emplace_back(static_cast<int>(std::min(a, b)), static_cast<int>(std::max(a, b)));
        p = *end == ',' ? end + 1 : end;
        if (*end != ',') break;
      }
    }
    const char* archs = std::getenv("LONGCAT_EMU_ARCHS");
    std::string list = archs ? archs : "90a", cur;
    r.archs_text = list;
    for (char c : list + ";") {
      if (c == ';' || c == ',') {
        if (!cur.empty()) r.archs.push_back(parse_arch(cur));
        cur.clear();
      } else if (c != ' ') {
        cur += c;
      }
    }
    for (const Image& im : r.archs) {
      const bool runs = !im.ptx && im.arch / 10 == r.cc / 10 && im.arch <= r.cc && (!im.specific || im.arch == r.cc);
      const bool better = im.arch > r.image.arch || (im.arch == r.image.arch && im.specific);
      if (runs && better) r.image = im;
    }
    for (const Image& im : r.archs)  // no SASS for the device: the driver compiles the newest PTX that fits
      if (r.image.arch == 0 || r.image.ptx)
        if (im.ptx && !im.specific && im.arch <= r.cc && im.arch > r.image.arch) r.image = im;
    return r;
  }();
  return m;
}

// The current device and the sticky-free launch error of the calling thread, like the runtime's.
inline thread_local int t_device = 0;
inline thread_local cudaError_t t_last_error = cudaSuccess;
// The image the kernel being run was launched for (the emulated arch-specific instructions read it).
inline Image g_exec_image;

// Dynamic shared memory above 48 KB needs cudaFuncSetAttribute, per device and kernel (checked at
// launch, like the hardware).
constexpr int kDefaultDynSmem = 48 * 1024, kOptinDynSmem = 232448;
inline std::mutex g_attr_m;
inline std::map<std::pair<int, const void*>, int> g_dyn_smem_optin;

// Peer access: whether device `dev` has a peer path to `peer` (cudaDeviceCanAccessPeer), and the
// pairs (dev, peer) whose kernels of `dev` may address `peer`'s memory (cudaDeviceEnablePeerAccess).
inline bool can_access_peer(int dev, int peer) {
  const Machine& m = machine();
  if (dev == peer || dev < 0 || peer < 0 || dev >= m.devices || peer >= m.devices) return false;
  for (const auto& [a, b] : m.no_peer)
    if (a == std::min(dev, peer) && b == std::max(dev, peer)) return false;
  return true;
}
inline std::mutex g_peer_m;
inline std::vector<std::pair<int, int>> g_peer_enabled;
inline bool peer_enabled(int dev, int peer) {
  std::lock_guard<std::mutex> lk(g_peer_m);
  return std::find(g_peer_enabled.begin(), g_peer_enabled.end(), std::make_pair(dev, peer)) != g_peer_enabled.end();
}

// The device whose memory `p` lies in (-1: none, e.g. host memory), from the addon's emulated
// runtime, which records every allocation; null in the native harness (no ownership checked). A
// launch on device A that carries an address of device B's memory fails when issued with
// cudaErrorIllegalAddress unless A enabled peer access to B (the hardware faults when the kernel
// touches it; here every address a launch carries counts as touched).
inline int (*g_owner)(const void* p) = nullptr;
inline bool reachable(const void* p) {
  if (!g_owner || !p) return true;
  const int owner = g_owner(p);
  return owner < 0 || owner == t_device || peer_enabled(t_device, owner);
}
// The addresses a kernel argument carries: a pointer itself; a struct of pointers (e.g. the
// expert-parallel slot tables) through an overload found by argument-dependent lookup.
template <class A, class F>
void each_pointer(const A& a, F& f) {
  if constexpr (std::is_pointer_v<A> && std::is_object_v<std::remove_pointer_t<A>>) f(static_cast<const void*>(a));
}

// Where launches and asynchronous copies go: test/emu/runtime_emu.cc (the addon's emulated runtime)
// queues them on their stream; without it (the native harness) they run at once.
inline void (*g_submit)(cudaStream_t, std::function<void()>) = nullptr;
inline void submit(cudaStream_t s, std::function<void()> fn) {
  if (g_submit)
    g_submit(s, std::move(fn));
  else
    fn();
}

}  // namespace lc_emu

inline cudaError_t cudaGetDevice(int* d) { return *d = lc_emu::t_device, cudaSuccess; }
inline cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= lc_emu::machine().devices) return cudaErrorInvalidDevice;
  lc_emu::t_device = d;
  return cudaSuccess;
}
inline cudaError_t cudaGetDeviceCount(int* n) { return *n = lc_emu::machine().devices, cudaSuccess; }
inline cudaError_t cudaDeviceCanAccessPeer(int* can, int dev, int peer) {
  const int n = lc_emu::machine().devices;
  if (dev < 0 || dev >= n || peer < 0 || peer >= n) return cudaErrorInvalidDevice;
  *can = lc_emu::can_access_peer(dev, peer);
  return cudaSuccess;
}
// For kernels of the current device, like the runtime's.
inline cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags) {
  const int dev = lc_emu::t_device;
  if (flags != 0) return cudaErrorInvalidValue;
  if (peer < 0 || peer >= lc_emu::machine().devices) return cudaErrorInvalidDevice;
  if (!lc_emu::can_access_peer(dev, peer)) return cudaErrorPeerAccessUnsupported;
  std::lock_guard<std::mutex> lk(lc_emu::g_peer_m);
  const auto pair = std::make_pair(dev, peer);
  if (std::find(lc_emu::g_peer_enabled.begin(), lc_emu::g_peer_enabled.end(), pair) != lc_emu::g_peer_enabled.end())
    return cudaErrorPeerAccessAlreadyEnabled;
  lc_emu::g_peer_enabled.push_back(pair);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {  // an H100 SXM, of LONGCAT_EMU_CC
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = lc_emu::kOptinDynSmem; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = lc_emu::machine().cc / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *v = lc_emu::machine().cc % 10; break;
  }
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F fn, cudaFuncAttribute, int bytes) {
  if (bytes < 0 || bytes > lc_emu::kOptinDynSmem) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lk(lc_emu::g_attr_m);
  lc_emu::g_dyn_smem_optin[{lc_emu::t_device, reinterpret_cast<const void*>(fn)}] = bytes;
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t st) {
  lc_emu::submit(st, [=] { std::memmove(d, s, n); });
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = lc_emu::t_last_error;
  lc_emu::t_last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorPeerAccessUnsupported: return "cudaErrorPeerAccessUnsupported";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorPeerAccessAlreadyEnabled: return "cudaErrorPeerAccessAlreadyEnabled";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
  }
  return "cudaErrorUnknown";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device (emulated)";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle (emulated)";
    case cudaErrorNotReady: return "device not ready (emulated)";
    case cudaErrorPeerAccessUnsupported: return "peer access is not supported between these two devices (emulated)";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered (emulated: another device's memory without peer access)";
    case cudaErrorPeerAccessAlreadyEnabled: return "peer access is already enabled (emulated)";
    default: return "emulated";
  }
}

// ---- threads, blocks, barriers -------------------------------------------------------------------------
// A block's CUDA threads are fibers (ucontext) on the calling OS thread: a barrier parks the fiber
// until every participant arrived, the scheduler then resumes the others in thread order. Cheap
// (no OS threads, no futexes) and deterministic; the order alternates (see run) to expose races.
//
// Built with -fsanitize=thread (the race harness, test/native/emu_race.cc), every CUDA thread is
// also a ThreadSanitizer fiber and the CUDA memory model's ordering is annotated: __syncthreads and
// __syncwarp order memory among their participants (release / acquire), the warp intrinsics
// (shuffles, ballots, ldmatrix / mma fragment exchanges) exchange values without ordering memory,
// as the CUDA programming guide specifies; blocks are ordered one after another and with the host.
// A shared-memory access of one lane that another lane's conflicting access is not ordered with --
// e.g. lane 0 rewriting a value the other lanes read, with only shuffles between -- is then
// reported as a data race, whichever order the fibers happened to run in. The emulator's own
// bookkeeping is hidden from the sanitizer.
#if defined(__SANITIZE_THREAD__)
#define LC_EMU_TSAN 1
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
#endif
namespace lc_emu {
#ifdef LC_EMU_TSAN
inline char g_block_order;  // the sync object ordering blocks, launches and the host
inline void* g_sched_tsan = nullptr;
// The emulator's bookkeeping while alive: not memory the CUDA program shares.
struct Internal {
  Internal() { AnnotateIgnoreReadsBegin(__FILE__, __LINE__), AnnotateIgnoreWritesBegin(__FILE__, __LINE__); }
  ~Internal() { AnnotateIgnoreWritesEnd(__FILE__, __LINE__), AnnotateIgnoreReadsEnd(__FILE__, __LINE__); }
};
#define LC_EMU_INTERNAL const lc_emu::Internal lc_emu_internal_
#else
#define LC_EMU_INTERNAL (void)0
#endif

struct Fiber {
  ucontext_t uc;  // the first entry only (it sets up the stack); every switch under the sanitizer
  jmp_buf env;    // every later switch: _setjmp / _longjmp, no signal-mask syscalls
  char* stack = nullptr;
  bool started = false, waiting = false, parked = false;  // parked: done with the current block
#ifdef LC_EMU_TSAN
  void* tsan = nullptr;
#endif
};

#ifdef LC_EMU_TSAN
constexpr size_t kStack = 256 * 1024;  // instrumented frames are larger
#else
constexpr size_t kStack = 64 * 1024;
#endif
// Fiber stacks, allocated once (uninitialized) and reused by every launch.
inline char* fiber_stack(int i) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (static_cast<int>(stacks.size()) <= i) stacks.emplace_back(new char[kStack]);
  return stacks[i].get();
}

inline jmp_buf g_sched_env;
inline ucontext_t g_sched_uc;
inline std::vector<Fiber>* g_fibers = nullptr;
inline int g_cur = 0;
inline int64_t g_blocks = 0;
inline dim3 t_idx, b_idx, b_dim, g_dim;
inline int t_lane = 0, t_warp = 0;
inline std::function<void()> g_body;
inline int g_wake = -1;  // a thread to resume before the scheduler's next one (set by test/emu/hopper_emu.h)

// Back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield() {
#ifdef LC_EMU_TSAN
  __tsan_switch_to_fiber(g_sched_tsan, __tsan_switch_to_fiber_no_sync);
  swapcontext(&(*g_fibers)[g_cur].uc, &g_sched_uc);
#else
  if (!_setjmp((*g_fibers)[g_cur].env)) _longjmp(g_sched_env, 1);
#endif
}

// A barrier whose participants can leave (a returned CUDA thread no longer holds a barrier back).
// `orders_memory`: __syncthreads / __syncwarp (not the warp intrinsics' exchanges).
class Barrier {
 public:
  void reset(int n) { expected_ = n, arrived_.clear(); }
  void arrive_and_wait(bool orders_memory) {
    LC_EMU_INTERNAL;
#ifdef LC_EMU_TSAN
    if (orders_memory) __tsan_release(this);
#endif
    if (static_cast<int>(arrived_.size()) + 1 >= expected_) {
      release();
    } else {
      arrived_.push_back(g_cur);
      (*g_fibers)[g_cur].waiting = true;
      yield();
    }
#ifdef LC_EMU_TSAN
    if (orders_memory) __tsan_acquire(this);
#endif
    (void)orders_memory;
  }
  void drop() {
    --expected_;
    if (!arrived_.empty() && static_cast<int>(arrived_.size()) >= expected_) release();
  }

 private:
  void release() {
    for (int f : arrived_) (*g_fibers)[f].waiting = false;
    arrived_.clear();
  }
  int expected_ = 0;
  std::vector<int> arrived_;
};

struct Warp {
  Barrier bar;
  uint64_t slot[32][12];  // per-lane payloads exchanged by the warp intrinsics
};

struct Block {
  Barrier bar;
  std::vector<Warp> warps;
};

inline Block* g_block = nullptr;

alignas(1024) inline uint8_t g_dyn_smem[256 * 1024];
inline void* dynamic_smem() { return g_dyn_smem; }

inline Warp& warp() { return g_block->warps[t_warp]; }

// The calling thread's lane publishes `n` words, the warp meets, `read` runs, the warp meets again.
// No memory ordering (the values travel outside memory on the hardware).
template <class Read>
void exchange(const uint64_t* mine, int n, Read read) {
  LC_EMU_INTERNAL;
  Warp& w = warp();
  for (int i = 0; i < n; ++i) w.slot[t_lane][i] = mine[i];
  w.bar.arrive_and_wait(false);
  read(w.slot);
  w.bar.arrive_and_wait(false);
}

template <class T>
uint64_t bits(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// A fiber runs its CUDA thread in every block of the launch, parking between blocks.
inline void fiber_entry() {
  for (int64_t b = 0; b < g_blocks; ++b) {
#ifdef LC_EMU_TSAN
    __tsan_acquire(&g_block_order);  // after the previous blocks and what the host did before the launch
#endif
    g_body();
    {
      LC_EMU_INTERNAL;
#ifdef LC_EMU_TSAN
      __tsan_release(&g_block_order);
#endif
      g_block->bar.drop();
      warp().bar.drop();
      (*g_fibers)[g_cur].parked = true;
    }
    yield();
  }
#ifdef LC_EMU_TSAN
  for (;;) yield();  // the launch is over: never resumed again
#else
  _longjmp(g_sched_env, 1);
#endif
}

inline void select(int f) {
  const int x = static_cast<int>(b_dim.x), y = static_cast<int>(b_dim.y);
  g_cur = f;
  t_idx = dim3(f % x, (f / x) % y, f / (x * y));
  t_lane = f % 32, t_warp = f / 32;
}

// A fiber's first start: a context that runs fiber_entry on the fiber's own stack.
inline void make_fiber_context(Fiber& fb) {
  fb.started = true;
  getcontext(&fb.uc);
  fb.uc.uc_stack.ss_sp = fb.stack;
  fb.uc.uc_stack.ss_size = kStack;
  fb.uc.uc_link = nullptr;
  makecontext(&fb.uc, fiber_entry, 0);
}

inline void resume(int f) {
  select(f);
  Fiber& fb = (*g_fibers)[f];
#ifdef LC_EMU_TSAN
  if (!fb.started) make_fiber_context(fb);
  __tsan_switch_to_fiber(fb.tsan, __tsan_switch_to_fiber_no_sync);
  swapcontext(&g_sched_uc, &fb.uc);
#else
  if (_setjmp(g_sched_env)) return;
  if (fb.started) _longjmp(fb.env, 1);
  make_fiber_context(fb);
  swapcontext(&g_sched_uc, &fb.uc);
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...) -> launcher(kernel, grid, block, smem, stream)(args...)
template <class K>
struct Launcher {
  K kernel;
  dim3 grid, block;
  size_t smem = 0;  // dynamic shared memory bytes
  cudaStream_t stream = nullptr;
  // Checked when issued, like a launch: a failure is the thread's last error and nothing runs.
  template <class... A>
  void operator()(A... args) const {
    if (machine().image.arch == 0) {
      t_last_error = cudaErrorNoKernelImageForDevice;
      return;
    }
    bool reaches = true;
    auto check = [&](const void* p) { reaches = reaches && reachable(p); };
    (each_pointer(args, check), ...);
    if (!reaches) {
      t_last_error = cudaErrorIllegalAddress;
      return;
    }
    if (smem > static_cast<size_t>(kDefaultDynSmem)) {
      std::lock_guard<std::mutex> lk(g_attr_m);
      auto it = g_dyn_smem_optin.find({t_device, reinterpret_cast<const void*>(kernel)});
      if (it == g_dyn_smem_optin.end() || static_cast<size_t>(it->second) < smem) {
        t_last_error = cudaErrorInvalidValue;  // what the hardware reports for too much dynamic shared memory
        return;
      }
    }
    const Launcher self = *this;
    submit(stream, [self, args...] { self.run(args...); });
  }
  template <class... A>
  void run(A... args) const {
    const int nt = static_cast<int>(block.x * block.y * block.z);
    const int64_t nb = static_cast<int64_t>(grid.x) * grid.y * grid.z;
    if (nt <= 0 || nb <= 0) return;
    LC_EMU_INTERNAL;
    g_exec_image = machine().image;
    Block blk;
    blk.warps = std::vector<Warp>((nt + 31) / 32);
    std::vector<Fiber> fibers(nt);
    for (int i = 0; i < nt; ++i) fibers[i].stack = fiber_stack(i);
#ifdef LC_EMU_TSAN
    g_sched_tsan = __tsan_get_current_fiber();
    for (auto& f : fibers) f.tsan = __tsan_create_fiber(0);
#endif
    g_block = &blk, g_fibers = &fibers, b_dim = block, g_dim = grid, g_blocks = nb;
    g_body = [&] { kernel(args...); };
    for (int64_t b = 0; b < nb; ++b) {
      b_idx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                   static_cast<unsigned>(b / (static_cast<int64_t>(grid.x) * grid.y)));
      blk.bar.reset(nt);
      for (int w = 0; w < static_cast<int>(blk.warps.size()); ++w) blk.warps[w].bar.reset(std::min(32, nt - 32 * w));
#ifdef LC_EMU_TSAN
      __tsan_acquire(&g_block_order);
#endif
      std::memset(g_dyn_smem, 0xff, std::min(smem, sizeof g_dyn_smem));  // uninitialized shared memory reads as NaN
#ifdef LC_EMU_TSAN
      __tsan_release(&g_block_order);
#endif
      for (auto& f : fibers) f.parked = f.waiting = false;
      g_wake = -1;
      // Alternate the order threads run in (forward, then backward) from round to round and block to
      // block, so that a missing barrier shows up as a wrong result whichever side of a race is first.
      for (int left = nt, round = 0; left > 0; ++round) {
        bool ran = false;
        const bool backward = ((b + round) & 1) != 0;
        for (int j = 0; j < nt; ++j) {
          const int i = backward ? nt - 1 - j : j;
          if (fibers[i].parked || fibers[i].waiting) continue;
          resume(i);
          ran = true;
          if (fibers[i].parked) --left;
          for (int w; (w = g_wake) >= 0;) {
            g_wake = -1;
            if (fibers[w].parked || fibers[w].waiting) continue;
            resume(w);
            if (fibers[w].parked) --left;
          }
        }
        if (!ran) {
          std::fprintf(stderr, "cuda emulator: deadlock in block %lld (%d threads wait on a barrier)\n",
                       static_cast<long long>(b), left);
          std::abort();
        }
      }
    }
#ifdef LC_EMU_TSAN
    __tsan_acquire(&g_block_order);  // the host reads what the blocks wrote
    for (auto& f : fibers) __tsan_destroy_fiber(f.tsan);
#else
    for (int i = 0; i < nt; ++i) resume(i);  // each fiber leaves its loop and returns to the scheduler
#endif
    g_block = nullptr, g_fibers = nullptr;
  }
};

template <class K>
Launcher<K> launcher(K kernel, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  if (smem > sizeof g_dyn_smem) {
    std::fprintf(stderr, "cuda emulator: %zu bytes of dynamic shared memory requested\n", smem);
    std::abort();
  }
  return Launcher<K>{kernel, grid, block, smem, stream};
}

}  // namespace lc_emu

#define threadIdx (lc_emu::t_idx)
#define blockIdx (lc_emu::b_idx)
#define blockDim (lc_emu::b_dim)
#define gridDim (lc_emu::g_dim)

inline void __syncthreads() { lc_emu::g_block->bar.arrive_and_wait(true); }
inline void __syncwarp(unsigned = 0xffffffffu) { lc_emu::warp().bar.arrive_and_wait(true); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  const uint64_t b = lc_emu::bits(v);
  T r{};
  lc_emu::exchange(&b, 1, [&](const uint64_t(*s)[12]) { r = lc_emu::from_bits<T>(s[lc_emu::t_lane ^ mask][0]); });
  return r;
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta) {
  const uint64_t b = lc_emu::bits(v);
  T r = v;
  lc_emu::exchange(&b, 1, [&](const uint64_t(*s)[12]) {
    if (lc_emu::t_lane >= static_cast<int>(delta)) r = lc_emu::from_bits<T>(s[lc_emu::t_lane - delta][0]);
  });
  return r;
}
inline unsigned __ballot_sync(unsigned, int pred) {
  const uint64_t b = pred ? 1 : 0;
  unsigned r = 0;
  lc_emu::exchange(&b, 1, [&](const uint64_t(*s)[12]) {
    for (int l = 0; l < 32; ++l)
      if (s[l][0]) r |= 1u << l;
  });
  return r;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }

template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicMin(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int cur = a.load();
  while (v < cur && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __uint_as_float(unsigned u) { return lc_emu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return static_cast<unsigned>(lc_emu::bits(f)); }
inline unsigned long long __double2ull_rn(double d) { return static_cast<unsigned long long>(std::nearbyint(d)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::isinf;
using std::isnan;
// CUDA's min / max overloads of device code
template <class T>
T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
T max(T a, T b) {
  return a < b ? b : a;
}

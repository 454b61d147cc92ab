// A CUDA emulator for the kernels in cuda/: just enough of the language and runtime for the kernel
// sources (after scripts/cuda-emu-sources.mjs rewrote their `<<<...>>>` launches and dynamic shared
// arrays) to compile as host C++ and run, one fiber per CUDA thread, so that test/native's
// emulation harness can hold them to the CPU oracle without a GPU. A launch runs synchronously:
// the blocks one after another (so `__shared__` arrays can be function statics), the threads of a
// block as cooperatively scheduled fibers; __syncthreads and the warp intrinsics are barriers;
// exited threads drop out of them like on the hardware. ldmatrix / mma (cuda/mma.cuh) exchange
// fragments across the warp per the PTX definitions (test/emu/mma_emu.h).
//
// What it cannot tell: anything about timing, memory ordering beyond the barriers, occupancy,
// register or shared memory limits, or the PTX instructions themselves.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <csetjmp>
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
enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInvalidValue = 1 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMultiProcessorCount,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaGetDevice(int* d) { return *d = 0, cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {  // an H100 SXM
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 232448; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
  }
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
namespace lc_emu {
// While a stream capture is being recorded (test/emu/runtime_emu.cc), launches and device copies
// are handed to it instead of running.
inline std::function<void(std::function<void()>)> g_record;
}  // namespace lc_emu
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (lc_emu::g_record) lc_emu::g_record([=] { std::memmove(d, s, n); });
  else std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }
inline const char* cudaGetErrorName(cudaError_t) { return "cudaEmulated"; }

// ---- threads, blocks, barriers -------------------------------------------------------------------------
// A block's CUDA threads are fibers (ucontext) on the calling OS thread: a barrier parks the fiber
// until every participant arrived, the scheduler then resumes the others in thread order. Cheap
// (no OS threads, no futexes) and deterministic; the order alternates (see run) to expose races.
namespace lc_emu {

struct Fiber {
  ucontext_t uc;       // the first entry only (it sets up the stack)
  jmp_buf env;         // every later switch: _setjmp / _longjmp, no signal-mask syscalls
  char* stack = nullptr;
  bool started = false, waiting = false, parked = false;  // parked: done with the current block
};

constexpr size_t kStack = 64 * 1024;
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

// Back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield() {
  if (!_setjmp((*g_fibers)[g_cur].env)) _longjmp(g_sched_env, 1);
}

// A barrier whose participants can leave (a returned CUDA thread no longer holds a barrier back).
class Barrier {
 public:
  void reset(int n) { expected_ = n, arrived_.clear(); }
  void arrive_and_wait() {
    if (static_cast<int>(arrived_.size()) + 1 >= expected_) {
      release();
      return;
    }
    arrived_.push_back(g_cur);
    (*g_fibers)[g_cur].waiting = true;
    yield();
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
template <class Read>
void exchange(const uint64_t* mine, int n, Read read) {
  Warp& w = warp();
  for (int i = 0; i < n; ++i) w.slot[t_lane][i] = mine[i];
  w.bar.arrive_and_wait();
  read(w.slot);
  w.bar.arrive_and_wait();
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
    g_body();
    g_block->bar.drop();
    warp().bar.drop();
    (*g_fibers)[g_cur].parked = true;
    yield();
  }
  _longjmp(g_sched_env, 1);
}

inline void select(int f) {
  const int x = static_cast<int>(b_dim.x), y = static_cast<int>(b_dim.y);
  g_cur = f;
  t_idx = dim3(f % x, (f / x) % y, f / (x * y));
  t_lane = f % 32, t_warp = f / 32;
}

inline void resume(int f) {
  select(f);
  Fiber& fb = (*g_fibers)[f];
  if (_setjmp(g_sched_env)) return;
  if (fb.started) _longjmp(fb.env, 1);
  fb.started = true;
  getcontext(&fb.uc);
  fb.uc.uc_stack.ss_sp = fb.stack;
  fb.uc.uc_stack.ss_size = kStack;
  fb.uc.uc_link = nullptr;
  makecontext(&fb.uc, fiber_entry, 0);
  swapcontext(&g_sched_uc, &fb.uc);
}

// kernel<<<grid, block, smem, stream>>>(args...) -> launcher(kernel, grid, block, smem, stream)(args...)
template <class K>
struct Launcher {
  K kernel;
  dim3 grid, block;
  size_t smem = 0;  // dynamic shared memory bytes
  template <class... A>
  void operator()(A... args) const {
    if (g_record) {
      const Launcher self = *this;
      g_record([self, args...] { self.run(args...); });
    } else {
      run(args...);
    }
  }
  template <class... A>
  void run(A... args) const {
    const int nt = static_cast<int>(block.x * block.y * block.z);
    const int64_t nb = static_cast<int64_t>(grid.x) * grid.y * grid.z;
    if (nt <= 0 || nb <= 0) return;
    Block blk;
    blk.warps = std::vector<Warp>((nt + 31) / 32);
    std::vector<Fiber> fibers(nt);
    for (int i = 0; i < nt; ++i) fibers[i].stack = fiber_stack(i);
    g_block = &blk, g_fibers = &fibers, b_dim = block, g_dim = grid, g_blocks = nb;
    g_body = [&] { kernel(args...); };
    for (int64_t b = 0; b < nb; ++b) {
      b_idx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                   static_cast<unsigned>(b / (static_cast<int64_t>(grid.x) * grid.y)));
      blk.bar.reset(nt);
      for (int w = 0; w < static_cast<int>(blk.warps.size()); ++w) blk.warps[w].bar.reset(std::min(32, nt - 32 * w));
      std::memset(g_dyn_smem, 0xff, std::min(smem, sizeof g_dyn_smem));  // uninitialized shared memory reads as NaN
      for (auto& f : fibers) f.parked = f.waiting = false;
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
        }
        if (!ran) {
          std::fprintf(stderr, "cuda emulator: deadlock in block %lld (%d threads wait on a barrier)\n", static_cast<long long>(b), left);
          std::abort();
        }
      }
    }
    for (int i = 0; i < nt; ++i) resume(i);  // each fiber leaves its loop and returns to the scheduler
    g_block = nullptr, g_fibers = nullptr;
  }
};

template <class K>
Launcher<K> launcher(K kernel, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  if (smem > sizeof g_dyn_smem) {
    std::fprintf(stderr, "cuda emulator: %zu bytes of dynamic shared memory requested\n", smem);
    std::abort();
  }
  return Launcher<K>{kernel, grid, block, smem};
}

}  // namespace lc_emu

#define threadIdx (lc_emu::t_idx)
#define blockIdx (lc_emu::b_idx)
#define blockDim (lc_emu::b_dim)
#define gridDim (lc_emu::g_dim)

inline void __syncthreads() { lc_emu::g_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { lc_emu::warp().bar.arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  const uint64_t b = lc_emu::bits(v);
  T r{};
  lc_emu::exchange(&b, 1, [&](const uint64_t (*s)[12]) { r = lc_emu::from_bits<T>(s[lc_emu::t_lane ^ mask][0]); });
  return r;
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta) {
  const uint64_t b = lc_emu::bits(v);
  T r = v;
  lc_emu::exchange(&b, 1, [&](const uint64_t (*s)[12]) {
    if (lc_emu::t_lane >= static_cast<int>(delta)) r = lc_emu::from_bits<T>(s[lc_emu::t_lane - delta][0]);
  });
  return r;
}
inline unsigned __ballot_sync(unsigned, int pred) {
  const uint64_t b = pred ? 1 : 0;
  unsigned r = 0;
  lc_emu::exchange(&b, 1, [&](const uint64_t (*s)[12]) {
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

// Expert-parallel dispatch and combine on the GPU, single-kernel peer-pointer form (contract: ep.h,
// native/cpu/ep.h). The slots and partials may be on other devices (peer pointers): a home rank's
// dispatch writes straight into the receivers' memory, its combine reads their partial rows.
// Dispatch: a block per destination rank (at most `blocks`, looping) walks the tokens in tiles, a
// scan of the tile's "goes to this rank" flags gives each token its row, then the block copies the
// rows (u, local ids, weights), pads the rest of the slot and releases the destination's flag;
// block 0 then waits for this rank's own flags. Combine: block 0 releases this rank's "partials
// ready" flags, every block waits for the home's, then tokens over blocks, threads over columns,
// partial rows added in rank order, then the zero-expert term. Not tuned: the tile scan is serial
// in one thread, the copies are plain loads and stores.
#include <algorithm>
#ifdef LC_CUDA_EMU
#include <chrono>
#include <thread>
#endif

#include "include/common.cuh"
#include "include/small_util.cuh"
#include "ep.h"
#include "../native/cpu/ep.h"
#include "../native/cpu/zero_experts.h"

namespace lc::gpu {

#ifdef LC_CUDA_EMU
// The addresses the slot tables carry, for the emulator's peer-access check of each launch.
template <class F>
void each_pointer(const EpSlots& s, F& f) {
  for (int64_t r = 0; r < kEpMaxRanks; ++r) f(s.count[r]), f(s.x[r]), f(s.idx[r]), f(s.w[r]), f(s.scale[r]);
}
template <class F>
void each_pointer(const EpFlags& s, F& f) {
  for (int64_t r = 0; r < kEpMaxRanks; ++r) f(s.f[r]);
}
template <class F>
void each_pointer(const EpWait& s, F& f) {
  f(s.flags), f(s.pad_idx), f(s.pad_w), f(s.counts), f(s.counter), f(s.dq), f(s.dscale), f(s.dx);
}
template <class F>
void each_pointer(const EpPartials& p, F& f) {
  for (int64_t r = 0; r < kEpMaxRanks; ++r) f(p.rows[r]);
}
#endif

namespace {

constexpr int kThreads = 256;

// The flag protocol's memory operations at system scope (the peer may be another GPU); the
// emulator's device memory is host memory, so the host's atomics are the same thing there.
#ifdef LC_CUDA_EMU
__device__ int32_t load_acquire(const int32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
__device__ void store_release(int32_t* p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
__device__ void fence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__device__ uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}
__device__ void backoff() { std::this_thread::yield(); }
__device__ bool raise_abort(int32_t* abort, int32_t code) { return cpu::ep_raise(abort, code); }
#else
__device__ int32_t load_acquire(const int32_t* p) {
  int32_t v;
  asm volatile("ld.acquire.sys.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ void store_release(int32_t* p, int32_t v) {
  asm volatile("st.release.sys.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ void fence_system() { __threadfence_system(); }
__device__ uint64_t now_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ void backoff() { __nanosleep(100); }
__device__ bool raise_abort(int32_t* abort, int32_t code) { return atomicCAS(abort, 0, code) == 0; }
#endif

__device__ bool chooses_rank(const int32_t* ix, int64_t k, int64_t n_routed, int64_t per_rank, int64_t d) {
  for (int64_t j = 0; j < k; ++j)
    if (ix[j] >= 0 && ix[j] < n_routed && ix[j] / per_rank == d) return true;
  return false;
}

// One thread acquires wait.flags[0..n) in turn, giving up when the abort word is raised or the
// budget (wall time: %globaltimer) is spent; a timeout raises the word with its reason. Whether
// every flag was seen.
__device__ bool acquire_flags(const EpWait& wait, int32_t* abort) {
  const uint64_t start = now_ns();
  for (int64_t i = 0; i < wait.n; ++i)
    while (load_acquire(wait.flags + i) == 0) {
      if (abort && load_acquire(abort) != 0) return false;
      if (now_ns() - start >= static_cast<uint64_t>(wait.timeout_ns)) {
        if (abort) raise_abort(abort, cpu::ep_wait_failure(wait.kind, wait.rank, wait.peer[i]));
        return false;
      }
      backoff();
    }
  return true;
}

// The dispatch's wait (one block): flags lowered after (the next layer's senders come only after
// the round trip through combine), or on failure the receive rows padded.
__device__ void dispatch_wait(const EpWait& wait, int32_t* abort) {
  __shared__ int32_t s_ok;
  if (threadIdx.x == 0) {
    s_ok = acquire_flags(wait, abort);
    if (s_ok)
      for (int64_t i = 0; i < wait.n; ++i) wait.flags[i] = 0;
  }
  __syncthreads();
  if (s_ok) {
    // An FP8 payload: the rows to f32, as cpu::dequantize_fp8_group (one f32 rounding).
    for (int64_t j = threadIdx.x; wait.dq && j < wait.drows * wait.dh; j += blockDim.x) {
      const int64_t r = j / wait.dh, c = j % wait.dh;
      wait.dx[j] = __fmul_rn(fp8e4m3_to_f32(wait.dq[j]), wait.dscale[r * ((wait.dh + 127) / 128) + c / 128]);
    }
    return;
  }
  if (!wait.pad_idx) return;
  for (int64_t j = threadIdx.x; j < wait.pad_rows * wait.k; j += blockDim.x) {
    wait.pad_idx[j] = static_cast<int32_t>(wait.per_rank);
    wait.pad_w[j] = 0.0f;
  }
  for (int64_t j = threadIdx.x; j < wait.pad_counts; j += blockDim.x) wait.counts[j] = 0;
}

// One destination's slot from this home: rows, row_of column, padding, count; then its flag.
__device__ void send_to(int64_t d, int64_t t, int64_t k, int64_t h, const float* __restrict__ u, const int32_t* __restrict__ idx,
                        const float* __restrict__ w, int64_t n_routed, int64_t per_rank, int64_t ranks, int64_t capacity,
                        const EpSlots& slots, int32_t* __restrict__ row_of, int32_t* abort, bool fail, bool dead,
                        const EpFlags& ready) {
  __shared__ int32_t s_flag[kThreads];
  __shared__ int32_t s_row[kThreads];
  __shared__ int32_t s_tok[kThreads];
  __shared__ int32_t s_n;
  const int tid = threadIdx.x;
  float* x = static_cast<float*>(slots.x[d]);
  uint8_t* q = static_cast<uint8_t*>(slots.x[d]);  // an FP8 payload's bytes
  float* scale = slots.scale[d];
  const int64_t groups = (h + 127) / 128;
  int32_t* sidx = slots.idx[d];
  float* sw = slots.w[d];
  int64_t base = 0;
  if (dead)
    for (int64_t i = tid; i < t; i += kThreads) row_of[i * ranks + d] = -1;
  for (int64_t tile = 0; tile < (dead ? 0 : t); tile += kThreads) {
    const int64_t i = tile + tid;
    s_flag[tid] = i < t && chooses_rank(idx + i * k, k, n_routed, per_rank, d);
    __syncthreads();
    if (tid == 0) {
      int32_t n = 0;
      for (int j = 0; j < kThreads; ++j) {
        s_row[j] = s_flag[j] ? static_cast<int32_t>(base + n) : -1;
        if (s_flag[j]) s_tok[n++] = static_cast<int32_t>(tile + j);
      }
      s_n = n;
    }
    __syncthreads();
    if (i < t) row_of[i * ranks + d] = s_row[tid];
    const int64_t n = s_n;
    if (scale) {  // a warp per (row, 1 x 128 group), bit-exact with cpu::quantize_fp8_group
      const int lane = tid % 32;
      for (int64_t j = tid / 32; j < n * groups; j += kThreads / 32) {
        const int64_t r = j / groups, g = j % groups, row = base + r;
        if (row >= capacity) continue;  // uniform over the warp
        const float* src = u + static_cast<int64_t>(s_tok[r]) * h + g * 128;
        const int len = static_cast<int>(h - g * 128 < 128 ? h - g * 128 : 128);
        float v[4];
        for (int i = 0; i < 4; ++i) v[i] = lane + 32 * i < len ? src[lane + 32 * i] : 0.0f;
        const float sc = util::warp_quantize_fp8_group(v, len, lane, q + row * h + g * 128);
        if (lane == 0) scale[row * groups + g] = sc;
      }
    } else {
      for (int64_t j = tid; j < n * h; j += kThreads) {
        const int64_t r = j / h, c = j % h, row = base + r;
        if (row < capacity) x[row * h + c] = u[static_cast<int64_t>(s_tok[r]) * h + c];
      }
    }
    for (int64_t j = tid; j < n * k; j += kThreads) {
      const int64_t r = j / k, s = j % k, row = base + r, src = static_cast<int64_t>(s_tok[r]) * k + s;
      if (row >= capacity) continue;
      const int32_t e = idx[src];
      const bool mine = e >= 0 && e < n_routed && e / per_rank == d;
      sidx[row * k + s] = static_cast<int32_t>(mine ? e - d * per_rank : per_rank);
      sw[row * k + s] = mine ? w[src] : 0.0f;
    }
    base += n;
    __syncthreads();  // s_flag / s_tok are rewritten by the next tile
  }
  const int64_t used = base < capacity ? base : capacity, pad = capacity - used;
  if (scale) {
    for (int64_t j = tid; j < pad * h; j += kThreads) q[used * h + j] = 0;
    for (int64_t j = tid; j < pad * groups; j += kThreads) scale[used * groups + j] = 0.0f;
  } else {
    for (int64_t j = tid; j < pad * h; j += kThreads) x[used * h + j] = 0.0f;
  }
  for (int64_t j = tid; j < pad * k; j += kThreads) {
    sidx[used * k + j] = static_cast<int32_t>(per_rank);
    sw[used * k + j] = 0.0f;
  }
  if (tid == 0) {
    *slots.count[d] = static_cast<int32_t>(base);
    if ((fail || base > capacity) && abort) raise_abort(abort, cpu::kEpAbortFailed);
  }
  __syncthreads();  // the block's payload, then (one thread, system scope) the flag
  if (tid == 0 && ready.f[d]) {
    fence_system();
    store_release(ready.f[d], 1);
  }
}

__global__ void ep_dispatch_kernel(int64_t t, int64_t k, int64_t h, const float* __restrict__ u, const int32_t* __restrict__ idx,
                                   const float* __restrict__ w, int64_t n_routed, int64_t per_rank, int64_t ranks,
                                   int64_t capacity, EpSlots slots, int32_t* __restrict__ row_of, int32_t* abort, bool fail,
                                   EpFlags ready, EpWait wait) {
  // A failed step (the flag raised, or this dispatch told to fail) sends nothing: padding only.
  const bool dead = fail || (abort && load_acquire(abort) != 0);
  for (int64_t d = blockIdx.x; d < ranks; d += gridDim.x)
    send_to(d, t, k, h, u, idx, w, n_routed, per_rank, ranks, capacity, slots, row_of, abort, fail, dead, ready);
  if (wait.flags && blockIdx.x == 0) dispatch_wait(wait, abort);
}

__global__ void ep_combine_kernel(int64_t t, int64_t k, int64_t h, const float* __restrict__ u, const int32_t* __restrict__ idx,
                                  const float* __restrict__ w, int64_t n_routed, int64_t n_experts,
                                  const int32_t* __restrict__ row_of, int64_t ranks, int64_t capacity, EpPartials partials,
                                  float* __restrict__ out, int32_t* abort, EpFlags signal, int64_t n_signal, EpWait wait) {
  // This rank's partials (the stream's earlier work) are ready: tell the homes.
  if (blockIdx.x == 0 && threadIdx.x < n_signal && signal.f[threadIdx.x]) {
    fence_system();
    store_release(signal.f[threadIdx.x], 1);
  }
  __shared__ int32_t s_ok;
  if (threadIdx.x == 0) s_ok = !wait.flags || acquire_flags(wait, abort);
  __syncthreads();
  if (s_ok && t > 0 && !(abort && load_acquire(abort) != 0)) {
    for (int64_t i = blockIdx.x; i < t; i += gridDim.x) {
      // The zero-expert weight in ascending (expert id, slot) order, as cpu::moe sums it.
      float z;
      const bool any = cpu::zero_expert_weight(idx + i * k, w + i * k, k, n_routed, n_experts, &z);
      for (int64_t c = threadIdx.x; c < h; c += blockDim.x) {
        float o = 0.0f;
        for (int64_t d = 0; d < ranks; ++d) {
          const int32_t row = row_of[i * ranks + d];
          if (row >= 0 && row < capacity) o += partials.rows[d][static_cast<int64_t>(row) * h + c];
        }
        if (any) o = __fadd_rn(o, __fmul_rn(z, u[i * h + c]));  // no fma: the CPU twin rounds the product
        out[i * h + c] = o;
      }
    }
  } else {  // the step failed: the partials may be garbage
    for (int64_t i = blockIdx.x; i < t; i += gridDim.x)
      for (int64_t c = threadIdx.x; c < h; c += blockDim.x) out[i * h + c] = 0.0f;
  }
  if (!wait.flags) return;
  // Every block has seen the flags (or given up): the last one out lowers them for the next layer.
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(wait.counter, 1) == static_cast<int32_t>(gridDim.x) - 1) {
    if (s_ok)
      for (int64_t i = 0; i < wait.n; ++i) wait.flags[i] = 0;
    *wait.counter = 0;
  }
}

}  // namespace

void ep_dispatch(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                 int64_t per_rank, int64_t ranks, int64_t capacity, const EpSlots& slots, int32_t* row_of, int32_t* abort,
                 bool fail, const EpFlags& ready, const EpWait& wait, int64_t blocks, void* stream) {
  const int64_t send = t >= 0 && slots.x[0] ? ranks : 0;  // no slots: a wait alone
  const int64_t grid = std::max<int64_t>(1, std::min(send, blocks));
  if (send == 0 && !wait.flags) return;
  ep_dispatch_kernel<<<static_cast<unsigned>(grid), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      t, k, h, u, idx, w, n_routed, per_rank, send, capacity, slots, row_of, abort, fail, ready, wait);
}

void ep_combine(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, int64_t n_routed,
                int64_t n_experts, const int32_t* row_of, int64_t ranks, int64_t capacity, const EpPartials& partials, float* out,
                int32_t* abort, const EpFlags& signal, int64_t n_signal, const EpWait& wait, int64_t blocks, void* stream) {
  if (t <= 0 && n_signal <= 0 && !wait.flags) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(kEpMaxRanks, (h + 31) / 32 * 32)));
  const int64_t grid = std::max<int64_t>(1, std::min({t, blocks, int64_t{65535}}));
  ep_combine_kernel<<<static_cast<unsigned>(grid), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      t, k, h, u, idx, w, n_routed, n_experts, row_of, ranks, capacity, partials, out, abort, signal, n_signal, wait);
}

}  // namespace lc::gpu

// cuda/include/hopper.cuh under the CPU emulator (test/emu/cuda_emu.h), from the PTX ISA's definitions:
//   * tensor map: base, dims, row stride, box; a TMA tile load copies the box row by row into
//     shared memory with the 128-byte swizzle (16-byte chunk c of 128-byte line r lands at chunk
//     c ^ (r % 8)), zero-filling out-of-bounds elements, then completes its bytes on the mbarrier;
//   * mbarrier: an arrival count and a transaction count per phase; a phase completes when both
//     reach zero; try_wait.parity(p) succeeds once the phase of parity p completed. A thread waiting
//     on it runs right after the arrival that completes a phase, and an arriving thread yields, so a
//     stage released too early is refilled before its readers are done, as it could be on the card;
//   * wgmma m64nNk16 with K-major shared-memory descriptors (start >> 4, LBO, SBO >> 4, swizzle
//     mode 1 = 128B): element (row, k) of an operand sits at start + (row / 8) * SBO + (row % 8) *
//     128 + 2 k, with address bits 4-6 XORed with bits 7-9; thread t of the warpgroup holds
//     accumulator j at row 16 (t / 32) + (t % 32) / 4 + 8 ((j % 4) / 2), column 8 (j / 4) +
//     2 (t % 4) + j % 2. Each thread computes its own accumulators;
//   * wgmma is asynchronous: an issued wgmma.mma_async only joins the thread's open batch; commit
//     closes the batch into a group, and wait_group(N) runs the oldest groups until N are left, reading
//     the shared-memory operands and updating the accumulators then. A kernel that releases a stage
//     (an mbarrier arrival the producer's TMA waits on) before the wait that retires its wgmmas gets
//     the overwritten tile here, as it could on the card.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <vector>

#include "../../native/cpu/numeric.h"
#include "cuda_emu.h"

struct CUtensorMap {
  const uint8_t* base;
  uint64_t dims[2];  // {k, rows}
  uint64_t stride;   // bytes per row
  uint32_t box[2];   // {k, rows}
};

#define LC_WGMMA 1

namespace lc::gpu::hopper {

inline uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(static_cast<const uint8_t*>(p) - lc_emu::g_dyn_smem); }
inline uint8_t* smem_ptr(uint32_t a) { return lc_emu::g_dyn_smem + a; }
inline uint32_t swizzle128(uint32_t a) { return a ^ (((a >> 7) & 7u) << 4); }

inline uint64_t desc_128b(const void* p) {
  const uint64_t addr = smem_u32(p);
  return ((addr & 0x3ffff) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

struct MBar {
  int expected = 0, pending = 0;
  int64_t tx = 0;
  uint64_t completed = 0;  // phases completed
  int waiter = -1;         // the thread that last waited on it (woken first when a phase completes)
};
inline std::unordered_map<const uint64_t*, MBar>& mbars() {
  static std::unordered_map<const uint64_t*, MBar> m;
  return m;
}
inline void mbar_check(MBar& b) {
  if (b.pending == 0 && b.tx == 0) {
    ++b.completed;
    b.pending = b.expected;
    lc_emu::g_wake = b.waiter;  // the scheduler runs it next: the earliest a waiter could go on the card
  }
}
inline void mbar_init(uint64_t* bar, uint32_t count) {
  MBar b;
  b.expected = b.pending = static_cast<int>(count);
  mbars()[bar] = b;
}
inline void mbar_fence_init() {}
inline void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  MBar& b = mbars().at(bar);
  b.tx += bytes;
  --b.pending;
  mbar_check(b);
}
inline void mbar_arrive(uint64_t* bar) {
  MBar& b = mbars().at(bar);
  --b.pending;
  mbar_check(b);
  lc_emu::yield();  // a waiter (the producer) runs before this thread's next instruction
}
inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  for (int spins = 0; ((mbars().at(bar).completed & 1) == parity); ++spins) {
    if (spins > 1000000) {
      std::fprintf(stderr, "cuda emulator: an mbarrier wait never completes (thread %d, parity %u, %llu phases completed)\n",
                   lc_emu::g_cur, parity, static_cast<unsigned long long>(mbars().at(bar).completed));
      std::abort();
    }
    mbars().at(bar).waiter = lc_emu::g_cur;
    lc_emu::yield();  // let the other threads run (the producer may not have issued the copy yet)
  }
}

inline void tma_load_2d(void* dst, const CUtensorMap* map, int32_t c0, int32_t c1, uint64_t* bar) {
  const uint32_t d = smem_u32(dst);
  for (uint32_t r = 0; r < map->box[1]; ++r)
    for (uint32_t e = 0; e < map->box[0]; ++e) {
      const int64_t gr = c1 + static_cast<int64_t>(r), gk = c0 + static_cast<int64_t>(e);
      uint16_t v = 0;
      if (gr >= 0 && gk >= 0 && static_cast<uint64_t>(gr) < map->dims[1] && static_cast<uint64_t>(gk) < map->dims[0])
        std::memcpy(&v, map->base + gr * map->stride + 2 * gk, 2);
      std::memcpy(smem_ptr(swizzle128(d + r * 2 * map->box[0] + 2 * e)), &v, 2);
    }
  MBar& b = mbars().at(bar);
  b.tx -= static_cast<int64_t>(2) * map->box[0] * map->box[1];
  mbar_check(b);
}

inline void wgmma_fence() {}
inline void fence_operands(float (&)[64]) {}

// bf16 element (row, k) of a K-major, 128B-swizzled operand described by `desc`
inline float operand(uint64_t desc, int row, int k) {
  if ((desc >> 62) != 1) {
    std::fprintf(stderr, "cuda emulator: only 128B-swizzled wgmma descriptors are emulated\n");
    std::abort();
  }
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fff) << 4, sbo = static_cast<uint32_t>((desc >> 32) & 0x3fff) << 4;
  const uint32_t a = swizzle128(start + (row / 8) * sbo + (row % 8) * 128 + 2 * k);
  uint16_t v;
  std::memcpy(&v, smem_ptr(a), 2);
  return cpu::bf16_to_f32(v);
}

// d (this thread's 64 accumulators of the m64n128 tile) += A (desc) * B (desc)^T, computed now.
// An image without the sm_90a feature set has no wgmma (the kernel body is compiled out there):
// nothing is accumulated.
inline void wgmma_m64n128k16_now(float* d, uint64_t a, uint64_t b) {
  if (!(lc_emu::g_exec_image.arch == 90 && lc_emu::g_exec_image.specific)) return;
  const int t = lc_emu::t_warp % 4 * 32 + lc_emu::t_lane;
  for (int j = 0; j < 64; ++j) {
    const int row = 16 * (t / 32) + (t % 32) / 4 + 8 * ((j % 4) / 2), col = 8 * (j / 4) + 2 * (t % 4) + j % 2;
    float acc = d[j];
    for (int k = 0; k < 16; ++k) acc += operand(a, row, k) * operand(b, col, k);
    d[j] = acc;
  }
}

// Each CUDA thread's wgmmas not yet retired: the open batch and the committed groups, oldest first.
struct WgmmaOp {
  float* d;
  uint64_t a, b;
};
struct WgmmaQueue {
  std::vector<WgmmaOp> open;
  std::deque<std::vector<WgmmaOp>> groups;
};
inline WgmmaQueue& wgmma_queue() {
  static std::vector<WgmmaQueue> queues;  // by thread of the block (blocks run one after another)
  if (static_cast<int>(queues.size()) <= lc_emu::g_cur) queues.resize(lc_emu::g_cur + 1);
  return queues[lc_emu::g_cur];
}

inline void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b) { wgmma_queue().open.push_back({d, a, b}); }
inline void wgmma_commit() {
  WgmmaQueue& q = wgmma_queue();
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}
template <int kPending>
inline void wgmma_wait() {
  WgmmaQueue& q = wgmma_queue();
  while (static_cast<int>(q.groups.size()) > kPending) {
    for (const WgmmaOp& op : q.groups.front()) wgmma_m64n128k16_now(op.d, op.a, op.b);
    q.groups.pop_front();
  }
  __syncwarp();  // .sync: no lane goes on (to release a stage, say) before every lane of its warp retired
}

inline CUtensorMap tensor_map_bf16(const void* base, int64_t rows, int64_t k, uint32_t box_k, uint32_t box_rows) {
  CUtensorMap m;
  m.base = static_cast<const uint8_t*>(base);
  m.dims[0] = static_cast<uint64_t>(k), m.dims[1] = static_cast<uint64_t>(rows);
  m.stride = static_cast<uint64_t>(k) * 2;
  m.box[0] = box_k, m.box[1] = box_rows;
  return m;
}

}  // namespace lc::gpu::hopper

// The CPU absorbed MLA decode ops (native/cpu/mla.cc: mla_decode_absorbed, mla_absorb_q,
// mla_output) alone, at the small preset's shapes (8 heads, kv_lora 128 + rope 16, nope / v 32) or
// the medium one's (16 heads, 256 + 32, 64 / 64), over a bf16 (or f32 / fp8) paged latent cache:
// B sequences of ctx + b keys each (b = 0 .. B-1: lengths differ, as after a serving step's
// admissions), blocks of 64 rows handed out round robin over the sequences (as a block allocator
// serving B growing sequences does). Warm: the same cache every call (the kernels' compute rate);
// cold: one of `copies` caches in turn (32 MB or more in all: the rows come from L3 / DRAM, as in a
// decode step). absorb_q / output likewise: warm = one kv_b_proj every call, cold = one of 32 MB of
// copies in turn (a step's weights come from DRAM). Microseconds per call, the least of `rounds`
// medians of `reps` calls.
//
// Calls run inside a parallel region of the pool (ThreadPool::Region), as a replayed decode step's
// do.
//
// Build and run (after `npm run build`; under the heavy lock):
//   g++ -O2 -std=c++17 -Inative bench/native/mla_decode.cc build/CMakeFiles/longcat_cpu.dir/native/cpu/*.o -lpthread
//     -o /tmp/mla_decode
//   /tmp/mla_decode [--preset small|medium] [--batch 1,16,64] [--ctx 100] [--threads 1,2] [--cache bf16|f32|fp8]
//                   [--rounds 5] [--reps 20] [--evict 1: 8 MiB written by the pool's threads before each call, so
//                   that the activations and the caches' rows are out of L1 / L2 as between a step's nodes]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu/mla.h"
#include "cpu/numeric.h"
#include "cpu/threadpool.h"

using namespace lc;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

static std::vector<int> ints(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p) ++p;
  }
  return v;
}

int main(int argc, char** argv) {
  std::string preset = "small", cache_name = "bf16";
  std::vector<int> batches = {1, 16, 64}, threads = {1, 2};
  int ctx = 100, rounds = 5, reps = 20, evict = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--preset")
      preset = argv[i + 1];
    else if (a == "--batch")
      batches = ints(argv[i + 1]);
    else if (a == "--threads")
      threads = ints(argv[i + 1]);
    else if (a == "--ctx")
      ctx = std::atoi(argv[i + 1]);
    else if (a == "--cache")
      cache_name = argv[i + 1];
    else if (a == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (a == "--evict")
      evict = std::atoi(argv[i + 1]);
  }
  cpu::MlaDims d;
  if (preset == "medium")
    d = {16, 64, 32, 64, 256};
  else
    d = {8, 32, 16, 32, 128};
  const cpu::MlaCache cf = cache_name == "f32"   ? cpu::MlaCache::F32
                           : cache_name == "fp8" ? cpu::MlaCache::FP8
                                                 : cpu::MlaCache::BF16;
  const int64_t row_bytes = cf == cpu::MlaCache::F32    ? 4 * (d.dl + d.dr)
                            : cf == cpu::MlaCache::BF16 ? 2 * (d.dl + d.dr)
                                                        : cpu::mla_fp8_row_bytes(d.dl, d.dr);
  const int64_t bs = 64, dk = d.dn + d.dr;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const auto fill = [&](std::vector<float>& v) {
    for (float& x : v) x = uni(rng);
  };
  std::printf(
      "preset %s cache %s ctx %d (+b)\n| B | threads | decode warm us | decode cold us | absorb_q us | output us "
      "| absorb_q cold us | output cold us |\n|---|---|---|---|---|---|---|---|\n",
      preset.c_str(), cache_name.c_str(), ctx);
  std::vector<float> trash(evict ? (8 << 20) / sizeof(float) : 0);
  for (int B : batches) {
    const int64_t maxb = (ctx + B + bs - 1) / bs, nblocks = B * maxb;
    const int64_t cache_bytes = nblocks * bs * row_bytes;
    const int copies = static_cast<int>(std::max<int64_t>(2, (64ll << 20) / std::max<int64_t>(cache_bytes, 1)));
    std::vector<std::vector<uint8_t>> caches(copies, std::vector<uint8_t>(cache_bytes));
    {
      // Rows written through mla_cache_write (so fp8 gets its scales): every slot of every block.
      std::vector<float> ckv(nblocks * bs * d.dl), kpe(nblocks * bs * d.dr);
      fill(ckv);
      fill(kpe);
      std::vector<int32_t> slots(nblocks * bs);
      for (int64_t s = 0; s < nblocks * bs; ++s) slots[s] = static_cast<int32_t>(s);
      for (auto& c : caches) cpu::mla_cache_write(d, nblocks * bs, c.data(), cf, bs, ckv.data(), kpe.data(), slots.data());
    }
    std::vector<int32_t> bt(B * maxb), lens(B);
    for (int b = 0; b < B; ++b) {
      lens[b] = ctx + b;
      for (int64_t k = 0; k < maxb; ++k) bt[b * maxb + k] = static_cast<int32_t>(k * B + b);  // round robin
    }
    std::vector<float> q(B * d.nh * dk), q_lat(B * d.nh * d.dl), o_lat(B * d.nh * d.dl), o(B * d.nh * d.dv);
    const int64_t wn = d.nh * (d.dn + d.dv) * d.dl;
    const int wcopies = static_cast<int>(std::max<int64_t>(2, (32ll << 20) / (2 * wn)));
    std::vector<uint16_t> wkvb(wn * wcopies);
    fill(q);
    fill(q_lat);
    for (auto& w : wkvb) w = cpu::f32_to_bf16(uni(rng) * 0.1f);
    for (int th : threads) {
      cpu::ThreadPool::global().set_threads(th);
      const int64_t units = 2 * th;
      std::vector<float> ws(cpu::mla_decode_workspace_floats(d, B, units));
      double best[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
      cpu::ThreadPool::Region reg(cpu::ThreadPool::global());
      int next = 0;
      for (int r = 0; r < rounds; ++r) {
        for (int kind = 0; kind < 6; ++kind) {
          std::vector<double> t;
          for (int i = 0; i < reps + 2; ++i) {
            // --evict 1: the activations (q, q_lat, o_lat, o) and the caches evicted from L1 / L2 before
            // each call, as between a decode step's nodes (untimed)
            if (evict)  // every thread's L2: 8 MiB written in per-thread halves
              cpu::parallel_for(static_cast<int64_t>(trash.size()), static_cast<int64_t>(trash.size()) / th,
                                [&](int64_t k0, int64_t k1) {
                                  for (int64_t k = k0; k < k1; k += 16) trash[k] += 1.0f;
                                });
            const double t0 = now();
            if (kind < 2) {
              const void* c = caches[kind == 0 ? 0 : 1 + next++ % (copies - 1)].data();
              cpu::mla_decode_absorbed(d, B, o_lat.data(), q_lat.data(), q.data(), c, cf, bs, bt.data(), maxb, lens.data(),
                                       0.125f, ws.data(), units);
            } else {
              const uint16_t* w = wkvb.data() + (kind < 4 ? 0 : (1 + next++ % (wcopies - 1)) * wn);
              if (kind % 2 == 0)
                cpu::mla_absorb_q(d, B, q_lat.data(), q.data(), w, true);
              else
                cpu::mla_output(d, B, o.data(), o_lat.data(), w, true);
            }
            if (i >= 2) t.push_back(now() - t0);
          }
          std::sort(t.begin(), t.end());
          best[kind] = std::min(best[kind], t[t.size() / 2] * 1e6);
        }
      }
      std::printf("| %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", B, th, best[0], best[1], best[2], best[3], best[4],
                  best[5]);
      std::fflush(stdout);
    }
  }
  return 0;
}

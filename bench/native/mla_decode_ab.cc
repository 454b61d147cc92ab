// mla_decode_absorbed A/B in one process: a baseline build's mla.cc object (its mla_* symbols renamed
// base_*) against the tree's, alternated block by block (reps calls each, warm and cold caches, as
// mla_decode.cc), so the host's noise hits both alike. Prints the least per-call medians, the
// median (min-max) of the per-round new/base ratios, GFLOP/s (4 dl + 2 dr per key and head) and the
// largest |o_lat| difference. Presets: small, medium, flash (64 heads, 512 + 64).
//
// Build (under the heavy lock; BASE = the baseline's build/CMakeFiles/longcat_cpu.dir/native/cpu):
//   nm --defined-only -g $BASE/mla.cc.o | awk '$3 ~ /^_ZN2lc3cpu[0-9]+mla_/ {n=$3; sub(/^_ZN2lc3cpu[0-9]+/,"",n);
//     sub(/ERKNS0.*/,"",n); print $3, "base_" n}' > /tmp/syms.txt
//   objcopy --redefine-syms=/tmp/syms.txt $BASE/mla.cc.o /tmp/base_mla.o
//   g++ -O3 -DNDEBUG -fPIC -fno-math-errno -std=gnu++17 -Inative -c native/cpu/mla.cc -o /tmp/new_mla.o
//   g++ -O2 -std=c++17 -Inative bench/native/mla_decode_ab.cc /tmp/new_mla.o /tmp/base_mla.o \
//     $(ls $BASE/*.o | grep -v /mla.cc.o) -lpthread -o /tmp/mla_ab
//   /tmp/mla_ab [--preset small|medium|flash] [--batch 16,64] [--ctx 500] [--threads 1,2] [--rounds 7] [--reps 10]
//     [--rows R]  (a verify step's layout: --batch sequences of R rows each, see the first line printed)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#include "cpu/mla.h"
#include "cpu/numeric.h"
#include "cpu/threadpool.h"
using namespace lc;
extern "C" void base_mla_decode_absorbed(const cpu::MlaDims& d, int64_t batch, float* o_lat, const float* q_lat, const float* q,
                                         const void* cache, cpu::MlaCache cf, int64_t block_size, const int32_t* block_table,
                                         int64_t max_blocks, const int32_t* seq_lens, float scale, float* workspace,
                                         int64_t units);
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
  std::string preset = "small";
  std::vector<int> batches = {16, 64}, threads = {1};
  int ctx = 500, rounds = 7, reps = 10, rows = 0;
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
    else if (a == "--rounds")
      rounds = std::atoi(argv[i + 1]);
    else if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (a == "--rows")
      rows = std::atoi(argv[i + 1]);
  }
  cpu::MlaDims d;
  if (preset == "medium")
    d = {16, 64, 32, 64, 256};
  else if (preset == "flash")
    d = {64, 128, 64, 128, 512};
  else
    d = {8, 32, 16, 32, 128};
  const int64_t row_bytes = 2 * (d.dl + d.dr), bs = 64, dk = d.dn + d.dr;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  if (rows > 0)
    printf(
        "verify layout: B sequences of ctx + (29 s) %% 200 keys, %d rows each (row r: len - %d + r), the block table repeated\n",
        rows, rows - 1);
  printf("preset %s ctx %d (+b): us per call, median of %d reps, per-round new/base\n", preset.c_str(), ctx, reps);
  printf(
      "| B | thr | warm base | warm new | new/base warm (min-max) | GFLOP/s base/new | cold base | cold new | new/base cold | "
      "max|diff| |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (int NS : batches) {
    const int B = rows > 0 ? NS * rows : NS;  // rows of the call
    const int64_t maxb = (ctx + (rows > 0 ? 200 : B) + bs - 1) / bs, nblocks = NS * maxb, cache_bytes = nblocks * bs * row_bytes;
    const int copies = static_cast<int>(std::max<int64_t>(2, (64ll << 20) / cache_bytes));
    std::vector<std::vector<uint8_t>> caches(copies, std::vector<uint8_t>(cache_bytes));
    {
      std::vector<float> ckv(nblocks * bs * d.dl), kpe(nblocks * bs * d.dr);
      for (auto& x : ckv) x = uni(rng);
      for (auto& x : kpe) x = uni(rng);
      std::vector<int32_t> slots(nblocks * bs);
      for (int64_t s = 0; s < nblocks * bs; ++s) slots[s] = static_cast<int32_t>(s);
      for (auto& c : caches)
        cpu::mla_cache_write(d, nblocks * bs, c.data(), cpu::MlaCache::BF16, bs, ckv.data(), kpe.data(), slots.data());
    }
    std::vector<int32_t> bt(B * maxb), lens(B);
    int64_t keys = 0;
    for (int b = 0; b < B; ++b) {
      const int s = rows > 0 ? b / rows : b;  // the row's sequence
      lens[b] = rows > 0 ? ctx + (29 * s) % 200 - (rows - 1) + b % rows : ctx + b;
      keys += lens[b];
      for (int64_t k = 0; k < maxb; ++k) bt[b * maxb + k] = static_cast<int32_t>(k * NS + s);
    }
    const double flop = double(d.nh) * keys * (4 * d.dl + 2 * d.dr);
    std::vector<float> q(B * d.nh * dk), q_lat(B * d.nh * d.dl), o1(B * d.nh * d.dl), o2(B * d.nh * d.dl);
    for (auto& x : q) x = uni(rng);
    for (auto& x : q_lat) x = uni(rng);
    for (int th : threads) {
      cpu::ThreadPool::global().set_threads(th);
      const int64_t units = 2 * th;
      std::vector<float> ws(
          std::max(cpu::mla_decode_workspace_floats(d, B, units), cpu::mla_decode_workspace_floats(d, B, units)));
      cpu::ThreadPool::Region reg(cpu::ThreadPool::global());
      int next = 0;
      std::vector<double> tb[2], tn[2], rw, rc;
      for (int r = 0; r < rounds; ++r) {
        double med[2][2];
        for (int impl = 0; impl < 2; ++impl)
          for (int cold = 0; cold < 2; ++cold) {
            std::vector<double> t;
            for (int i = 0; i < reps + 2; ++i) {
              const void* c = caches[cold ? 1 + next++ % (copies - 1) : 0].data();
              const double t0 = now();
              if (impl == 0)
                base_mla_decode_absorbed(d, B, o1.data(), q_lat.data(), q.data(), c, cpu::MlaCache::BF16, bs, bt.data(), maxb,
                                         lens.data(), 0.125f, ws.data(), units);
              else
                cpu::mla_decode_absorbed(d, B, o2.data(), q_lat.data(), q.data(), c, cpu::MlaCache::BF16, bs, bt.data(), maxb,
                                         lens.data(), 0.125f, ws.data(), units);
              if (i >= 2) t.push_back(now() - t0);
            }
            std::sort(t.begin(), t.end());
            med[impl][cold] = t[t.size() / 2] * 1e6;
          }
        tb[0].push_back(med[0][0]);
        tb[1].push_back(med[0][1]);
        tn[0].push_back(med[1][0]);
        tn[1].push_back(med[1][1]);
        rw.push_back(med[1][0] / med[0][0]);
        rc.push_back(med[1][1] / med[0][1]);
      }
      double md = 0;
      for (size_t i = 0; i < o1.size(); ++i) md = std::max(md, double(std::fabs(o1[i] - o2[i])));
      auto mn = [](std::vector<double> v) { return *std::min_element(v.begin(), v.end()); };
      auto mx = [](std::vector<double> v) { return *std::max_element(v.begin(), v.end()); };
      auto medv = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      printf("| %d | %d | %.1f | %.1f | %.3f (%.3f-%.3f) | %.0f / %.0f | %.1f | %.1f | %.3f (%.3f-%.3f) | %.2g |\n", B, th,
             mn(tb[0]), mn(tn[0]), medv(rw), mn(rw), mx(rw), flop / mn(tb[0]) / 1e3, flop / mn(tn[0]) / 1e3, mn(tb[1]), mn(tn[1]),
             medv(rc), mn(rc), mx(rc), md);
      fflush(stdout);
    }
  }
}

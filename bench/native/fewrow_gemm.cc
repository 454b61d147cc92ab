// The few-row in-place GEMM (native/cpu/linear_kernels.h, bf16 weights, t = 5..32 rows: a batch-8
// verify step's 16 rows, a plain batch-8 step's 8) alone, through lc::cpu::linear, at the small
// preset's dense shapes and at 1 / 4 MB: each shape, row count and thread count timed with warm
// weights (the same matrix every call: the kernel's FLOP rate) and with cold ones (a different copy
// each call, out of 512 MB: the weights come from DRAM, as in a decode step). cold - warm is what
// the weight stream adds to the products; the read probe (read_sum over the same 512 MB) gives the
// stream alone. The thread counts alternate shape by shape and round by round.
//
// Calls run inside a parallel region of the pool (ThreadPool::Region), as a replayed decode step's
// do: the workers spin between calls instead of sleeping on the pool's condition variable (a wake
// from there costs tens of microseconds on a VM, more than a 1 MB linear).
//
// Build and run (after `npx cmake-js compile --out build`; under the heavy lock):
//   g++ -O2 -std=c++17 -Inative bench/native/fewrow_gemm.cc build/CMakeFiles/longcat_cpu.dir/native/cpu/*.o -lpthread
//     -o /tmp/fewrow_gemm
//   /tmp/fewrow_gemm [threads...] [--no-region] [--ab VAR=VALUE] [--calls WARM COLD] [--rows 8,16] [--rounds 3] [--shapes up,down] [--nk N K] [--profile]   (threads default: 1 2;
//     --shapes: only the shapes whose name contains one of the words; --profile: the threads' busy time
//     in the region's chunks and the master's join wait per warm call; --ab VAR=VALUE: each measurement also
//     with the environment variable set, alternated, printed as old / new: a kernel's switch for its old path)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu/linear.h"
#include "cpu/profile.h"
#include "cpu/threadpool.h"

using namespace lc;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  std::vector<int> threads, rows = {8, 16};
  struct NK {
    const char* name;
    int64_t n, k;
  };
  std::vector<NK> extra;  // --nk N K: one more shape (repeatable)
  std::string only;       // --shapes a,b: only the shapes whose name contains one of these
  bool region = true, ab = false;
  std::string ab_var, ab_value;  // --ab VAR=VALUE: the "old" variant of an A/B
  int rounds = 3, nwarm = 300, ncold = 600;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-region") == 0) {
      region = false;
    } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--ab") == 0 && i + 1 < argc) {
      ab = true, ab_var = argv[++i];
      ab_value = ab_var.substr(ab_var.find('=') + 1), ab_var = ab_var.substr(0, ab_var.find('='));
    } else if (std::strcmp(argv[i], "--calls") == 0 && i + 2 < argc) {
      nwarm = std::atoi(argv[i + 1]), ncold = std::atoi(argv[i + 2]);
      i += 2;
    } else if (std::strcmp(argv[i], "--profile") == 0) {
      cpu::profile::g_on.store(true);
    } else if (std::strcmp(argv[i], "--nk") == 0 && i + 2 < argc) {
      extra.push_back({"n x k", std::atoll(argv[i + 1]), std::atoll(argv[i + 2])});
      i += 2;
    } else if (std::strcmp(argv[i], "--shapes") == 0 && i + 1 < argc) {
      only = std::string(",") + argv[++i] + ",";
    } else if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      rows.clear();
      for (const char* p = argv[++i]; *p;) {
        rows.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p) ++p;
      }
    } else {
      threads.push_back(std::atoi(argv[i]));
    }
  }
  if (threads.empty()) threads = {1, 2};
  cpu::set_matmul_precision(cpu::MatmulPrecision::BF16);
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  std::vector<Shape> shapes = {
      {"q_a", 256, 512},          {"kv_a", 144, 512},    {"q_b", 384, 256},
      {"o_proj", 512, 256},       {"mlp up", 1024, 512}, {"mlp down", 512, 1024},
      {"lm_head 4MB", 4096, 512}, {"4MB", 2048, 1024},   {"longcat 24MB", 6144, 2048},
  };
  for (const NK& e : extra) shapes.push_back({e.name, e.n, e.k});
  const int64_t pool = int64_t{512} << 20;
  std::vector<uint16_t> big(pool / 2);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u >> 20) % 512);
  std::printf("%s; median of %d warm / %d cold calls per round\n",
              region ? "inside a parallel region (as a replayed step)" : "outside a region (condition-variable wakes)", nwarm, ncold);
  const auto wanted = [&](const Shape& sh) {
    if (only.empty()) return true;
    for (size_t b = 0, e; (e = only.find(',', b + 1)) != std::string::npos; b = e)
      if (e > b + 1 && std::string(sh.name).find(only.substr(b + 1, e - b - 1)) != std::string::npos) return true;
    return false;
  };
  for (const Shape& sh : shapes)
    for (int t : rows) {
      if (!wanted(sh)) continue;
      std::vector<float> x(t * sh.k, 0.01f), y(t * sh.n);
      const int64_t wb = sh.n * sh.k * 2, copies = pool / wb;
      auto run = [&](int64_t c) {
        cpu::WeightRef w;
        w.dtype = DType::BF16;
        w.data = big.data() + c * (wb / 2);
        w.n = sh.n;
        w.k = sh.k;
        cpu::linear(t, x.data(), DType::F32, w, y.data(), DType::F32);
      };
      for (int rep = 0; rep < rounds; ++rep) {
        std::string line;
        char buf[256];
        std::snprintf(buf, sizeof buf, "%-12s n %5ld k %5ld t %2d |", sh.name, static_cast<long>(sh.n), static_cast<long>(sh.k),
                      t);
        line += buf;
        for (size_t ti = 0; ti < threads.size(); ++ti) {
          const int th = threads[(ti + rep) % threads.size()];
          cpu::ThreadPool::global().set_threads(th);
          // --ab VAR=VALUE: this build's path (VAR unset) and the old one (VAR=VALUE), order alternating by round
          double w50s[2], c50s[2];
          const int variants = ab ? 2 : 1;
          for (int vi = 0; vi < variants; ++vi) {
            const int v = ab ? (vi + rep) % 2 : 0;
            if (v == 1)
              setenv(ab_var.c_str(), ab_value.c_str(), 1);
            else if (ab)
              unsetenv(ab_var.c_str());
            std::vector<double> warm, cold;
            {
              std::unique_ptr<cpu::ThreadPool::Region> reg;
              if (region) reg = std::make_unique<cpu::ThreadPool::Region>(cpu::ThreadPool::global());
              const cpu::profile::Snapshot p0 = cpu::profile::snapshot();
              for (int r = 0; r < nwarm; ++r) {
                const double t0 = now();
                run(0);
                warm.push_back(now() - t0);
              }
              const cpu::profile::Snapshot p1 = cpu::profile::snapshot();
              if (cpu::profile::on())
                std::printf("   [%dT warm: busy %.1f us / call / thread, join wait %.1f us / call, jobs %.2f / call]\n", th,
                            (p1.busy_ns - p0.busy_ns) / nwarm / 1e3 / th, (p1.wait_ns - p0.wait_ns) / nwarm / 1e3,
                            (p1.jobs - p0.jobs) / static_cast<double>(nwarm));
              for (int r = 0; r < ncold; ++r) {
                const double t0 = now();
                run(1 + (r * 7919) % (copies - 1));
                cold.push_back(now() - t0);
              }
            }
            std::sort(warm.begin(), warm.end());
            std::sort(cold.begin(), cold.end());
            w50s[v] = warm[warm.size() / 2], c50s[v] = cold[cold.size() / 2];
          }
          if (ab) unsetenv(ab_var.c_str());
          const double fl = 2.0 * t * sh.n * sh.k, w50 = w50s[0], c50 = c50s[0];
          std::snprintf(buf, sizeof buf, " %dT warm %6.1f us (%4.0f GF/s) cold %6.1f us (%5.1f GB/s) |", th, w50 * 1e6,
                        fl / w50 / 1e9, c50 * 1e6, wb / c50 / 1e9);
          line += buf;
          if (ab) {
            std::snprintf(buf, sizeof buf, " old warm %6.1f (x%.2f) cold %6.1f (x%.2f) |", w50s[1] * 1e6, w50s[1] / w50,
                          c50s[1] * 1e6, c50s[1] / c50);
            line += buf;
          }
        }
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      }
    }
  for (int th : threads) {
    cpu::ThreadPool::global().set_threads(th);
    std::vector<double> rb;
    for (int r = 0; r < 5; ++r) {
      const double t0 = now();
      const cpu::ReadSpan span{big.data(), pool};
      cpu::read_sum(&span, 1);
      rb.push_back(pool / (now() - t0) / 1e9);
    }
    std::sort(rb.begin(), rb.end());
    std::printf("read probe, %d thread(s): %.1f GB/s\n", th, rb[2]);
  }
}

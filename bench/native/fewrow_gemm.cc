// The few-row in-place GEMM (native/cpu/linear_kernels.h, bf16 weights, t = 5..32 rows: a batch-8
// verify step's 16 rows, a plain batch-8 step's 8) alone, through lc::cpu::linear, at the small
// preset's dense shapes: each shape and row count timed with warm weights (the same matrix every
// call: the kernel's FLOP rate) and with cold ones (a different copy each call, out of 512 MB: the
// weights come from DRAM, as in a decode step). cold - warm is what the weight stream adds to the
// products; the read probe (read_sum over the same 512 MB) gives the stream alone.
//
// Build and run (after `npx cmake-js compile --out build`; under the heavy lock):
//   g++ -O2 -std=c++17 -Inative bench/native/fewrow_gemm.cc build/CMakeFiles/longcat_cpu.dir/native/cpu/*.o -lpthread
//     -o /tmp/fewrow_gemm
//   /tmp/fewrow_gemm [threads]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/linear.h"
#include "cpu/threadpool.h"

using namespace lc;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  cpu::ThreadPool::global().set_threads(threads);
  cpu::set_matmul_precision(cpu::MatmulPrecision::BF16);
  struct Shape {
    int64_t n, k;
  } shapes[] = {{1024, 512}, {512, 1024}, {4096, 512}};  // MLP gate/up, MLP down, lm_head
  const int64_t pool = int64_t{512} << 20;
  std::vector<uint16_t> big(pool / 2);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint16_t>(0x3c00 + (i * 2654435761u >> 20) % 512);
  for (const Shape& sh : shapes)
    for (int t : {8, 16}) {
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
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<double> warm, cold;
        for (int r = 0; r < 300; ++r) {
          const double t0 = now();
          run(0);
          warm.push_back(now() - t0);
        }
        for (int r = 0; r < 600; ++r) {
          const double t0 = now();
          run(1 + (r * 7919) % (copies - 1));
          cold.push_back(now() - t0);
        }
        std::sort(warm.begin(), warm.end());
        std::sort(cold.begin(), cold.end());
        const double fl = 2.0 * t * sh.n * sh.k, w50 = warm[warm.size() / 2], c50 = cold[cold.size() / 2];
        std::printf("n %5ld k %5ld t %2d  warm %7.1f us (%4.0f GFLOP/s)  cold %7.1f us (%4.0f GFLOP/s, %5.1f GB/s)\n",
                    static_cast<long>(sh.n), static_cast<long>(sh.k), t, w50 * 1e6, fl / w50 / 1e9, c50 * 1e6, fl / c50 / 1e9,
                    wb / c50 / 1e9);
      }
    }
  std::vector<double> rb;
  for (int r = 0; r < 5; ++r) {
    const double t0 = now();
    cpu::read_sum(big.data(), pool);
    rb.push_back(pool / (now() - t0) / 1e9);
  }
  std::sort(rb.begin(), rb.end());
  std::printf("read probe, %d thread(s): %.1f GB/s\n", threads, rb[2]);
}

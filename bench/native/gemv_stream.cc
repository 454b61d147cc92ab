// The decode step's GEMV streaming regime, alone: a batch-1 bf16 GEMV (x f32, y f32) over every
// dense matrix of the `medium` preset in turn (8 layers x 2 x [gate, up, down 4 MiB, o 2 MiB,
// q_b 1.2 MiB, q_a 0.75 MiB, kv_a 0.6 MiB], plus lm_head 64 MiB: 333 MB, more than any cache),
// each matrix split into the pool's chunks (min(rows / 64 KiB, 4 per thread), taken dynamically)
// and joined at a spin barrier, as a replayed graph runs them. Weights in 4 KiB pages
// (MADV_NOHUGEPAGE, as the mapped shards) unless --huge. The kernel variants (the row kernel of
// native/cpu/linear_vec.h and changes to its prefetch, rows per pass and accumulators) and the read
// probe (linear.cc's read_sum loop) run over the same buffers (`cur`: main's kernel before
// wt13-gemv, the block's lines 2 KiB ahead into L1 and 8 KiB into L2; `near512_far8k`: main's t = 1
// bf16 kernel since), alternated round by round, so the
// host's bandwidth swings hit every variant alike. Prints GB/s per variant and round and the median.
//
// Build and run (AVX-512 machine; under the heavy lock):
//   g++ -O3 -march=native -std=c++17 -pthread bench/native/gemv_stream.cc -o /tmp/gemv_stream
//   /tmp/gemv_stream [--threads N] [--rounds N] [--huge | --file F] [--set N] [--gap-us U]
//                     [--only a,b,...]
#include <immintrin.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Mat {
  int64_t n, k;
  uint16_t* w;  // bf16 [n][k]
};

// ---- the row kernels -------------------------------------------------------------------------

// How a variant prefetches: per 128-column block, every line of the block for each row stream
// (kBlock, the current kernel), or one line per row stream each time the stream crosses a line
// (kLine), or none.
enum class Pf { kNone, kBlock, kLine, kStagger };

// Far, FarHint: a second request of the same lines Far bytes ahead (linear_vec.h's
// kGemvFarPrefetchBytes, hint T1 = 1 there; Far = 0: none); with P == kNone only the far one.
template <int R, int NA, Pf P, int64_t Dist, int Hint, int64_t Far = 0, int FarHint = 1>
void rows_bf16(const float* x, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k;
  const uint16_t* wr[R];
  for (int i = 0; i < R; ++i) wr[i] = m.w + (r + i) * K;
  __m512 acc[NA][R];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  auto pf = [&](const char* p) {
    if constexpr (Hint == 0) _mm_prefetch(p, _MM_HINT_T0);
    if constexpr (Hint == 1) _mm_prefetch(p, _MM_HINT_T1);
    if constexpr (Hint == 2) _mm_prefetch(p, _MM_HINT_T2);
    if constexpr (Hint == 3) _mm_prefetch(p, _MM_HINT_NTA);
  };
  auto pfar = [&](const char* p) {
    if constexpr (FarHint == 0) _mm_prefetch(p, _MM_HINT_T0);
    if constexpr (FarHint == 1) _mm_prefetch(p, _MM_HINT_T1);
    if constexpr (FarHint == 2) _mm_prefetch(p, _MM_HINT_T2);
    if constexpr (FarHint == 3) _mm_prefetch(p, _MM_HINT_NTA);
  };
  auto pa = [&](int i, int64_t b0, int64_t d = Dist) {  // the stream's address d bytes ahead of column b0
    const int64_t p = b0 + d / 2;
    return reinterpret_cast<const char*>(p < K ? wr[i] + p : wr[i] + R * K + (p - K));
  };
  for (int64_t b0 = 0; b0 < K; b0 += 128) {
    if constexpr (P == Pf::kBlock)
      for (int i = 0; i < R; ++i)
        for (int off = 0; off < 256; off += 64) pf(pa(i, b0) + off);
    if constexpr (Far > 0)
      for (int i = 0; i < R; ++i)
        for (int off = 0; off < 256; off += 64) pfar(pa(i, b0, Far) + off);
    const int64_t bend = std::min(K, b0 + 128);
    int u = 0;
#pragma GCC unroll 8
    for (int64_t k = b0; k + 16 <= bend; k += 16, ++u) {
      if constexpr (P == Pf::kLine)
        if (u % 2 == 0)
          for (int i = 0; i < R; ++i) pf(pa(i, k));
      if constexpr (P == Pf::kStagger)
        for (int i = 0; i < R; ++i)
          if (u % 2 == i % 2) pf(pa(i, k - 16 * (i % 2)));
      const __m512 xv = _mm512_loadu_ps(x + k);
      for (int i = 0; i < R; ++i) {
        const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + k))), 16));
        acc[u % NA][i] = _mm512_fmadd_ps(xv, wv, acc[u % NA][i]);
      }
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int a = 1; a < NA; ++a) acc[0][i] = _mm512_add_ps(acc[0][i], acc[a][i]);
    y[r + i] = _mm512_reduce_add_ps(acc[0][i]);
  }
}

// One row at a time (one stream, as the probe reads), NA accumulator chains with constant indices,
// a prefetch of one line Dist bytes ahead per 64 bytes (rows are contiguous: past the row's end is
// the next row).
template <int NA, int64_t Dist, bool Blk = false>
void row1(const float* x, const Mat& m, int64_t r, float* y) {
  const int64_t K = m.k;
  const uint16_t* w = m.w + r * K;
  __m512 acc[NA];
  for (auto& v : acc) v = _mm512_setzero_ps();
  constexpr int S = 16 * NA;
  int64_t k = 0;
  for (; k + S <= K; k += S) {
    if constexpr (Blk)  // linear_vec.h's prefetch: a 128-column block's 4 lines at its start
      if (k % 128 == 0)
        for (int off = 0; off < 256; off += 64) _mm_prefetch(reinterpret_cast<const char*>(w + k + Dist / 2) + off, _MM_HINT_T0);
    if constexpr (Dist > 0 && !Blk)
      for (int off = 0; off < S; off += 32)
        if ((k + off) % 32 == 0) _mm_prefetch(reinterpret_cast<const char*>(w + k + off + Dist / 2), _MM_HINT_T0);
    for (int a = 0; a < NA; ++a) {
      const __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16 * a))), 16));
      acc[a] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * a), wv, acc[a]);
    }
  }
  for (int a = 1; a < NA; ++a) acc[0] = _mm512_add_ps(acc[0], acc[a]);
  y[r] = _mm512_reduce_add_ps(acc[0]);
}

template <int NA, int64_t Dist, bool Blk = false>
void row1_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) row1<NA, Dist, Blk>(x, m, r, y);
}

template <int R, int NA, Pf P, int64_t Dist, int Hint, int64_t Far = 0, int FarHint = 1>
void gemv_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + R <= r1; r += R) rows_bf16<R, NA, P, Dist, Hint, Far, FarHint>(x, m, r, y);
  for (; r < r1; ++r) rows_bf16<1, NA, P, Dist, Hint, Far, FarHint>(x, m, r, y);
}

// R = 8 row streams where a row is at most 2 KiB, else 4 (each pass's streams span 4 or more
// 4 KiB pages). Chunks are cut at multiples of 8 rows (a multiple of 4 too).
template <Pf P>
void adaptive_chunk(const float* x, const Mat& m, int64_t r0, int64_t r1, float* y) {
  if (m.k * 2 <= 2048)
    gemv_chunk<8, 1, P, 2048, 0>(x, m, r0, r1, y);
  else
    gemv_chunk<4, 1, P, 2048, 0>(x, m, r0, r1, y);
}

// read_sum's loop (linear.h), with an optional software prefetch Dist bytes ahead.
template <int64_t Dist>
void probe_chunk(const float*, const Mat& m, int64_t r0, int64_t r1, float* y) {
  const __m512i* p = reinterpret_cast<const __m512i*>(m.w + r0 * m.k);
  const int64_t lines = (r1 - r0) * m.k * 2 / 64;
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 4 <= lines; i += 4) {
    if constexpr (Dist > 0) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 128, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + Dist + 192, _MM_HINT_T0);
    }
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(p + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(p + i + 1));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(p + i + 2));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(p + i + 3));
  }
  y[r0] = static_cast<float>(_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
}

using Chunk = void (*)(const float*, const Mat&, int64_t, int64_t, float*);
struct Variant {
  const char* name;
  Chunk fn;
  int rows;  // rows per pass (chunks are cut at multiples)
};

// ---- the pool --------------------------------------------------------------------------------

struct Pool {
  int threads;
  std::atomic<int64_t> ticket{0};
  std::atomic<int> done{0};
  std::atomic<int64_t> epoch{0};
  std::atomic<bool> quit{false};
  const Mat* mat = nullptr;
  int64_t chunks = 0, unit = 1;
  Chunk fn = nullptr;
  const float* x = nullptr;
  float* y = nullptr;
  std::vector<std::thread> workers;

  explicit Pool(int t) : threads(t) {
    for (int i = 1; i < t; ++i)
      workers.emplace_back([this] {
        int64_t seen = 0;
        for (;;) {
          int64_t e;
          while ((e = epoch.load(std::memory_order_acquire)) == seen)
            if (quit.load()) return;
          seen = e;
          work();
          done.fetch_add(1, std::memory_order_release);
        }
      });
  }
  ~Pool() {
    quit = true;
    for (auto& w : workers) w.join();
  }
  void work() {
    const int64_t n = (mat->n + unit - 1) / unit;
    for (int64_t c; (c = ticket.fetch_add(1)) < chunks;) {
      const int64_t b = n * c / chunks * unit, e = std::min(mat->n, n * (c + 1) / chunks * unit);
      if (b < e) fn(x, *mat, b, e, y);
    }
  }
  // One GEMV: chunking as parallel_for(ceil(n / unit), grain) with grain = 64 KiB of rows / unit.
  void run(const Mat& m, Chunk f, int rows, const float* xv, float* yv) {
    mat = &m;
    fn = f;
    unit = rows;
    x = xv;
    y = yv;
    const int64_t n = (m.n + rows - 1) / rows, grain = std::max<int64_t>(1, 65536 / (m.k * 2) / rows);
    chunks = std::min<int64_t>((n + grain - 1) / grain, 4 * threads);
    ticket = 0;
    done = 0;
    epoch.fetch_add(1, std::memory_order_release);
    work();
    while (done.load(std::memory_order_acquire) < threads - 1) _mm_pause();
  }
};

uint16_t* alloc_bf16(int64_t count, bool huge) {
  const size_t bytes = (count * 2 + 4095) / 4096 * 4096;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  uint16_t* w = static_cast<uint16_t*>(p);
  uint32_t s = 12345u + static_cast<uint32_t>(count);
  for (int64_t i = 0; i < count; ++i) {
    s = s * 1664525u + 1013904223u;
    w[i] = static_cast<uint16_t>(0x3c00 | (s >> 24 & 0xff) | (s >> 16 & 0x8000));  // +-(2^-7 .. 2^-6)
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, rounds = 7;
  bool huge = false;
  int nset = 0;  // rotate through only the first nset matrices (cache-resident: the compute ceiling)
  const char* file = nullptr;  // the matrices carved from this file's mapped pages (page cache, 4 KiB)
  double gap_us = 0;           // the master alone between two GEMVs (a serial op of the step), workers spinning
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = atoi(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (a == "--huge") huge = true;
    else if (a == "--set" && i + 1 < argc) nset = atoi(argv[++i]);
    else if (a == "--file" && i + 1 < argc) file = argv[++i];
    else if (a == "--gap-us" && i + 1 < argc) gap_us = atof(argv[++i]);
    else if (a == "--only" && i + 1 < argc) only = "," + std::string(argv[++i]) + ",";
    else {
      fprintf(stderr, "usage: %s [--threads N] [--rounds N] [--huge] [--set N] [--file F] [--gap-us U] [--only a,b]\n", argv[0]);
      return 2;
    }
  }

  // medium: hidden 1024, ffn 2048, q_lora 384, kv_lora 256 + rope 32, 16 heads x (64 + 32) q, 16 x 64 v.
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int l = 0; l < 16; ++l)
    for (auto s : std::vector<std::pair<int64_t, int64_t>>{
             {384, 1024}, {288, 1024}, {1536, 384}, {1024, 1024}, {2048, 1024}, {2048, 1024}, {1024, 2048}})
      shapes.push_back(s);
  shapes.push_back({32768, 1024});
  if (nset > 0) shapes.resize(nset);
  std::vector<Mat> mats;
  int64_t bytes = 0, kmax = 0;
  const uint16_t* mapped = nullptr;
  size_t mapped_bytes = 0;
  if (file) {
    const int fd = open(file, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
      perror(file);
      return 1;
    }
    mapped_bytes = st.st_size;
    void* p = mmap(nullptr, mapped_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      perror("mmap");
      return 1;
    }
    mapped = static_cast<const uint16_t*>(p);
  }
  for (auto [n, k] : shapes) {
    if (mapped) {  // 64-byte aligned, one after the other (bits as bf16: bandwidth does not care)
      const int64_t off = (bytes + 63) / 64 * 64;
      if (off + n * k * 2 > static_cast<int64_t>(mapped_bytes)) {
        fprintf(stderr, "--file: too small\n");
        return 1;
      }
      mats.push_back({n, k, const_cast<uint16_t*>(mapped + off / 2)});
      bytes = off;
    } else {
      mats.push_back({n, k, alloc_bf16(n * k, huge)});
    }
    bytes += n * k * 2;
    kmax = std::max(kmax, k);
  }
  std::vector<float> x(kmax), y(32768);
  for (int64_t i = 0; i < kmax; ++i) x[i] = 0.001f * static_cast<float>(i % 97) - 0.05f;

  const std::vector<Variant> all = {
      {"probe", probe_chunk<0>, 1},
      {"probe_pf2k", probe_chunk<2048>, 1},
      // main since session 13: the block's lines 2 KiB ahead into L1 and 8 KiB ahead into L2
      {"cur", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 1>, 4},
      {"nofar", gemv_chunk<4, 1, Pf::kBlock, 2048, 0>, 4},
      {"far4k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 4096, 1>, 4},
      {"far6k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 6144, 1>, 4},
      {"far12k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 12288, 1>, 4},
      {"far16k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 16384, 1>, 4},
      {"far24k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 24576, 1>, 4},
      {"far32k", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 32768, 1>, 4},
      {"far8k_t2", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 2>, 4},
      {"far8k_t0", gemv_chunk<4, 1, Pf::kBlock, 2048, 0, 8192, 0>, 4},
      {"faronly8k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 8192, 1>, 4},
      {"faronly4k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 4096, 1>, 4},
      {"near1k_far8k", gemv_chunk<4, 1, Pf::kBlock, 1024, 0, 8192, 1>, 4},
      {"near4k_far16k", gemv_chunk<4, 1, Pf::kBlock, 4096, 0, 16384, 1>, 4},
      {"r2_far8k", gemv_chunk<2, 1, Pf::kBlock, 2048, 0, 8192, 1>, 2},
      {"r2_far16k", gemv_chunk<2, 1, Pf::kBlock, 2048, 0, 16384, 1>, 2},
      {"r8_far8k", gemv_chunk<8, 1, Pf::kBlock, 2048, 0, 8192, 1>, 8},
      {"r8_far16k", gemv_chunk<8, 1, Pf::kBlock, 2048, 0, 16384, 1>, 8},
      {"r1a4_far8k", gemv_chunk<1, 4, Pf::kBlock, 2048, 0, 8192, 1>, 1},
      {"faronly2k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 2048, 1>, 4},
      {"faronly3k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 3072, 1>, 4},
      {"faronly6k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 6144, 1>, 4},
      {"faronly16k", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 16384, 1>, 4},
      {"faronly4k_t2", gemv_chunk<4, 1, Pf::kNone, 2048, 0, 4096, 2>, 4},
      {"near512_far8k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 8192, 1>, 4},
      {"near1k_far4k", gemv_chunk<4, 1, Pf::kBlock, 1024, 0, 4096, 1>, 4},
      {"r1a4_faronly4k", gemv_chunk<1, 4, Pf::kNone, 2048, 0, 4096, 1>, 1},
      {"r1a4_faronly8k", gemv_chunk<1, 4, Pf::kNone, 2048, 0, 8192, 1>, 1},
      {"r1a4_far16k", gemv_chunk<1, 4, Pf::kBlock, 2048, 0, 16384, 1>, 1},
      {"r2_faronly4k", gemv_chunk<2, 1, Pf::kNone, 2048, 0, 4096, 1>, 2},
      {"near256_far8k", gemv_chunk<4, 1, Pf::kBlock, 256, 0, 8192, 1>, 4},
      {"near768_far8k", gemv_chunk<4, 1, Pf::kBlock, 768, 0, 8192, 1>, 4},
      {"near512_far6k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 6144, 1>, 4},
      {"near512_far12k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 12288, 1>, 4},
      {"near512_far16k", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 16384, 1>, 4},
      {"near512_far8k_t2", gemv_chunk<4, 1, Pf::kBlock, 512, 0, 8192, 2>, 4},
      {"r2_near512_far8k", gemv_chunk<2, 1, Pf::kBlock, 512, 0, 8192, 1>, 2},
      {"nopf", gemv_chunk<4, 1, Pf::kNone, 2048, 0>, 4},
      {"t1", gemv_chunk<4, 1, Pf::kBlock, 2048, 1>, 4},
      {"t2", gemv_chunk<4, 1, Pf::kBlock, 2048, 2>, 4},
      {"nta", gemv_chunk<4, 1, Pf::kBlock, 2048, 3>, 4},
      {"line", gemv_chunk<4, 1, Pf::kLine, 2048, 0>, 4},
      {"line_t1", gemv_chunk<4, 1, Pf::kLine, 2048, 1>, 4},
      {"line1k", gemv_chunk<4, 1, Pf::kLine, 1024, 0>, 4},
      {"line4k", gemv_chunk<4, 1, Pf::kLine, 4096, 0>, 4},
      {"r1a4", gemv_chunk<1, 4, Pf::kBlock, 2048, 0>, 1},
      {"r1a4_line", gemv_chunk<1, 4, Pf::kLine, 2048, 0>, 1},
      {"r1a4_4k", gemv_chunk<1, 4, Pf::kLine, 4096, 0>, 1},
      {"r1a4_nopf", gemv_chunk<1, 4, Pf::kNone, 2048, 0>, 1},
      {"r2a2", gemv_chunk<2, 2, Pf::kBlock, 2048, 0>, 2},
      {"r2a2_line", gemv_chunk<2, 2, Pf::kLine, 2048, 0>, 2},
      {"r4a2", gemv_chunk<4, 2, Pf::kBlock, 2048, 0>, 4},
      {"line1.5k", gemv_chunk<4, 1, Pf::kLine, 1536, 0>, 4},
      {"line3k", gemv_chunk<4, 1, Pf::kLine, 3072, 0>, 4},
      {"stagger", gemv_chunk<4, 1, Pf::kStagger, 2048, 0>, 4},
      {"r8_line", gemv_chunk<8, 1, Pf::kLine, 2048, 0>, 8},
      {"r8", gemv_chunk<8, 1, Pf::kBlock, 2048, 0>, 8},
      {"r8x", adaptive_chunk<Pf::kBlock>, 8},
      {"r8x_line", adaptive_chunk<Pf::kLine>, 8},
      {"r2_line", gemv_chunk<2, 1, Pf::kLine, 2048, 0>, 2},
      {"r2_line4k", gemv_chunk<2, 1, Pf::kLine, 4096, 0>, 2},
      {"r1_line4k", gemv_chunk<1, 1, Pf::kLine, 4096, 0>, 1},
      {"r1a1_line4k", gemv_chunk<1, 1, Pf::kLine, 4096, 0>, 1},
      {"r1a1_nopf", gemv_chunk<1, 1, Pf::kNone, 2048, 0>, 1},
      {"r1a4_8k", gemv_chunk<1, 4, Pf::kLine, 8192, 0>, 1},
      {"s1", row1_chunk<1, 0>, 1},
      {"s1_2k", row1_chunk<1, 2048>, 1},
      {"s1_4k", row1_chunk<1, 4096>, 1},
      {"s2", row1_chunk<2, 0>, 1},
      {"s2_2k", row1_chunk<2, 2048>, 1},
      {"s2_4k", row1_chunk<2, 4096>, 1},
      {"s2_blk", row1_chunk<2, 2048, true>, 1},
      {"s4", row1_chunk<4, 0>, 1},
      {"s4_2k", row1_chunk<4, 2048>, 1},
      {"s4_4k", row1_chunk<4, 4096>, 1},
  };
  std::vector<const Variant*> vs;
  for (const Variant& v : all)
    if (only.empty() || only.find("," + std::string(v.name) + ",") != std::string::npos) vs.push_back(&v);

  Pool pool(threads);
  // Per shape (the 7 of a layer, lm_head): seconds summed over the rounds, per variant.
  constexpr int kShapes = 8;
  std::vector<std::vector<double>> shape_s(all.size(), std::vector<double>(kShapes));
  std::vector<double> shape_bytes(kShapes);
  for (size_t j = 0; j < mats.size(); ++j) shape_bytes[j == 112 ? 7 : j % 7] += mats[j].n * mats[j].k * 2.0;
  auto pass = [&](const Variant& v) {  // seconds in the GEMVs (the gaps not counted)
    double total = 0;
    std::vector<double>& acc = shape_s[&v - all.data()];
    for (size_t j = 0; j < mats.size(); ++j) {
      const auto t0 = std::chrono::steady_clock::now();
      pool.run(mats[j], v.fn, v.rows, x.data(), y.data());
      const auto t1 = std::chrono::steady_clock::now();
      const double d = std::chrono::duration<double>(t1 - t0).count();
      acc[j == 112 ? 7 : j % 7] += d;
      total += d;
      if (gap_us > 0) {
        const auto until = t1 + std::chrono::nanoseconds(static_cast<int64_t>(gap_us * 1e3));
        while (std::chrono::steady_clock::now() < until) _mm_pause();
      }
    }
    return total;
  };

  for (const Variant* v : vs) pass(*v);  // warm-up: page tables, code
  for (auto& a : shape_s) std::fill(a.begin(), a.end(), 0.0);
  printf("threads %d, %zu matrices, %.1f MB, %s\n", threads, mats.size(), bytes / 1e6, file ? file : huge ? "anonymous, huge pages" : "anonymous, 4 KiB pages");
  std::vector<std::vector<double>> gbs(vs.size());
  for (int r = 0; r < rounds; ++r) {
    printf("round %d:", r);
    for (size_t i = 0; i < vs.size(); ++i) {
      const double s = pass(*vs[i]);
      gbs[i].push_back(bytes / s / 1e9);
      printf(" %s %.1f", vs[i]->name, bytes / s / 1e9);
    }
    printf("\n");
    fflush(stdout);
  }
  // Medians of the per-round ratios (a variant against the probe and the current kernel of the
  // same round): the host's swings between rounds cancel.
  auto find = [&](const char* name) {
    for (size_t i = 0; i < vs.size(); ++i)
      if (std::string(vs[i]->name) == name) return static_cast<int>(i);
    return -1;
  };
  const int ip = find("probe"), ic = find("cur");
  auto med_ratio = [&](size_t i, int j) {
    std::vector<double> q;
    for (int r = 0; r < rounds; ++r) q.push_back(gbs[i][r] / gbs[j][r]);
    std::sort(q.begin(), q.end());
    return q[q.size() / 2];
  };
  printf("median GB/s, median per-round ratio to the probe and to cur:\n");
  for (size_t i = 0; i < vs.size(); ++i) {
    std::vector<double> g = gbs[i];
    std::sort(g.begin(), g.end());
    printf("  %-12s %6.1f", vs[i]->name, g[g.size() / 2]);
    if (ip >= 0) printf("  %5.1f%%", 100 * med_ratio(i, ip));
    if (ic >= 0) printf("  %5.3f", med_ratio(i, ic));
    printf("\n");
  }
  printf("GB/s per shape over all rounds (q_a, kv_a, q_b, o, gate, up, down, lm_head):\n");
  for (const Variant* v : vs) {
    printf("  %-12s", v->name);
    for (int c = 0; c < kShapes; ++c) printf(" %6.1f", shape_bytes[c] * rounds / shape_s[v - all.data()][c] / 1e9);
    printf("\n");
  }
  return 0;
}

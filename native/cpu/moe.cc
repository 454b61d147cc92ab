// CPU MoE kernels (SPEC 4): router top-k with the correction bias, the grouped expert FFNs over
// the routed experts, and the zero experts added last, in a fixed order.
#include "moe.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "elementwise.h"
#include "threadpool.h"
#include "zero_experts.h"

namespace lc::cpu {

// ---- router -------------------------------------------------------------------------------------

void router_topk(int64_t t, int64_t e, int64_t k, const float* logits, const float* bias, int64_t n_routed, float scale,
                 int32_t* idx, float* w, int32_t* nffn) {
  if (k <= 0 || e <= 0) {
    if (nffn)
      for (int64_t i = 0; i < t; ++i) nffn[i] = 0;
    return;
  }
  parallel_for(t, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0; i < t1; ++i) {
      const float* l = logits + i * e;
      int32_t* ix = idx + i * k;
      float* sc = w + i * k;  // holds the biased scores until the end
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < e; ++j)
        if (l[j] > m) m = l[j];
      double sum = 0;
      for (int64_t j = 0; j < e; ++j) sum += static_cast<double>(std::exp(l[j] - m));
      const float denom = static_cast<float>(sum);
      // Insertion into a descending list of at most k entries. Experts arrive in ascending order,
      // so an equal score never displaces an earlier (lower) index: ties go to the lower index.
      int64_t n = 0;
      for (int64_t j = 0; j < e; ++j) {
        float s = std::exp(l[j] - m) / denom + bias[j];
        if (s != s) s = -std::numeric_limits<float>::infinity();
        if (n == k && !(s > sc[k - 1])) continue;
        int64_t pos = n < k ? n++ : k - 1;
        while (pos > 0 && s > sc[pos - 1]) {
          sc[pos] = sc[pos - 1];
          ix[pos] = ix[pos - 1];
          --pos;
        }
        sc[pos] = s;
        ix[pos] = static_cast<int32_t>(j);
      }
      // k <= e, so n == k here.
      int32_t f = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t x = ix[j];
        sc[j] = std::exp(l[x] - m) / denom * scale;
        f += x < n_routed;
      }
      if (nffn) nffn[i] = f;
    }
  });
}

// ---- grouped experts ----------------------------------------------------------------------------

namespace {

constexpr int64_t kMaxWaveRows = 1024;

size_t align64(size_t b) { return (b + 63) & ~static_cast<size_t>(63); }

struct Layout {
  size_t off_offsets, off_active, off_order, off_sorted, off_f32, total;
};

Layout layout(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t n_routed) {
  Layout L;
  L.off_offsets = 0;
  L.off_active = align64(L.off_offsets + sizeof(int64_t) * static_cast<size_t>(n_routed + 1));
  L.off_order = align64(L.off_active + sizeof(int32_t) * static_cast<size_t>(n_routed));
  L.off_sorted = align64(L.off_order + sizeof(int32_t) * static_cast<size_t>(n_routed));
  L.off_f32 = align64(L.off_sorted + sizeof(int32_t) * static_cast<size_t>(t * k));
  const int64_t rows = n_routed > 0 ? moe_wave_rows(t, k) : 0;
  L.total = align64(L.off_f32 + sizeof(float) * static_cast<size_t>(rows * (h + 2 * inter)));
  return L;
}

// Scheduling of the expert GEMMs inside one wave. LONGCAT_MOE_SCHED=experts|linear overrides the
// automatic choice; read on every call so bench/cpu-moe.mjs can interleave the schedules.
enum class Sched { Auto, Experts, Linear, Rows };
Sched sched_override() {
  const char* v = std::getenv("LONGCAT_MOE_SCHED");
  if (v && std::strcmp(v, "experts") == 0) return Sched::Experts;
  if (v && std::strcmp(v, "linear") == 0) return Sched::Linear;
  if (v && std::strcmp(v, "rows") == 0) return Sched::Rows;
  return Sched::Auto;
}

// One GEMV (t = 1) of a batch-1 token's expert phase: y = W x.
struct GemvPiece {
  WeightRef w;
  const float* x;
  float* y;
};

// The rows of `npieces` weights of `per` rows each (piece(p): the p-th weight with its x and y)
// as ONE row stream: all of a token's experts' matrices are small (a few hundred KiB to a few MiB
// each), so splitting each one over the threads, or handing out chunks of the stream, restarts
// the memory streams and leaves threads idle at the joins. Instead every thread owns one
// contiguous, equal share of the rows and runs the GEMV through it in blocks of ~128 KiB from the
// front (its streams, and the GEMV's prefetch, run on across blocks); a thread that is done
// steals ~32 KiB blocks from the back of the others' shares. Threads of the same share of the
// machine do not stream equally fast (on the 2-core VM two equal shares ended 26-44 us apart per
// phase, 11-19% of it): the stealing evens their ends out. Each output row is the same GEMV row
// as in a whole-matrix call (rows are summed on their own): bit for bit, whoever computes it.
// Blocks start on whole GEMV passes (4 rows) and on the weight's row alignment (fp8: its 128-row
// scale blocks; per, the rows of a piece, must then be a multiple of it).
template <class P>
void row_stream(int64_t npieces, int64_t per, P&& piece) {
  constexpr int64_t kMaxShares = 64;
  const int64_t pass = std::max<int64_t>(4, weight_rows_align(piece(0).w));
  const int64_t total = npieces * per;
  const int64_t ns = std::min<int64_t>(kMaxShares, ThreadPool::current().threads());
  const int64_t row_bytes = std::max<int64_t>(1, weight_bytes(piece(0).w) / std::max<int64_t>(per, 1));
  const auto block = [&](int64_t bytes) { return std::max<int64_t>(pass, bytes / row_bytes / pass * pass); };
  const int64_t own = block(128 << 10), steal = block(32 << 10);
  const auto pack = [](int64_t lo, int64_t hi) { return static_cast<uint64_t>(lo) << 32 | static_cast<uint64_t>(hi); };
  std::atomic<uint64_t> share[kMaxShares];  // rows [lo, hi) left: lo << 32 | hi
  for (int64_t c = 0; c < ns; ++c) {
    const auto edge = [&](int64_t t) { return t == ns ? total : (total * t / ns) / pass * pass; };
    share[c].store(pack(edge(c), edge(c + 1)), std::memory_order_relaxed);
  }
  const auto run = [&](int64_t b, int64_t e) {  // rows [b, e) of the stream, piece by piece
    while (b < e) {
      const int64_t p = b / per, q0 = b - p * per, q1 = std::min(per, q0 + (e - b));
      const GemvPiece g = piece(p);
      linear(1, g.x, DType::F32, weight_rows(g.w, q0, q1), g.y + q0, DType::F32);
      b += q1 - q0;
    }
  };
  parallel_for(ns, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (uint64_t v = share[c].load();;) {  // own share, from the front
        const int64_t lo = static_cast<int64_t>(v >> 32), hi = static_cast<int64_t>(v & 0xffffffffu);
        if (lo >= hi) break;
        const int64_t to = std::min(hi, lo + own);
        if (share[c].compare_exchange_weak(v, pack(to, hi))) {
          run(lo, to);
          v = share[c].load();
        }
      }
    for (int64_t k = 1; k < ns; ++k) {  // then the others', from the back
      std::atomic<uint64_t>& s = share[(c1 - 1 + k) % ns];
      for (uint64_t v = s.load();;) {
        const int64_t lo = static_cast<int64_t>(v >> 32), hi = static_cast<int64_t>(v & 0xffffffffu);
        if (lo >= hi) break;
        const int64_t from = std::max(lo, (hi - steal) / pass * pass);
        if (s.compare_exchange_weak(v, pack(lo, from))) {
          run(from, hi);
          v = s.load();
        }
      }
    }
  });
}

}  // namespace

int64_t moe_wave_rows(int64_t t, int64_t k) {
  const int64_t n = t * k;
  return n < kMaxWaveRows ? n : kMaxWaveRows;
}

size_t moe_workspace_bytes(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t n_routed) {
  return layout(t, k, h, inter, n_routed).total;
}

int64_t moe(int64_t t, int64_t k, int64_t h, const float* u, const int32_t* idx, const float* w, const MoeExperts& ex,
            int64_t n_experts, float* out, void* workspace, size_t workspace_bytes) {
  const int64_t nr = ex.n_routed, inter = ex.inter, ns = t * k;
  const Layout L = layout(t, k, h, inter, nr);
  if (workspace_bytes < L.total) return -2;  // the binding sizes it; never expected
  char* ws = static_cast<char*>(workspace);
  int64_t* off = reinterpret_cast<int64_t*>(ws + L.off_offsets);
  int32_t* active = reinterpret_cast<int32_t*>(ws + L.off_active);
  int32_t* order = reinterpret_cast<int32_t*>(ws + L.off_order);
  int32_t* sorted = reinterpret_cast<int32_t*>(ws + L.off_sorted);
  float* fbuf = reinterpret_cast<float*>(ws + L.off_f32);

  // 1. Validate and count tokens per routed expert.
  for (int64_t e = 0; e <= nr; ++e) off[e] = 0;
  for (int64_t s = 0; s < ns; ++s) {
    const int64_t e = idx[s];
    if (e < 0 || e >= n_experts) return s;
    if (e < nr) ++off[e + 1];
  }
  // 2. Offsets, the permutation (ascending expert, then ascending slot) and the active experts.
  int64_t nactive = 0;
  for (int64_t e = 0; e < nr; ++e) {
    if (off[e + 1]) active[nactive++] = static_cast<int32_t>(e);
    off[e + 1] += off[e];
  }
  const int64_t nrows = nr ? off[nr] : 0;
  for (int64_t s = 0; s < ns; ++s) {
    const int64_t e = idx[s];
    if (e < nr) sorted[off[e]++] = static_cast<int32_t>(s);
  }
  for (int64_t e = nr; e > 0; --e) off[e] = off[e - 1];
  off[0] = 0;

  // 3. out = 0.
  parallel_for(t, 64,
               [&](int64_t t0, int64_t t1) { std::memset(out + t0 * h, 0, sizeof(float) * static_cast<size_t>((t1 - t0) * h)); });

  // 4. Waves of at most R consecutive rows of the permutation.
  const int64_t R = nr ? moe_wave_rows(t, k) : 0;
  float* xbuf = fbuf;              // [R, h]: gathered tokens, then the down outputs
  float* gbuf = xbuf + R * h;      // [R, inter]: gate, then silu(gate) * up
  float* ubuf = gbuf + R * inter;  // [R, inter]: up
  int64_t a_first = 0;             // first active expert that still has rows
  for (int64_t r0 = 0; r0 < nrows; r0 += R) {
    const int64_t r1 = r0 + R < nrows ? r0 + R : nrows;
    while (off[active[a_first] + 1] <= r0) ++a_first;
    int64_t a_end = a_first;
    while (a_end < nactive && off[active[a_end]] < r1) ++a_end;
    const int64_t nseg = a_end - a_first;

    auto run_segment = [&](int64_t a) {
      const int64_t e = active[a];
      const int64_t b0 = off[e] > r0 ? off[e] : r0, b1 = off[e + 1] < r1 ? off[e + 1] : r1;
      const int64_t m = b1 - b0;
      float* x = xbuf + (b0 - r0) * h;
      float* g = gbuf + (b0 - r0) * inter;
      float* uu = ubuf + (b0 - r0) * inter;
      const int32_t* perm = ex.perm ? ex.perm[e] : nullptr;
      for (int64_t r = 0; r < m; ++r) {
        const float* src = u + static_cast<int64_t>(sorted[b0 + r] / k) * h;
        if (perm)
          for (int64_t c = 0; c < h; ++c) x[r * h + c] = src[perm[c]];
        else
          std::memcpy(x + r * h, src, sizeof(float) * static_cast<size_t>(h));
      }
      linear(m, x, DType::F32, ex.gate[e], g, DType::F32);
      linear(m, x, DType::F32, ex.up[e], uu, DType::F32);
      silu_mul(m * inter, g, uu, g);                        // elementwise, so g may be the output
      linear(m, g, DType::F32, ex.down[e], x, DType::F32);  // x is dead after gate/up
    };

    // Whole experts spread over threads (linear's own parallel_for nests, inline) when each is a
    // GEMV (few rows per expert: decode), or when there are enough experts to keep every thread
    // busy (4 per thread: a batched decode step's 8-32 rows per expert, where splitting each small
    // GEMM over the threads costs a pool round trip per linear, 3 per expert). Otherwise (few
    // experts, many rows: prefill on a wide pool) experts in turn, linear parallelises inside.
    //
    // A wave of one row per expert (a single token's experts: batch-1 decode) streams the rows of
    // all the experts' weights as one row stream over the threads instead (row_stream), in two
    // phases: gate and up of all experts, then down (whole experts per thread leave one idle when
    // 5-6 experts meet 2 threads). Each output row is the same GEMV row either way.
    Sched sc = sched_override();
    // (fp8 experts: their 128-row scale blocks split only between blocks, so inter and h must be
    // whole blocks)
    const int64_t align = weight_rows_align(ex.gate[active[a_first]]);
    const bool one_row_each = r1 - r0 == nseg && inter % align == 0 && h % align == 0;
    if (sc == Sched::Rows && !one_row_each) sc = Sched::Auto;
    if (sc == Sched::Auto) {
      const int64_t nthreads = ThreadPool::current().threads();
      sc = one_row_each && nseg > 1                                        ? Sched::Rows
           : (nseg > 1 && ((r1 - r0) <= 4 * nseg || nseg >= 4 * nthreads)) ? Sched::Experts
                                                                           : Sched::Linear;
    }
    if (sc == Sched::Rows) {
      // segment s = expert active[a_first + s], its one row at xbuf / gbuf / ubuf + s * width
      for (int64_t s = 0; s < nseg; ++s)
        std::memcpy(xbuf + s * h, u + static_cast<int64_t>(sorted[r0 + s] / k) * h, sizeof(float) * static_cast<size_t>(h));
      // gate and up of every expert: piece 2s the gate of segment s, 2s + 1 its up
      row_stream(2 * nseg, inter, [&](int64_t p) {
        const int64_t sg = p / 2, ex_id = active[a_first + sg];
        return GemvPiece{p % 2 ? ex.up[ex_id] : ex.gate[ex_id], xbuf + sg * h, (p % 2 ? ubuf : gbuf) + sg * inter};
      });
      for (int64_t sg = 0; sg < nseg; ++sg) silu_mul(inter, gbuf + sg * inter, ubuf + sg * inter, gbuf + sg * inter);
      row_stream(nseg, h, [&](int64_t sg) { return GemvPiece{ex.down[active[a_first + sg]], gbuf + sg * inter, xbuf + sg * h}; });
    } else if (sc == Sched::Experts) {
      // One task per expert, the experts with the most rows of the wave first (ties: ascending),
      // so the threads' last tasks are the shortest: in contiguous chunks of 4 experts of 1-16
      // rows each (a 64-sequence decode step) one thread waited 4-12% of the MoE's time at the
      // join. Each expert's rows are computed as they are alone, so the order changes no result.
      auto rows_of = [&](int64_t s) {
        const int64_t e = active[a_first + s];
        return std::min(off[e + 1], r1) - std::max(off[e], r0);
      };
      for (int64_t s = 0; s < nseg; ++s) order[s] = static_cast<int32_t>(s);
      std::sort(order, order + nseg, [&](int32_t a, int32_t b) {
        const int64_t ra = rows_of(a), rb = rows_of(b);
        return ra != rb ? ra > rb : a < b;
      });
      ThreadPool::current().run(nseg, [&](int64_t c) { run_segment(a_first + order[c]); });
    } else {
      for (int64_t s = 0; s < nseg; ++s) run_segment(a_first + s);
    }

    // Combine: columns split over threads, rows in permutation order, so each out[t, c] receives
    // its experts in ascending id order whatever the thread count.
    parallel_for(h, std::max<int64_t>(64, 16384 / (r1 - r0)), [&](int64_t c0, int64_t c1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t s = sorted[r];
        const float wt = w[s];
        const float* y = xbuf + (r - r0) * h;
        float* o = out + (s / k) * h;
        for (int64_t c = c0; c < c1; ++c) o[c] += wt * y[c];
      }
    });
  }

  // 5. Zero experts last: out[t] += (sum of their weights, ascending expert id) * u[t].
  parallel_for(t, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0; i < t1; ++i) {
      float z;
      if (!zero_expert_weight(idx + i * k, w + i * k, k, nr, n_experts, &z)) continue;
      const float* ui = u + i * h;
      float* o = out + i * h;
      for (int64_t c = 0; c < h; ++c) o[c] += z * ui[c];
    }
  });
  return -1;
}

}  // namespace lc::cpu

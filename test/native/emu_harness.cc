// The CUDA kernels of cuda/, compiled for test/emu's CPU emulator (one OS thread per CUDA thread,
// ldmatrix / mma per the PTX fragment definitions), held to the CPU oracle on small odd shapes:
// the launchers are called exactly as the addon calls them, on host memory. This runs the kernels'
// real control flow, indexing, shared-memory staging, barriers and warp collectives without a GPU;
// timing, the memory model and the PTX instructions themselves still need a card. Outputs are
// poisoned with NaN first. Built by `npm run test:native` (target longcat_emu_test).
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../cuda/mla_cache.h"
#include "check.h"
#include "../../cuda/kernels.h"
#include "../../cuda/mla.h"
#include "../../cuda/moe.h"
#include "../../cuda/quant.h"
#include "../../cuda/rope.h"
#include "../../cuda/moe_router.h"
#include "../../cuda/elementwise.h"
#include "common.h"
#include "cpu/mla.h"
#include "cpu/elementwise.h"
#include "cpu/linear.h"
#include "cpu/moe.h"
#include "cpu/norm.h"
#include "cpu/numeric.h"
#include "cpu/quant.h"
#include "cpu/rope.h"
#include "cpu/sampling.h"

namespace {

using namespace lc;
using cpu::MatmulPrecision;

int g_passed = 0, g_failed = 0;
std::mt19937_64 g_rng(1128);
float uni(float a = -1, float b = 1) { return std::uniform_real_distribution<float>(a, b)(g_rng); }
int rint_(int n) { return static_cast<int>(g_rng() % static_cast<uint64_t>(n)); }
std::vector<float> rnd(size_t n, float s = 1) {
  std::vector<float> v(n);
  for (auto& x : v) x = uni() * s;
  return v;
}
template <class T>
std::vector<T> poison(size_t n) {
  std::vector<T> v(n);
  std::memset(v.data(), 0xff, n * sizeof(T));
  return v;
}

// max |got - want| / max |want| (NaN -> infinity), against `tol`
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  const double err = lc::harness::max_rel_error(got, want);
  const bool ok = err <= tol;
  ok ? ++g_passed : ++g_failed;
  if (!ok) std::printf("FAIL %s: max relative error %.3g > %.3g\n", what.c_str(), err, tol);
}
template <class T>
void expect_equal(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  const bool ok = std::memcmp(got.data(), want.data(), want.size() * sizeof(T)) == 0;
  ok ? ++g_passed : ++g_failed;
  if (!ok) std::printf("FAIL %s: not bit-identical\n", what.c_str());
}

double tol_of(MatmulPrecision p) { return p == MatmulPrecision::Highest ? 1e-4 : p == MatmulPrecision::BF16 ? 5e-3 : 1e-4; }
const char* name_of(MatmulPrecision p) {
  return p == MatmulPrecision::Highest ? "highest" : p == MatmulPrecision::BF16 ? "bf16" : "fp8";
}

struct W {
  DType dt;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  cpu::WeightRef ref(int64_t n, int64_t k) const {
    cpu::WeightRef r;
    r.dtype = dt, r.data = bytes.data(), r.scale = scale.empty() ? nullptr : scale.data(), r.n = n, r.k = k;
    return r;
  }
};
W weight(DType dt, int64_t n, int64_t k) {
  W w{dt, {}, {}};
  if (dt == DType::F32) {
    auto v = rnd(n * k, 0.1f);
    w.bytes.resize(v.size() * 4);
    std::memcpy(w.bytes.data(), v.data(), w.bytes.size());
  } else if (dt == DType::BF16) {
    w.bytes.resize(n * k * 2);
    for (int64_t i = 0; i < n * k; ++i) {
      const uint16_t h = cpu::f32_to_bf16(uni() * 0.1f);
      std::memcpy(&w.bytes[2 * i], &h, 2);
    }
  } else if (dt == DType::FP8_E4M3) {
    w.bytes.resize(n * k);
    for (auto& b : w.bytes) b = cpu::f32_to_fp8e4m3(uni() * 2);
    w.scale.resize(((n + 127) / 128) * ((k + 127) / 128));
    for (auto& s : w.scale) s = uni(0.01f, 0.05f);
  } else {
    w.bytes.resize(n * k);
    for (auto& b : w.bytes) b = static_cast<uint8_t>(static_cast<int8_t>(rint_(255) - 127));
    w.scale.resize(n);
    for (auto& s : w.scale) s = uni(0.0005f, 0.002f);
  }
  return w;
}

void linear_cases() {
  for (const DType dt : {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8})
    for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{67, 129}, {130, 72}})
      for (const int64_t t : {1, 3, 16, 17, 70})
        for (const MatmulPrecision p : {MatmulPrecision::Highest, MatmulPrecision::BF16, MatmulPrecision::FP8}) {
          if (p == MatmulPrecision::FP8 && dt != DType::FP8_E4M3) continue;
          if (t <= 16 && p != MatmulPrecision::Highest) continue;  // the skinny path ignores the precision
          cpu::set_matmul_precision(p);
          const W w = weight(dt, n, k);
          const auto x = rnd(t * k);
          std::vector<float> want(t * n), got = poison<float>(t * n);
          cpu::linear(t, x.data(), DType::F32, w.ref(n, k), want.data(), DType::F32);
          const bool fp8 = p == MatmulPrecision::FP8 && t >= cpu::kFp8ActivationMinRows;
          if (fp8) {
            std::vector<uint8_t> ws(gpu::linear_fp8_workspace_bytes(t, k) + 256);
            void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) & ~uintptr_t{255});
            gpu::linear_fp8(t, x.data(), DType::F32, w.ref(n, k), got.data(), DType::F32, aligned, nullptr);
          } else {
            gpu::linear(t, x.data(), DType::F32, w.ref(n, k), got.data(), DType::F32, nullptr);
          }
          expect_close(got, want, tol_of(p),
                       "linear t=" + std::to_string(t) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                           " w=" + dtype_name(dt) + " " + name_of(p));
        }
  // the TMA + wgmma kernel (opt-in on a card): bf16 x and weight, K % 8 == 0, tails in M and N; 16
  // K stages wrap the 6-stage ring, and 134 tiles on 132 SMs give two CTAs a second tile whose
  // stages continue the ring (8 stages each)
  cpu::set_matmul_precision(MatmulPrecision::BF16);
  gpu::set_wgmma_enabled(true);
  for (const auto& [t, n, k] :
       std::vector<std::array<int64_t, 3>>{{17, 77, 136}, {130, 129, 200}, {40, 260, 64}, {17, 77, 1000}, {130, 8449, 200}}) {
    const W w = weight(DType::BF16, n, k);
    std::vector<uint16_t> xb(t * k);
    std::vector<float> xf(t * k);
    for (int64_t i = 0; i < t * k; ++i) xf[i] = cpu::bf16_to_f32(xb[i] = cpu::f32_to_bf16(uni()));
    std::vector<float> want(t * n), got = poison<float>(t * n);
    cpu::linear(t, xf.data(), DType::F32, w.ref(n, k), want.data(), DType::F32);
    const bool used = gpu::linear_wgmma(t, xb.data(), DType::BF16, w.ref(n, k), got.data(), DType::F32, nullptr);
    expect_close(got, want, used ? tol_of(MatmulPrecision::BF16) : -1,
                 "linear_wgmma t=" + std::to_string(t) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                     (used ? "" : " (not taken)"));
    // bf16 output: column pairs stored as one 32-bit word when n is even, one by one when odd
    std::vector<uint16_t> gotb(t * n, 0xffff);
    const bool used_b = gpu::linear_wgmma(t, xb.data(), DType::BF16, w.ref(n, k), gotb.data(), DType::BF16, nullptr);
    std::vector<float> gotbf(t * n);
    for (int64_t i = 0; i < t * n; ++i) gotbf[i] = cpu::bf16_to_f32(gotb[i]);
    expect_close(gotbf, want, used_b ? tol_of(MatmulPrecision::BF16) : -1,
                 "linear_wgmma bf16 out t=" + std::to_string(t) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                     (used_b ? "" : " (not taken)"));
  }
  gpu::set_wgmma_enabled(false);
}

// The tile GEMM's other staging paths: K % 16 == 0 (fp8 mode: every chunk by cp.async, several
// scale blocks, a K tail at 208), bf16 activations (bf16 mode: A by cp.async), one-byte weights in
// bf16 mode (16 per 16-byte load), bf16 outputs (paired stores; n = 67 / 129: unaligned pairs).
void tile_gemm_cases() {
  for (const auto& [t, n, k] : std::vector<std::array<int64_t, 3>>{{70, 136, 384}, {33, 67, 320}, {130, 129, 208}})
    for (const DType dt : {DType::BF16, DType::FP8_E4M3, DType::I8})
      for (const DType xt : {DType::F32, DType::BF16})
        for (const DType yt : {DType::F32, DType::BF16})
          for (const MatmulPrecision p : {MatmulPrecision::BF16, MatmulPrecision::FP8}) {
            if (p == MatmulPrecision::FP8 && dt != DType::FP8_E4M3) continue;
            cpu::set_matmul_precision(p);
            const W w = weight(dt, n, k);
            auto x = rnd(t * k);
            std::vector<uint16_t> xb(t * k);
            if (xt == DType::BF16)
              for (int64_t i = 0; i < t * k; ++i) x[i] = cpu::bf16_to_f32(xb[i] = cpu::f32_to_bf16(x[i]));
            const void* xg = xt == DType::BF16 ? static_cast<const void*>(xb.data()) : x.data();
            std::vector<float> want(t * n), got(t * n);
            cpu::linear(t, x.data(), DType::F32, w.ref(n, k), want.data(), DType::F32);
            std::vector<float> yf = poison<float>(t * n);
            std::vector<uint16_t> yb = poison<uint16_t>(t * n);
            void* y = yt == DType::BF16 ? static_cast<void*>(yb.data()) : yf.data();
            if (p == MatmulPrecision::FP8) {
              std::vector<uint8_t> ws(gpu::linear_fp8_workspace_bytes(t, k) + 256);
              void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) & ~uintptr_t{255});
              gpu::linear_fp8(t, xg, xt, w.ref(n, k), y, yt, aligned, nullptr);
            } else {
              gpu::linear(t, xg, xt, w.ref(n, k), y, yt, nullptr);
            }
            for (int64_t i = 0; i < t * n; ++i) got[i] = yt == DType::BF16 ? cpu::bf16_to_f32(yb[i]) : yf[i];
            expect_close(got, want, tol_of(p) + (yt == DType::BF16 ? 4e-3 : 0),
                         "tile gemm t=" + std::to_string(t) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                             " w=" + dtype_name(dt) + " x=" + dtype_name(xt) + " y=" + dtype_name(yt) + " " + name_of(p));
          }
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

// The decode GEMVs (cuda/gemv.cuh): every batch of the skinny path (1..16 rows) for every weight
// format; K a whole number of 16-byte units but not of a chunk (partial chunks, partial fp8 scale
// blocks) or of several chunks (the prefetched loads), and weight rows not a multiple of a block's.
void decode_linear_cases() {
  cpu::set_matmul_precision(MatmulPrecision::Highest);
  for (const DType dt : {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8})
    for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{67, 592}, {45, 2064}}) {
      const W w = weight(dt, n, k);
      for (int64_t t = 1; t <= 16; ++t) {
        const auto x = rnd(t * k);
        std::vector<float> want(t * n), got = poison<float>(t * n);
        cpu::linear(t, x.data(), DType::F32, w.ref(n, k), want.data(), DType::F32);
        gpu::linear(t, x.data(), DType::F32, w.ref(n, k), got.data(), DType::F32, nullptr);
        expect_close(got, want, tol_of(MatmulPrecision::Highest),
                     "decode linear t=" + std::to_string(t) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                         " w=" + dtype_name(dt));
      }
    }
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

void small_cases() {
  {  // rmsnorm with the residual add, bf16 weight, in place on h
    const int64_t rows = 5, dim = 300;
    auto x = rnd(rows * dim), add = rnd(rows * dim);
    std::vector<uint16_t> w(dim);
    for (auto& v : w) v = cpu::f32_to_bf16(uni(0.5f, 1.5f));
    std::vector<float> hw = x, yw(rows * dim), hg = x, yg = poison<float>(rows * dim);
    cpu::rmsnorm(rows, dim, hw.data(), add.data(), hw.data(), w.data(), DType::BF16, 1e-5f, yw.data(), DType::F32);
    gpu::rmsnorm(rows, dim, hg.data(), add.data(), hg.data(), w.data(), DType::BF16, 1e-5f, yg.data(), DType::F32, nullptr);
    expect_close(yg, yw, 1e-5, "rmsnorm (+residual, in place)");
    expect_close(hg, hw, 0, "rmsnorm residual sum");
  }
  {  // fp8 activation quantization and int8 rows: bit-exact twins
    const int64_t t = 3, k = 300;
    auto x = rnd(t * k, 40);
    std::vector<uint8_t> qw(t * k), qg = poison<uint8_t>(t * k);
    std::vector<float> sw(t * 3), sg = poison<float>(t * 3);
    cpu::quantize_fp8_act(t, k, x.data(), qw.data(), sw.data());
    gpu::quantize_fp8_act(t, k, x.data(), DType::F32, qg.data(), sg.data(), nullptr);
    expect_equal(qg, qw, "quantize_fp8_act codes");
    expect_equal(sg, sw, "quantize_fp8_act scales");
    std::vector<int8_t> iw(t * k), ig = poison<int8_t>(t * k);
    std::vector<float> rw(t), rg = poison<float>(t);
    cpu::quantize_int8_rows(t, k, x.data(), DType::F32, iw.data(), rw.data());
    gpu::quantize_int8_rows(t, k, x.data(), DType::F32, ig.data(), rg.data(), nullptr);
    expect_equal(ig, iw, "quantize_int8_rows codes");
    expect_equal(rg, rw, "quantize_int8_rows scales");
  }
  {  // scaleGroups, siluMul, argmax, softmax
    const int64_t rows = 6, cols = 300, R = 3, g = 3;
    auto x = rnd(rows * cols, 5), sc = rnd(R * g);
    std::vector<float> w(rows * cols), gq = poison<float>(rows * cols);
    cpu::scale_groups(rows, cols, x.data(), sc.data(), R, 128, w.data());
    gpu::scale_groups(rows, cols, x.data(), sc.data(), R, 128, gq.data(), nullptr);
    expect_equal(gq, w, "scale_groups");
    std::vector<int32_t> aw(rows), ag = poison<int32_t>(rows);
    cpu::argmax(rows, cols, x.data(), aw.data());
    gpu::argmax(rows, cols, x.data(), ag.data(), nullptr);
    expect_equal(ag, aw, "argmax");
    std::vector<float> smw(rows * cols), smg = poison<float>(rows * cols);
    cpu::softmax(rows, cols, x.data(), smw.data(), true);
    gpu::softmax(rows, cols, x.data(), smg.data(), true, nullptr);
    expect_close(smg, smw, 1e-5, "logSoftmax");
  }
  {  // greedy and top-k = 1 sampling agree with the CPU
    const int64_t rows = 3, V = 5000;
    auto x = rnd(rows * V, 5);
    for (const float temp : {0.0f, 0.8f}) {
      cpu::SampleParams p;
      p.temperature = temp, p.top_k = temp > 0 ? 1 : 0, p.seed = 5, p.step = 2;
      std::vector<uint8_t> cws(cpu::sample_workspace_bytes(rows, V) + 64), gws(gpu::sample_workspace_bytes(rows, V) + 256);
      std::vector<int32_t> iw(rows), ig = poison<int32_t>(rows);
      cpu::sample(rows, V, x.data(), p, iw.data(), cws.data());
      void* al = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(gws.data()) + 255) & ~uintptr_t{255});
      gpu::sample(rows, V, x.data(), p, ig.data(), al, gpu::sample_workspace_bytes(rows, V), nullptr);
      expect_equal(ig, iw, std::string("sample ") + (temp > 0 ? "top-k 1" : "greedy"));
    }
  }
  {  // router top-k with zero experts
    const int64_t t = 7, e = 40, k = 6, nr = 28;
    auto logits = rnd(t * e, 4), bias = rnd(e, 0.01f);
    std::vector<int32_t> iw(t * k), ig = poison<int32_t>(t * k), nw(t), ng = poison<int32_t>(t);
    std::vector<float> ww(t * k), wg = poison<float>(t * k);
    cpu::router_topk(t, e, k, logits.data(), bias.data(), nr, 6.0f, iw.data(), ww.data(), nw.data());
    gpu::router_topk(t, e, k, logits.data(), bias.data(), nr, 6.0f, ig.data(), wg.data(), ng.data(), nullptr);
    expect_equal(ig, iw, "router_topk ids");
    expect_close(wg, ww, 1e-6, "router_topk weights");
    expect_equal(ng, nw, "router_topk FFN counts");
  }
  {  // RoPE in place
    const int64_t t = 5, nh = 3, hd = 96, off = 32, rd = 62;
    auto x = rnd(t * nh * hd);
    std::vector<int32_t> pos(t);
    for (auto& p : pos) p = rint_(100000);
    std::vector<float> inv(rd / 2);
    for (int i = 0; i < rd / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rd));
    auto xc = x, xg = x;
    cpu::rope(t, nh, hd, xc.data(), pos.data(), off, rd, inv.data(), 1.1f);
    gpu::rope(t, nh, hd, xg.data(), pos.data(), off, rd, inv.data(), 1.1f, nullptr);
    expect_equal(xg, xc, "rope");
  }
}

void moe_case(int64_t t, int64_t h, int64_t inter, int64_t nr, int64_t nz, int64_t k, DType dt, MatmulPrecision p) {
  cpu::set_matmul_precision(p);
  std::vector<W> ws;
  for (int64_t e = 0; e < 2 * nr; ++e) ws.push_back(weight(dt, inter, h));
  for (int64_t e = 0; e < nr; ++e) ws.push_back(weight(dt, h, inter));
  std::vector<cpu::WeightRef> refs;
  std::vector<gpu::MoeWeight> table;
  for (int64_t i = 0; i < 3 * nr; ++i) {
    refs.push_back(ws[i].ref(i < 2 * nr ? inter : h, i < 2 * nr ? h : inter));
    table.push_back(gpu::MoeWeight{ws[i].bytes.data(), ws[i].scale.empty() ? nullptr : ws[i].scale.data(), dt});
  }
  const int64_t E = nr + nz;
  std::vector<int32_t> idx(t * k);
  for (int64_t i = 0; i < t; ++i) {
    std::vector<int32_t> pool(E);
    for (int64_t e = 0; e < E; ++e) pool[e] = static_cast<int32_t>(e);
    for (int64_t j = 0; j < k; ++j) {
      std::swap(pool[j], pool[j + rint_(static_cast<int>(E - j))]);
      idx[i * k + j] = pool[j];
    }
  }
  auto u = rnd(t * h), w = rnd(t * k);
  for (auto& v : w) v = std::fabs(v) * 2;
  cpu::MoeExperts ex;
  ex.gate = refs.data(), ex.up = refs.data() + nr, ex.down = refs.data() + 2 * nr, ex.n_routed = nr, ex.inter = inter;
  std::vector<uint8_t> cws(cpu::moe_workspace_bytes(t, k, h, inter, nr) + 64);
  void* cal = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(cws.data()) + 63) & ~uintptr_t{63});
  std::vector<float> want(t * h), got = poison<float>(t * h);
  cpu::moe(t, k, h, u.data(), idx.data(), w.data(), ex, E, want.data(), cal, cws.size() - 64);
  const bool fp8 = p == MatmulPrecision::FP8 && dt == DType::FP8_E4M3;
  std::vector<uint8_t> gws(gpu::moe_workspace_bytes(t, k, h, inter, nr, fp8, false) + 256);
  void* gal = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(gws.data()) + 255) & ~uintptr_t{255});
  gpu::moe(t, k, h, inter, u.data(), idx.data(), w.data(), table.data(), nr, E, got.data(), fp8, false, gal, gws.size() - 256,
           nullptr);
  expect_close(got, want, p == MatmulPrecision::FP8 ? 2e-2 : tol_of(p),
               "moe t=" + std::to_string(t) + " h=" + std::to_string(h) + " inter=" + std::to_string(inter) +
                   " routed=" + std::to_string(nr) + " k=" + std::to_string(k) + " w=" + dtype_name(dt) + " " + name_of(p));
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

// Absorbed decode over a shuffled paged cache (bf16, or fp8 written by the CPU's mla_cache_write),
// CUDA cores (highest) or tensor cores (bf16 with the 512 + 64 width); `splits` > 0 overrides
// mla_decode_splits' choice (any count must combine right).
void mla_decode_case(int64_t nh, int64_t dl, int64_t dr, int64_t bs, std::vector<int32_t> lens, MatmulPrecision p,
                     int64_t splits = 0, cpu::MlaCache cf = cpu::MlaCache::BF16) {
  cpu::set_matmul_precision(p);
  const cpu::MlaDims d = lc::harness::decode_dims(nh, dl, dr);
  const int64_t B = static_cast<int64_t>(lens.size()), row = dl + dr, mb = lc::harness::max_blocks(lens, bs);
  const int64_t nb = B * mb + 2;
  std::vector<int32_t> perm(nb);
  for (int64_t i = 0; i < nb; ++i) perm[i] = static_cast<int32_t>(i);
  for (int64_t i = nb - 1; i > 0; --i) std::swap(perm[i], perm[rint_(static_cast<int>(i + 1))]);
  std::vector<int32_t> bt(B * mb);
  for (int64_t i = 0; i < B * mb; ++i) bt[i] = perm[i];
  const bool fp8 = cf == cpu::MlaCache::FP8;
  std::vector<uint16_t> cache(fp8 ? 0 : nb * bs * row);
  for (auto& c : cache) c = cpu::f32_to_bf16(uni());
  std::vector<uint8_t> cache8(fp8 ? nb * bs * cpu::mla_fp8_row_bytes(dl, dr) : 0);
  if (fp8) {
    auto ckv = rnd(nb * bs * dl, 1.0f), kpe = rnd(nb * bs * dr, 1.0f);
    std::vector<int32_t> slots(nb * bs);
    for (int64_t i = 0; i < nb * bs; ++i) slots[i] = static_cast<int32_t>(i);
    cpu::mla_cache_write(d, nb * bs, cache8.data(), cf, bs, ckv.data(), kpe.data(), slots.data());
  }
  const void* cp = fp8 ? static_cast<const void*>(cache8.data()) : static_cast<const void*>(cache.data());
  auto ql = rnd(B * nh * dl, 0.3f), q = rnd(B * nh * (d.dn + dr), 0.3f);
  const float scale = 1.0f / std::sqrt(192.0f);
  std::vector<float> want(B * nh * dl), got = poison<float>(B * nh * dl);
  std::vector<float> cws(cpu::mla_decode_workspace_floats(d, B, 4));
  cpu::mla_decode_absorbed(d, B, want.data(), ql.data(), q.data(), cp, cf, bs, bt.data(), mb, lens.data(), scale, cws.data(), 4);
  if (splits <= 0) splits = gpu::mla_decode_splits(d, B, mb * bs, cf, cp);
  std::vector<float> gws(std::max<int64_t>(1, gpu::mla_decode_workspace_floats(d, B, splits)));
  gpu::mla_decode_absorbed(d, B, got.data(), ql.data(), q.data(), cp, cf, nb, bs, bt.data(), mb, lens.data(), scale, gws.data(),
                           splits, nullptr);
  std::string ls;
  for (int32_t l : lens) ls += std::to_string(l) + ",";
  expect_close(got, want, tol_of(p),
               "mla_decode_absorbed nh=" + std::to_string(nh) + " dl=" + std::to_string(dl) + " lens=" + ls +
                   " splits=" + std::to_string(splits) + " " + name_of(p) + (fp8 ? " fp8 cache" : " bf16 cache"));
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

// mla_decode_splits against the emulated device (132 SMs): one split per SM for a long context at batch
// 1, whole waves as the batch grows, one split once the CTAs fill the device, the 64-token floor.
void decode_split_choice() {
  cpu::set_matmul_precision(MatmulPrecision::BF16);
  cpu::MlaDims d;
  d.nh = 64, d.dn = 128, d.dr = 64, d.dv = 128, d.dl = 512;
  std::vector<uint16_t> cache(16);
  const auto splits = [&](int64_t nh, int64_t batch, int64_t max_len) {
    d.nh = nh;
    return gpu::mla_decode_splits(d, batch, max_len, cpu::MlaCache::BF16, cache.data());
  };
  const int64_t got[6] = {splits(64, 1, 65536),   splits(128, 1, 65536), splits(64, 64, 65536),
                          splits(64, 132, 65536), splits(64, 1, 640),    splits(64, 5, 65536)};
  const int64_t want[6] = {132, 66, 2, 1, 10, 26};
  bool ok = true;
  std::string seen;
  for (int i = 0; i < 6; ++i) ok = ok && got[i] == want[i], seen += std::to_string(got[i]) + " ";
  ok ? ++g_passed : ++g_failed;
  if (!ok) std::printf("FAIL mla_decode_splits on 132 SMs: %s(want 132 66 2 1 10 26)\n", seen.c_str());
}

void mla_prefill_case(int64_t nh, int64_t dn, int64_t dr, int64_t dv, std::vector<std::pair<int32_t, int32_t>> seqs,
                      MatmulPrecision p) {
  cpu::set_matmul_precision(p);
  cpu::MlaDims d;
  d.nh = nh, d.dn = dn, d.dr = dr, d.dv = dv, d.dl = 16;
  std::vector<int32_t> qs{0}, ks{0};
  for (auto [ql, kl] : seqs) qs.push_back(qs.back() + ql), ks.push_back(ks.back() + kl);
  const int64_t T = qs.back(), S = ks.back(), B = static_cast<int64_t>(seqs.size());
  auto q = rnd(T * nh * (dn + dr)), kvb = rnd(S * nh * (dn + dv)), kpe = rnd(S * dr);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dn + dr));
  std::vector<float> want(T * nh * dv), got = poison<float>(T * nh * dv);
  cpu::mla_prefill(d, B, want.data(), q.data(), kvb.data(), kpe.data(), qs.data(), ks.data(), scale);
  std::vector<int32_t> ws(gpu::mla_prefill_workspace_ints(d, T, S, B));
  gpu::mla_prefill(d, B, T, S, got.data(), q.data(), kvb.data(), kpe.data(), qs.data(), ks.data(), scale, ws.data(), nullptr);
  expect_close(
      got, want, tol_of(p),
      "mla_prefill nh=" + std::to_string(nh) + " dn=" + std::to_string(dn) + " dv=" + std::to_string(dv) + " " + name_of(p));
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

}  // namespace

int main() {
  std::printf("longcat CUDA kernels under the CPU emulator (test/emu), against the CPU oracle\n");
  const auto t0 = std::chrono::steady_clock::now();
  auto lap = [&](const char* what) {
    std::printf("  %s done at %.1f s\n", what, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  try {
    small_cases();
    lap("small ops");
    linear_cases();
    tile_gemm_cases();
    lap("linear");
    moe_case(1, 64, 32, 8, 2, 3, DType::BF16, MatmulPrecision::Highest);       // decode: skinny tiles
    moe_case(5, 129, 67, 6, 3, 4, DType::FP8_E4M3, MatmulPrecision::Highest);  // decode, fp8 experts
    moe_case(40, 136, 80, 4, 3, 5, DType::BF16, MatmulPrecision::Highest);     // prefill: fp32 tiles
    moe_case(40, 136, 80, 4, 3, 5, DType::BF16, MatmulPrecision::BF16);        // prefill: bf16 tensor cores
    moe_case(60, 72, 48, 3, 1, 2, DType::I8, MatmulPrecision::BF16);
    moe_case(80, 136, 72, 2, 1, 2, DType::FP8_E4M3, MatmulPrecision::FP8);  // prefill: e4m3 tensor cores
    lap("moe");
    decode_linear_cases();
    // decode experts (skinny tiles of <= 16 rows) in every format: 1-row experts over two K chunks,
    // 2-4 rows, 5-16 rows, and more than 16 rows (two tiles of one expert)
    for (const DType dt : {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8}) {
      moe_case(1, 1040, 96, 8, 2, 3, dt, MatmulPrecision::Highest);
      moe_case(3, 144, 80, 6, 2, 4, dt, MatmulPrecision::Highest);
      moe_case(14, 144, 80, 5, 1, 4, dt, MatmulPrecision::Highest);
      moe_case(18, 144, 80, 6, 0, 5, dt, MatmulPrecision::Highest);
    }
    lap("decode GEMVs");
    mla_decode_case(5, 40, 8, 7, {1, 64, 65, 2}, MatmulPrecision::Highest);  // CUDA cores
    mla_decode_case(17, 512, 64, 64, {0, 1, 100}, MatmulPrecision::Highest);
    mla_decode_case(17, 512, 64, 64, {0, 1, 100}, MatmulPrecision::BF16);  // tensor cores, heads past 16
    mla_decode_case(3, 512, 64, 16, {33, 300}, MatmulPrecision::BF16);
    // split counts at the boundaries: one split over many tiles (300 = 9 x 32 + 12), one per emulated
    // SM (132: most splits empty), more splits than 32-token tiles, and 130 heads (3 head groups, more
    // CTAs than splits) over block sizes that do not divide the 32-token tile
    mla_decode_case(64, 512, 64, 64, {300}, MatmulPrecision::BF16, 1);
    mla_decode_case(64, 512, 64, 64, {1000}, MatmulPrecision::BF16, 132);
    mla_decode_case(5, 512, 64, 7, {77, 40, 1}, MatmulPrecision::BF16, 5);
    mla_decode_case(130, 512, 64, 48, {95, 129}, MatmulPrecision::BF16, 3);
    mla_decode_case(17, 512, 64, 1, {33}, MatmulPrecision::Highest, 132);  // CUDA cores, 132 splits
    // the fp8 latent cache: CUDA cores (16-byte loads; odd widths with scalar loads), tensor cores
    mla_decode_case(17, 512, 64, 64, {0, 1, 100}, MatmulPrecision::Highest, 0, cpu::MlaCache::FP8);
    mla_decode_case(3, 128, 6, 5, {20, 9}, MatmulPrecision::Highest, 0, cpu::MlaCache::FP8);
    mla_decode_case(17, 512, 64, 64, {0, 1, 100}, MatmulPrecision::BF16, 0, cpu::MlaCache::FP8);
    mla_decode_case(5, 512, 64, 7, {77, 40, 1}, MatmulPrecision::BF16, 5, cpu::MlaCache::FP8);
    decode_split_choice();
    lap("mla decode");
    mla_prefill_case(3, 5, 3, 4, {{1, 1}, {7, 10}, {33, 33}}, MatmulPrecision::Highest);
    mla_prefill_case(2, 128, 64, 128, {{1, 1}, {70, 133}, {0, 9}}, MatmulPrecision::Highest);
    mla_prefill_case(2, 128, 64, 128, {{1, 1}, {70, 133}, {0, 9}}, MatmulPrecision::BF16);  // tensor cores
    // several query tiles per sequence (scheduled last first) over up to 4 double-buffered key tiles
    mla_prefill_case(3, 128, 64, 128, {{130, 200}, {1, 64}, {64, 64}, {0, 3}, {65, 129}}, MatmulPrecision::BF16);
    mla_prefill_case(2, 5, 3, 4, {{70, 75}, {33, 33}}, MatmulPrecision::Highest);  // CUDA cores: 3 query tiles
  } catch (const lc::Error& e) {
    std::printf("FAIL: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed (CUDA kernels emulated on the CPU)\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

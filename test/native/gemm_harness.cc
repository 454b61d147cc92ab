// The GEMM family without Node: linear (every weight format and matmul precision, decode and
// prefill shapes), fp8 activation quantization and the grouped-expert MoE, on random odd shapes;
// first, fragment_sim.cc runs the tensor-core kernels' index math on the CPU.
//   * CPU (always): linear against a float64 reference with a rigorous error bound per output
//     (the oracle the GPU is held to is itself checked here).
//   * CUDA (when compiled in and a device is present): each kernel against the CPU on identical
//     inputs, outputs poisoned with NaN first. Without a device the CUDA half is reported skipped.
// Built by `npm run test:native` (CMake target longcat_native_test, not part of the addon build);
// on a bare GPU machine: build/Release/longcat_native_test. Exit status 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/features.h"
#include "cpu/linear.h"
#include "cpu/moe.h"
#include "cpu/numeric.h"
#include "cpu/quant.h"
#include "cuda_api.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#include "../../cuda/moe.h"
#include "../../cuda/quant.h"
#endif

namespace {

using namespace lc;
using cpu::MatmulPrecision;

int g_failed = 0, g_passed = 0;

void report(bool ok, const std::string& what, double err, double tol) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  std::printf("FAIL %s: error %.3g > tolerance %.3g\n", what.c_str(), err, tol);
}

std::mt19937_64 g_rng(20261128);
float uniform(float a = -1.f, float b = 1.f) { return std::uniform_real_distribution<float>(a, b)(g_rng); }
int randint(int n) { return static_cast<int>(g_rng() % static_cast<uint64_t>(n)); }

const char* precision_name(MatmulPrecision p) {
  return p == MatmulPrecision::Highest ? "highest" : p == MatmulPrecision::BF16 ? "bf16" : "fp8";
}

// A weight in its stored bytes plus its exact values in float64.
struct Weight {
  DType dtype;
  int64_t n, k;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  std::vector<double> ref;
  cpu::WeightRef at(const void* data, const float* sc) const {
    cpu::WeightRef r;
    r.dtype = dtype, r.data = data, r.scale = sc, r.n = n, r.k = k;
    return r;
  }
  cpu::WeightRef host() const { return at(bytes.data(), scale.empty() ? nullptr : scale.data()); }
};

Weight make_weight(DType dt, int64_t n, int64_t k) {
  Weight w{dt, n, k, {}, {}, std::vector<double>(static_cast<size_t>(n * k))};
  const int64_t kb = (k + 127) / 128, nb = (n + 127) / 128;
  if (dt == DType::F32) {
    std::vector<float> v(static_cast<size_t>(n * k));
    for (int64_t i = 0; i < n * k; ++i) w.ref[i] = v[i] = uniform() * 0.1f;
    w.bytes.resize(v.size() * 4);
    std::memcpy(w.bytes.data(), v.data(), w.bytes.size());
  } else if (dt == DType::BF16) {
    std::vector<uint16_t> v(static_cast<size_t>(n * k));
    for (int64_t i = 0; i < n * k; ++i) w.ref[i] = cpu::bf16_to_f32(v[i] = cpu::f32_to_bf16(uniform() * 0.1f));
    w.bytes.resize(v.size() * 2);
    std::memcpy(w.bytes.data(), v.data(), w.bytes.size());
  } else if (dt == DType::FP8_E4M3) {
    w.scale.resize(static_cast<size_t>(nb * kb));
    for (auto& s : w.scale) s = uniform(0.25f, 2.f) / 64;
    w.bytes.resize(static_cast<size_t>(n * k));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        int code = randint(254);  // no NaN codes 0x7f / 0xff
        if (code >= 0x7f) ++code;
        w.bytes[r * k + c] = static_cast<uint8_t>(code);
        w.ref[r * k + c] =
            static_cast<double>(cpu::fp8e4m3_to_f32(static_cast<uint8_t>(code))) * w.scale[(r / 128) * kb + c / 128];
      }
  } else {  // I8
    w.scale.resize(static_cast<size_t>(n));
    for (auto& s : w.scale) s = uniform(0.5f, 2.f) / 127;
    w.bytes.resize(static_cast<size_t>(n * k));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const int8_t q = static_cast<int8_t>(randint(255) - 127);
        std::memcpy(&w.bytes[r * k + c], &q, 1);
        w.ref[r * k + c] = static_cast<double>(q) * w.scale[r];
      }
  }
  return w;
}

#ifdef LONGCAT_WITH_CUDA
// Device memory for the GPU half; freed on scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t b) : bytes(b) { p = b ? cuda::malloc(0, b) : nullptr; }
  DeviceBuffer(const void* host, size_t b) : DeviceBuffer(b) {
    if (b) cuda::memcpy_h2d(0, p, host, b);
  }
  ~DeviceBuffer() {
    if (p) cuda::free(0, p);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  std::vector<T> get(size_t n) const {
    std::vector<T> v(n);
    cuda::memcpy_d2h(0, v.data(), p, n * sizeof(T));
    return v;
  }
};
#endif

bool g_gpu = false;

// ---- linear ---------------------------------------------------------------------------------------

// The activations the GEMM sees in fp8 precision: cpu::quantize_fp8_act, dequantized exactly.
std::vector<double> fp8_activations(const std::vector<float>& x, int64_t t, int64_t k) {
  const int64_t g = (k + 127) / 128;
  std::vector<uint8_t> q(static_cast<size_t>(t * k));
  std::vector<float> s(static_cast<size_t>(t * g));
  cpu::quantize_fp8_act(t, k, x.data(), q.data(), s.data());
  std::vector<double> r(static_cast<size_t>(t * k));
  for (int64_t i = 0; i < t; ++i)
    for (int64_t c = 0; c < k; ++c) r[i * k + c] = static_cast<double>(cpu::fp8e4m3_to_f32(q[i * k + c])) * s[i * g + c / 128];
  return r;
}

// wgmma: run the GPU half through the opt-in sm_90a TMA + wgmma kernel (x passed as bf16).
void linear_case(int64_t t, int64_t n, int64_t k, DType wdt, MatmulPrecision prec, bool wgmma = false) {
  const Weight w = make_weight(wdt, n, k);
  std::vector<float> x(static_cast<size_t>(t * k));
  for (auto& v : x) v = wgmma ? cpu::bf16_to_f32(cpu::f32_to_bf16(uniform())) : uniform();
  cpu::set_matmul_precision(prec);
  const bool fp8_act = prec == MatmulPrecision::FP8 && wdt == DType::FP8_E4M3 && t >= cpu::kFp8ActivationMinRows;
  const std::vector<double> xe = fp8_act ? fp8_activations(x, t, k) : std::vector<double>(x.begin(), x.end());
  // An int8 GEMV (t <= 8) outside 'highest' may round x to int8 per 128 columns (linear.h; AVX2 /
  // AVX512-VNNI): up to 1/254 of the block's max |x| per product, bounded by Q = sum amax |w| / 254.
  const bool i8_act = wdt == DType::I8 && prec != MatmulPrecision::Highest && t <= 8;
  std::vector<double> amax(static_cast<size_t>(t * ((k + 127) / 128)), 0.0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t c = 0; c < k; ++c) {
      double& a = amax[i * ((k + 127) / 128) + c / 128];
      a = std::max(a, std::fabs(xe[i * k + c]));
    }
  // float64 reference and S = sum |x w| per output: every path's error is a small multiple of S (+ Q)
  std::vector<double> ref(static_cast<size_t>(t * n)), S(ref.size()), Q(ref.size(), 0.0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0, abs = 0, q = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double p = xe[i * k + c] * w.ref[j * k + c];
        acc += p, abs += std::fabs(p);
        if (i8_act) q += amax[i * ((k + 127) / 128) + c / 128] * std::fabs(w.ref[j * k + c]) / 254 * (1 + 1e-6);
      }
      ref[i * n + j] = acc, S[i * n + j] = abs, Q[i * n + j] = q;
    }
  const double gamma = (k + 16) * std::ldexp(1.0, -24);
  // bf16 rounding of x (CPU AVX512-BF16: bf16 weights from 2 rows, fp8 weights from 2 rows with
  // VBMI (x times the block scale), the rest from 9; GPU tensor cores) and of dequantized weights (GPU): 2^-7
  const bool fp8_few_rows =
      wdt == DType::FP8_E4M3 && cpu::isa() == cpu::Isa::Avx512 && cpu::features().avx512_bf16 && cpu::features().avx512_vbmi;
  const bool rounded = prec != MatmulPrecision::Highest && (t > 8 || ((wdt == DType::BF16 || fp8_few_rows) && t >= 2));
  const double rel = gamma + (rounded ? std::ldexp(1.0, -7) : 0.0);
  char name[160];
  std::snprintf(name, sizeof name, "linear t=%lld n=%lld k=%lld w=%s %s%s", static_cast<long long>(t), static_cast<long long>(n),
                static_cast<long long>(k), dtype_name(wdt), precision_name(prec), wgmma ? " (x bf16, wgmma)" : "");
  auto check = [&](const std::vector<float>& y, const char* side) {
    double worst = 0, worst_tol = 0;
    bool ok = true;
    for (size_t i = 0; i < y.size(); ++i) {
      const double tol = rel * S[i] + Q[i] + 1e-30, err = std::fabs(y[i] - ref[i]);
      if (!(err <= tol)) {  // NaN-safe
        ok = false;
        worst = std::isnan(err) ? INFINITY : std::max(worst, err), worst_tol = tol;
      }
    }
    report(ok, std::string(name) + " " + side, worst, worst_tol);
  };
  std::vector<float> y(static_cast<size_t>(t * n), NAN);
  cpu::linear(t, x.data(), DType::F32, w.host(), y.data(), DType::F32);
  check(y, "cpu");
#ifdef LONGCAT_WITH_CUDA
  if (!g_gpu) return;
  DeviceBuffer dx(x.data(), x.size() * 4), dw(w.bytes.data(), w.bytes.size()), ds(w.scale.data(), w.scale.size() * 4);
  DeviceBuffer dy(y.size() * 4);
  cuda::memset_async(0, dy.p, 0xff, dy.bytes, nullptr);  // NaN poison
  const cpu::WeightRef wr = w.at(dw.p, static_cast<const float*>(ds.p));
  if (fp8_act && gpu::kernel_image(0).fp8_mma()) {
    DeviceBuffer ws(gpu::linear_fp8_workspace_bytes(t, k));
    gpu::linear_fp8(t, dx.p, DType::F32, wr, dy.p, DType::F32, ws.p, nullptr);
    cuda::check_launch(name);
    cuda::device_synchronize(0);
    check(dy.get<float>(y.size()), "cuda (e4m3 tensor cores)");
  } else if (wgmma) {
    std::vector<uint16_t> xb(x.size());
    for (size_t i = 0; i < x.size(); ++i) xb[i] = cpu::f32_to_bf16(x[i]);
    DeviceBuffer dxb(xb.data(), xb.size() * 2);
    gpu::set_wgmma_enabled(true);
    const bool used = gpu::wgmma_enabled() && gpu::kernel_image(0).wgmma();
    gpu::linear(t, dxb.p, DType::BF16, wr, dy.p, DType::F32, nullptr);
    gpu::set_wgmma_enabled(false);
    cuda::check_launch(name);
    cuda::device_synchronize(0);
    check(dy.get<float>(y.size()), used ? "cuda (wgmma)" : "cuda (wgmma unavailable here: mma.sync)");
  } else {
    gpu::linear(t, dx.p, DType::F32, wr, dy.p, DType::F32, nullptr);
    cuda::check_launch(name);
    cuda::device_synchronize(0);
    check(dy.get<float>(y.size()), "cuda");
  }
#endif
}

// ---- fp8 activation quantization: bit-exact twins -------------------------------------------------

void quant_case(int64_t t, int64_t k) {
  std::vector<float> x(static_cast<size_t>(t * k));
  for (auto& v : x) v = uniform() * 300;
  const int64_t g = (k + 127) / 128;
  std::vector<uint8_t> q(x.size());
  std::vector<float> s(static_cast<size_t>(t * g));
  cpu::quantize_fp8_act(t, k, x.data(), q.data(), s.data());
  // CPU: every code is the nearest e4m3 value of x / s (or saturated), s = amax / 448
  bool ok = true;
  for (int64_t i = 0; i < t && ok; ++i)
    for (int64_t c = 0; c < k; ++c) {
      const float v = x[i * k + c] / s[i * g + c / 128];
      ok = ok && std::fabs(cpu::fp8e4m3_to_f32(q[i * k + c]) - v) <= std::fabs(v) * 0.0625f + 0.001f;
    }
  char name[96];
  std::snprintf(name, sizeof name, "quantize_fp8_act t=%lld k=%lld", static_cast<long long>(t), static_cast<long long>(k));
  report(ok, std::string(name) + " cpu", ok ? 0 : 1, 0);
#ifdef LONGCAT_WITH_CUDA
  if (!g_gpu) return;
  DeviceBuffer dx(x.data(), x.size() * 4), dq(q.size()), ds(s.size() * 4);
  gpu::quantize_fp8_act(t, k, dx.p, DType::F32, static_cast<uint8_t*>(dq.p), static_cast<float*>(ds.p), nullptr);
  cuda::check_launch(name);
  cuda::device_synchronize(0);
  const auto gq = dq.get<uint8_t>(q.size());
  const auto gs = ds.get<float>(s.size());
  const bool same = gq == q && std::memcmp(gs.data(), s.data(), s.size() * 4) == 0;
  report(same, std::string(name) + " cuda (bit-exact)", same ? 0 : 1, 0);
#endif
}

// ---- grouped-expert MoE: GPU against the CPU --------------------------------------------------------

void moe_case(int64_t t, int64_t h, int64_t inter, int64_t nr, int64_t nz, int64_t k, DType wdt, MatmulPrecision prec) {
  cpu::set_matmul_precision(prec);
  std::vector<Weight> ws;
  for (int64_t e = 0; e < nr; ++e) ws.push_back(make_weight(wdt, inter, h));  // gate
  for (int64_t e = 0; e < nr; ++e) ws.push_back(make_weight(wdt, inter, h));  // up
  for (int64_t e = 0; e < nr; ++e) ws.push_back(make_weight(wdt, h, inter));  // down
  std::vector<cpu::WeightRef> refs;
  for (const auto& w : ws) refs.push_back(w.host());
  const int64_t E = nr + nz;
  std::vector<int32_t> idx(static_cast<size_t>(t * k));
  std::vector<float> wt(idx.size()), u(static_cast<size_t>(t * h));
  for (int64_t i = 0; i < t; ++i) {  // distinct experts per token
    std::vector<int32_t> pool(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) pool[e] = static_cast<int32_t>(e);
    for (int64_t j = 0; j < k; ++j) {
      std::swap(pool[j], pool[j + randint(static_cast<int>(E - j))]);
      idx[i * k + j] = pool[j];
      wt[i * k + j] = uniform(0.f, 2.f);
    }
  }
  for (auto& v : u) v = uniform();
  cpu::MoeExperts ex;
  ex.gate = refs.data(), ex.up = refs.data() + nr, ex.down = refs.data() + 2 * nr, ex.n_routed = nr, ex.inter = inter;
  std::vector<uint8_t> wsp(cpu::moe_workspace_bytes(t, k, h, inter, nr) + 64);
  void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(wsp.data()) + 63) & ~static_cast<uintptr_t>(63));
  std::vector<float> out(u.size(), NAN);
  const int64_t bad = cpu::moe(t, k, h, u.data(), idx.data(), wt.data(), ex, E, out.data(), aligned, wsp.size() - 64);
  char name[160];
  std::snprintf(name, sizeof name, "moe t=%lld h=%lld inter=%lld routed=%lld zero=%lld k=%lld w=%s %s", static_cast<long long>(t),
                static_cast<long long>(h), static_cast<long long>(inter), static_cast<long long>(nr), static_cast<long long>(nz),
                static_cast<long long>(k), dtype_name(wdt), precision_name(prec));
  bool finite = bad == -1;
  for (float v : out) finite = finite && std::isfinite(v);
  report(finite, std::string(name) + " cpu (runs, every output written)", finite ? 0 : 1, 0);
#ifdef LONGCAT_WITH_CUDA
  if (!g_gpu) return;
  std::vector<std::unique_ptr<DeviceBuffer>> keep;
  std::vector<gpu::MoeWeight> table;
  for (const auto& w : ws) {
    keep.push_back(std::make_unique<DeviceBuffer>(w.bytes.data(), w.bytes.size()));
    const void* d = keep.back()->p;
    keep.push_back(std::make_unique<DeviceBuffer>(w.scale.data(), w.scale.size() * 4));
    table.push_back(gpu::MoeWeight{d, static_cast<const float*>(keep.back()->p), w.dtype});
  }
  const bool fp8 = prec == MatmulPrecision::FP8 && wdt == DType::FP8_E4M3 && gpu::kernel_image(0).fp8_mma();
  DeviceBuffer dtab(table.data(), table.size() * sizeof(gpu::MoeWeight)), du(u.data(), u.size() * 4),
      didx(idx.data(), idx.size() * 4), dw(wt.data(), wt.size() * 4), dout(out.size() * 4),
      dws(gpu::moe_workspace_bytes(t, k, h, inter, nr, fp8, false));
  cuda::memset_async(0, dout.p, 0xff, dout.bytes, nullptr);
  gpu::moe(t, k, h, inter, static_cast<const float*>(du.p), static_cast<const int32_t*>(didx.p), static_cast<const float*>(dw.p),
           static_cast<const gpu::MoeWeight*>(dtab.p), nr, E, static_cast<float*>(dout.p), fp8, false, dws.p, dws.bytes, nullptr);
  cuda::check_launch(name);
  cuda::device_synchronize(0);
  const auto got = dout.get<float>(out.size());
  double scale = 1e-6, worst = 0;
  for (float v : out) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  for (size_t i = 0; i < out.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - out[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  // relative to the largest output: fp32 order (highest), bf16 operands (bf16: on both sides, the
  // CPU's fp8 experts of 2-8 rows rounding x times the block scale on AVX512-BF16), e4m3 codes (fp8)
  const double tol = prec == MatmulPrecision::Highest ? 1e-4 : prec == MatmulPrecision::BF16 ? 1e-2 : 2e-2;
  report(worst / scale <= tol, std::string(name) + " cuda", worst / scale, tol);
#endif
}

}  // namespace

int run_fragment_simulations(int& passed);  // fragment_sim.cc

int main() {
  const int devices = cuda::device_count();
  g_gpu = cuda::compiled() && devices > 0;
  std::printf("longcat native GEMM harness: CUDA %s%s\n", cuda::compiled() ? "compiled in" : "not compiled in",
              g_gpu              ? (", device: " + cuda::props(0).name).c_str()
              : cuda::compiled() ? (", no device (" + cuda::unavailable_reason() + "): CUDA half skipped").c_str()
                                 : "");
  g_failed += run_fragment_simulations(g_passed);
  try {
    for (const DType wdt : {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8})
      for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{67, 129}, {333, 127}, {130, 1000}, {257, 515}})
        for (const int64_t t : {1, 3, 16, 17, 129})
          for (const MatmulPrecision p : {MatmulPrecision::Highest, MatmulPrecision::BF16, MatmulPrecision::FP8}) {
            if (p == MatmulPrecision::FP8 && wdt != DType::FP8_E4M3) continue;
            linear_case(t, n, k, wdt, p);
          }
    // bf16 weights with k a multiple of 32 at 9-1024 rows: the lanes GEMM (x's 16-row chunks; small
    // weights split by chunks, the others by register blocks; 17-27 rows of the large: the GEMM)
    for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{203, 544}, {40, 2048}, {1001, 512}})
      for (const int64_t t : {9, 17, 23, 33, 47, 64, 129})
        for (const MatmulPrecision p : {MatmulPrecision::Highest, MatmulPrecision::BF16}) linear_case(t, n, k, DType::BF16, p);
    for (const auto& [t, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 7}, {3, 1000}, {17, 7168}}) quant_case(t, k);
    moe_case(1, 64, 32, 8, 2, 3, DType::BF16, MatmulPrecision::Highest);    // decode: skinny tiles
    moe_case(5, 129, 67, 6, 3, 4, DType::FP8_E4M3, MatmulPrecision::BF16);  // decode, fp8 experts
    moe_case(40, 136, 80, 4, 3, 5, DType::BF16, MatmulPrecision::Highest);  // prefill: fp32 tiles
    moe_case(40, 136, 80, 4, 3, 5, DType::BF16, MatmulPrecision::BF16);     // prefill: bf16 tensor cores
    moe_case(100, 200, 96, 3, 1, 2, DType::I8, MatmulPrecision::BF16);
    moe_case(256, 520, 392, 4, 2, 4, DType::FP8_E4M3, MatmulPrecision::FP8);  // prefill: e4m3 tensor cores
    // last: the opt-in TMA + wgmma GEMM, never run on a card yet (a fault here cannot hide the rest)
    for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{77, 136}, {257, 520}, {333, 1000}})
      for (const int64_t t : {17, 129, 300}) linear_case(t, n, k, DType::BF16, MatmulPrecision::BF16, true);
  } catch (const lc::Error& e) {
    std::printf("FAIL: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed%s\n", g_passed, g_failed, g_gpu ? "" : " (CUDA half skipped: no device)");
  return g_failed ? 1 : 0;
}

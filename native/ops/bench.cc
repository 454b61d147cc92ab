// Native timing for the CPU benchmarks (bench/cpu-linear.mjs). Both ops run synchronously on the
// calling thread (plus the pool) and time with steady_clock, so no JS or stream overhead is timed.
//   benchReadBandwidth(bytes, passes) -> { gbps, samples, bytes, checksum }   read bandwidth of a fresh
//                                                                    buffer, all pool threads
//   benchReadTensors(tensors[], passes) -> { gbps, samples, bytes, checksum }  the same read over the
//                                                                    tensors' own bytes
//   benchLinear(y, x, weights[], scales[] | null, warmup, iters) -> { medianMs, minMs, samples }
//   benchDotPeak(iters, passes) -> { gflops, samples, instruction, threads, flops, macs }  the peak
//                                                                    rate of the GEMM's multiply-add, all pool threads
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "../binding.h"
#include "../cpu/linear.h"
#include "../cpu/threadpool.h"

namespace lc {

cpu::WeightRef weight_ref(const char* op, const Tensor& w, const std::optional<Tensor>& scale, int64_t k_in);  // ops/linear.cc

static double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

static Napi::Array to_array(Napi::Env env, const std::vector<double>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (uint32_t i = 0; i < v.size(); ++i) a.Set(i, v[i]);
  return a;
}

// A warm-up pass, then `passes` timed passes of cpu::read_sum over the spans:
// { gbps (median), samples, bytes, checksum (one pass's sum, a BigInt) }.
static Napi::Object read_probe(Napi::Env env, const std::vector<cpu::ReadSpan>& spans, int64_t passes) {
  int64_t bytes = 0;
  for (const cpu::ReadSpan& s : spans) bytes += s.bytes;
  const uint64_t sum = cpu::read_sum(spans.data(), static_cast<int64_t>(spans.size()));
  std::vector<double> gbps;
  for (int64_t i = 0; i < passes; ++i) {
    double t0 = now_s();
    if (cpu::read_sum(spans.data(), static_cast<int64_t>(spans.size())) != sum)
      fail(Code::E_INTERNAL, "read probe: the memory changed while it was read");
    gbps.push_back(static_cast<double>(bytes) / (now_s() - t0) / 1e9);
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("gbps", median(gbps));
  r.Set("samples", to_array(env, gbps));
  r.Set("bytes", static_cast<double>(bytes));
  r.Set("checksum", Napi::BigInt::New(env, sum));
  return r;
}

static Napi::Value BenchReadBandwidth(const Napi::CallbackInfo& info) {
  const char* op = "benchReadBandwidth";
  OpArgs a(info, op);
  int64_t bytes = a.integer(0, "bytes"), passes = a.integer(1, "passes");
  if (bytes < (1 << 20) || passes < 1)
    fail(Code::E_ARGUMENT, "%s: need bytes >= 1 MiB and passes >= 1, got %lld and %lld", op, static_cast<long long>(bytes),
         static_cast<long long>(passes));
  bytes = bytes / 4096 * 4096;
  void* p = std::aligned_alloc(4096, bytes);
  if (!p) fail(Code::E_OOM, "%s: could not allocate %lld bytes", op, static_cast<long long>(bytes));
  // First touch from the pool threads that will read it (page placement), with non-zero data.
  cpu::parallel_for(bytes / 4096, 64,
                    [&](int64_t b, int64_t e) { std::memset(static_cast<char*>(p) + b * 4096, 1, (e - b) * 4096); });
  std::unique_ptr<void, decltype(&std::free)> owned(p, &std::free);
  return read_probe(info.Env(), {{p, bytes}}, passes);
}

LC_REGISTER_OP("benchReadBandwidth", BenchReadBandwidth);

static Napi::Value BenchReadTensors(const Napi::CallbackInfo& info) {
  const char* op = "benchReadTensors";
  OpArgs a(info, op);
  std::vector<Tensor> ts = a.tensor_list(0, "tensors");
  int64_t passes = a.integer(1, "passes");
  if (ts.empty() || passes < 1)
    fail(Code::E_ARGUMENT, "%s: need >= 1 tensor and passes >= 1, got %zu and %lld", op, ts.size(),
         static_cast<long long>(passes));
  std::vector<cpu::ReadSpan> spans;
  int64_t bytes = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!ts[i].device().is_cpu()) fail(Code::E_DEVICE, "%s: tensors[%zu] is not a CPU tensor", op, i);
    spans.push_back({ts[i].data(), ts[i].nbytes()});
    bytes += ts[i].nbytes();
  }
  if (bytes == 0) fail(Code::E_ARGUMENT, "%s: the tensors hold no bytes", op);
  for (const Tensor& t : ts) device_synchronize(t.device());  // their producers (if any) have finished
  return read_probe(info.Env(), spans, passes);
}

LC_REGISTER_OP("benchReadTensors", BenchReadTensors);

static Napi::Value BenchLinear(const Napi::CallbackInfo& info) {
  const char* op = "benchLinear";
  OpArgs a(info, op);
  Tensor y = a.tensor(0, "y"), x = a.tensor(1, "x");
  std::vector<Tensor> ws = a.tensor_list(2, "weights");
  std::vector<std::optional<Tensor>> scales(ws.size());
  if (a.present(3)) {
    std::vector<Tensor> s = a.tensor_list(3, "scales");
    if (s.size() != ws.size()) fail(Code::E_ARGUMENT, "%s: %zu scales for %zu weights", op, s.size(), ws.size());
    for (size_t i = 0; i < s.size(); ++i) scales[i] = s[i];
  }
  int64_t warmup = a.integer(4, "warmup"), iters = a.integer(5, "iters");
  if (ws.empty() || iters < 1 || warmup < 0) fail(Code::E_ARGUMENT, "%s: need >= 1 weight, iters >= 1, warmup >= 0", op);
  for (const Tensor* t : {&x, &y})
    if (!t->device().is_cpu()) fail(Code::E_DEVICE, "%s: CPU tensors only", op);
  int64_t t, k_x;
  a.dims(x, "x", {DType::F32, DType::BF16}, Device{}, &t, &k_x);
  expect_dtype(op, "y", y, {DType::F32, DType::BF16});
  std::vector<cpu::WeightRef> refs;
  for (size_t i = 0; i < ws.size(); ++i) {
    refs.push_back(weight_ref(op, ws[i], scales[i], k_x));
    if (refs[i].n != refs[0].n || refs[i].k != refs[0].k || refs[i].dtype != refs[0].dtype)
      fail(Code::E_SHAPE, "%s: all weights must have the same shape and dtype", op);
  }
  expect_shape(op, "x", x, {t, refs[0].k});
  expect_shape(op, "y", y, {t, refs[0].n});
  device_synchronize(x.device());  // the inputs' producers (if any) have finished
  size_t next = 0;
  auto run = [&] {
    cpu::linear(t, x.data(), x.dtype, refs[next], y.data(), y.dtype);
    next = (next + 1) % refs.size();  // rotate copies so a small weight is not timed from cache
  };
  for (int64_t i = 0; i < warmup; ++i) run();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    double t0 = now_s();
    run();
    ms.push_back((now_s() - t0) * 1e3);
  }
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("medianMs", median(ms));
  r.Set("minMs", *std::min_element(ms.begin(), ms.end()));
  r.Set("samples", to_array(info.Env(), ms));
  return r;
}

LC_REGISTER_OP("benchLinear", BenchLinear);

// Every pool thread runs chunks of `iters` rounds of cpu::dot_peak's register-only loop, 8 chunks
// a thread (so a thread that starts late costs a fraction of a pass, not a whole one); GFLOP/s
// per pass over the wall time, the best of `passes` after one warm-up pass (the peak is a ceiling:
// a slow sample is the machine's neighbours, not the instruction). `macs`: the multiply-adds the
// last pass's results add up to (each adds 2^-24 exactly), which a test checks against the count.
static Napi::Value BenchDotPeak(const Napi::CallbackInfo& info) {
  const char* op = "benchDotPeak";
  OpArgs a(info, op);
  const int64_t iters = a.integer(0, "iters"), passes = a.integer(1, "passes");
  if (iters < 1 || iters > (1 << 20) || passes < 1 || passes > 100)
    fail(Code::E_ARGUMENT, "%s: need 1 <= iters <= 2^20 and 1 <= passes <= 100, got %lld and %lld", op,
         static_cast<long long>(iters), static_cast<long long>(passes));
  const cpu::DotPeak peak = cpu::dot_peak();
  const int64_t threads = cpu::ThreadPool::current().threads(), chunks = 8 * threads;
  std::vector<float> sums(chunks);
  auto pass = [&] {
    cpu::parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) sums[c] = peak.run(iters);
    });
  };
  pass();
  std::vector<double> gflops;
  for (int64_t i = 0; i < passes; ++i) {
    const double t0 = now_s();
    pass();
    gflops.push_back(static_cast<double>(chunks) * iters * peak.flops_per_round / (now_s() - t0) / 1e9);
  }
  double macs = 0;
  for (float v : sums) macs += std::ldexp(static_cast<double>(v), 24);
  Napi::Object r = Napi::Object::New(info.Env());
  r.Set("gflops", *std::max_element(gflops.begin(), gflops.end()));
  r.Set("samples", to_array(info.Env(), gflops));
  r.Set("instruction", peak.instruction);
  r.Set("threads", static_cast<double>(threads));
  r.Set("flops", static_cast<double>(chunks) * iters * peak.flops_per_round);
  r.Set("macs", macs);
  return r;
}

LC_REGISTER_OP("benchDotPeak", BenchDotPeak);

}  // namespace lc

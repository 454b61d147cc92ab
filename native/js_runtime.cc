// Module functions about the runtime rather than tensors: build facts, CPU features, devices and
// CUDA status, the kernel thread pool, the CPU ISA cap, memory pool statistics (the pinned pool's
// too), device synchronize.
#include "binding.h"

#include <algorithm>

#include "cpu/features.h"
#include "cpu/threadpool.h"
#include "cuda_api.h"

namespace lc {

static Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cuda", Napi::Boolean::New(env, cuda::compiled()));
  o.Set("cudaArchs", Napi::String::New(env, cuda::archs()));
  const int rt = cuda::runtime_version();
  o.Set("cudaRuntime", rt ? cuda::cuda_version_text(rt) : "");
  o.Set("cudaMinDriver", cuda::min_driver_release(rt));
  o.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
#if defined(__clang__)
  o.Set("compiler", Napi::String::New(env, std::string("clang ") + __clang_version__));
#elif defined(__GNUC__)
  o.Set("compiler", Napi::String::New(env, std::string("gcc ") + __VERSION__));
#endif
#ifdef LONGCAT_BUILD_SYSTEM
  o.Set("buildSystem", Napi::String::New(env, LONGCAT_BUILD_SYSTEM));
#else
  o.Set("buildSystem", Napi::String::New(env, "unknown"));
#endif
  o.Set("debug", Napi::Boolean::New(env,
#ifdef NDEBUG
                                    false
#else
                                    true
#endif
                                    ));
  return o;
}

static Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const cpu::Features& f = cpu::features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("avx2", f.avx2);
  o.Set("fma", f.fma);
  o.Set("f16c", f.f16c);
  o.Set("avx512f", f.avx512f);
  o.Set("avx512bw", f.avx512bw);
  o.Set("avx512vl", f.avx512vl);
  o.Set("avx512dq", f.avx512dq);
  o.Set("avx512bf16", f.avx512_bf16);
  o.Set("avx512vnni", f.avx512_vnni);
  o.Set("avx512vbmi", f.avx512_vbmi);
  o.Set("avxvnni", f.avx_vnni);
  o.Set("isa", cpu::isa_name(cpu::isa()));
  return o;
}

static Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array a = Napi::Array::New(env);
  Napi::Object c = Napi::Object::New(env);
  c.Set("id", "cpu");
  c.Set("kind", "cpu");
  c.Set("index", 0);
  c.Set("threads", cpu::ThreadPool::global().threads());
  a.Set(0u, c);
  int n = cuda::device_count();
  for (int i = 0; i < n; ++i) {
    cuda::DeviceProps p = cuda::props(i);
    Napi::Object g = Napi::Object::New(env);
    g.Set("id", "cuda:" + std::to_string(i));
    g.Set("kind", "cuda");
    g.Set("index", i);
    g.Set("name", p.name);
    g.Set("totalBytes", static_cast<double>(p.total_bytes));
    g.Set("freeBytes", static_cast<double>(p.free_bytes));
    g.Set("computeCapability", std::to_string(p.cc_major) + "." + std::to_string(p.cc_minor));
    g.Set("multiprocessors", p.sm_count);
    a.Set(static_cast<uint32_t>(i + 1), g);
  }
  return a;
}

static Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int n = cuda::device_count();
  o.Set("compiled", cuda::compiled());
  o.Set("available", n > 0);
  o.Set("deviceCount", n);
  o.Set("reason", cuda::unavailable_reason());
  const cuda::DriverInfo d = cuda::driver();
  o.Set("driverVersion", d.release);
  o.Set("driverCudaVersion", d.cuda_version ? cuda::cuda_version_text(d.cuda_version) : "");
  o.Set("driverTooOld", !cuda::driver_floor_reason(d, cuda::runtime_version()).empty());
  return o;
}

static Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  OpArgs a(info, "setThreads");
  int64_t n = a.integer(0, "threads");
  if (n < 1 || n > 1024)
    fail(Code::E_ARGUMENT, "setThreads: thread count must be in 1..1024, got %lld", static_cast<long long>(n));
  cpu::ThreadPool::global().set_threads(static_cast<int>(n));
  return info.Env().Undefined();
}

static Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cpu::ThreadPool::global().threads());
}

// A CPU rank's own thread pool: setStreamPool(streams, threads, cpus) makes one pool of `threads`
// threads bound to `cpus` (an empty list: unbound) and runs every stream's kernels on it;
// setStreamPool(streams, other) shares the pool of the CPU stream `other`;
// setStreamPool(streams, null) puts them back on the global pool. streamPool(stream): the pool's
// {threads, cpus}, or null. allowedCpus(): the CPUs this process may run on.
static std::vector<Stream*> cpu_streams_arg(const OpArgs& a, size_t i) {
  if (!a.present(i) || !a.info()[i].IsArray()) fail(Code::E_ARGUMENT, "%s: 'streams' must be an array of Streams", a.op());
  Napi::Array arr = a.info()[i].As<Napi::Array>();
  std::vector<Stream*> out;
  for (uint32_t j = 0; j < arr.Length(); ++j) {
    Napi::Value v = arr.Get(j);
    if (!StreamWrap::IsStream(a.env(), v)) fail(Code::E_ARGUMENT, "%s: streams[%u] is not a Stream", a.op(), j);
    Stream& s = StreamWrap::Unwrap(v.As<Napi::Object>())->get();
    if (!s.device().is_cpu()) fail(Code::E_DEVICE, "%s: streams[%u] is on %s, not the CPU", a.op(), j, s.device().str().c_str());
    out.push_back(&s);
  }
  return out;
}

static Napi::Value SetStreamPool(const Napi::CallbackInfo& info) {
  OpArgs a(info, "setStreamPool");
  std::vector<Stream*> streams = cpu_streams_arg(a, 0);
  std::shared_ptr<cpu::ThreadPool> pool;
  if (a.present(1) && StreamWrap::IsStream(info.Env(), info[1])) {
    // another CPU stream's pool, shared (e.g. the one that placed a rank's experts: lib/model/load.ts)
    Stream& from = StreamWrap::Unwrap(info[1].As<Napi::Object>())->get();
    if (!from.device().is_cpu())
      fail(Code::E_DEVICE, "setStreamPool: the pool's stream is on %s, not the CPU", from.device().str().c_str());
    pool = from.pool();
  } else if (a.present(1)) {
    int64_t n = a.integer(1, "threads");
    if (n < 1 || n > 1024)
      fail(Code::E_ARGUMENT, "setStreamPool: thread count must be in 1..1024, got %lld", static_cast<long long>(n));
    std::vector<int> cpus;
    if (a.present(2)) {
      if (!info[2].IsArray()) fail(Code::E_ARGUMENT, "setStreamPool: 'cpus' must be an array of CPU numbers");
      const std::vector<int> allowed = cpu::allowed_cpus();
      Napi::Array arr = info[2].As<Napi::Array>();
      for (uint32_t j = 0; j < arr.Length(); ++j) {
        Napi::Value v = arr.Get(j);
        double c = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
        if (std::find(allowed.begin(), allowed.end(), c) == allowed.end())
          fail(Code::E_ARGUMENT, "setStreamPool: cpus[%u] is not a CPU this process may run on (%zu allowed, CPU %d up)", j,
               allowed.size(), allowed.empty() ? 0 : allowed.front());
        cpus.push_back(static_cast<int>(c));
      }
    }
    pool = std::make_shared<cpu::ThreadPool>(static_cast<int>(n), std::move(cpus));
  }
  for (Stream* s : streams) s->set_pool(pool);
  return info.Env().Undefined();
}

static Napi::Value StreamPool(const Napi::CallbackInfo& info) {
  OpArgs a(info, "streamPool");
  if (!a.present(0) || !StreamWrap::IsStream(info.Env(), info[0])) fail(Code::E_ARGUMENT, "streamPool: expected a Stream");
  Stream& s = StreamWrap::Unwrap(info[0].As<Napi::Object>())->get();
  if (!s.device().is_cpu()) return info.Env().Null();
  std::shared_ptr<cpu::ThreadPool> pool = s.pool();
  if (!pool) return info.Env().Null();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("threads", pool->threads());
  Napi::Array cpus = Napi::Array::New(info.Env(), pool->cpus().size());
  for (uint32_t j = 0; j < pool->cpus().size(); ++j) cpus.Set(j, pool->cpus()[j]);
  o.Set("cpus", cpus);
  return o;
}

static Napi::Value AllowedCpus(const Napi::CallbackInfo& info) {
  const std::vector<int> cpus = cpu::allowed_cpus();
  Napi::Array arr = Napi::Array::New(info.Env(), cpus.size());
  for (uint32_t j = 0; j < cpus.size(); ++j) arr.Set(j, cpus[j]);
  return arr;
}

static Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  OpArgs a(info, "setIsa");
  cpu::Isa i;
  std::string s = a.string(0, "isa");
  if (!cpu::isa_from_name(s, &i)) fail(Code::E_ARGUMENT, "setIsa: unknown ISA '%s' (scalar, avx2 or avx512)", s.c_str());
  cpu::set_isa(i);
  return Napi::String::New(info.Env(), cpu::isa_name(cpu::isa()));
}

static Napi::Object stats_object(const Napi::CallbackInfo& info, const PoolStats& s) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("liveBytes", static_cast<double>(s.live_bytes));
  o.Set("cachedBytes", static_cast<double>(s.cached_bytes));
  o.Set("peakBytes", static_cast<double>(s.peak_bytes));
  o.Set("liveBlocks", static_cast<double>(s.live_blocks));
  return o;
}

static Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  return stats_object(info, device_pool(device_arg(info, 0)).stats());
}

static Napi::Value PinnedMemoryStats(const Napi::CallbackInfo& info) { return stats_object(info, pinned_pool().stats()); }

static Napi::Value TrimPool(const Napi::CallbackInfo& info) {
  device_pool(device_arg(info, 0)).trim();
  return info.Env().Undefined();
}

static Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  device_synchronize(device_arg(info, 0));
  return info.Env().Undefined();
}

LC_REGISTER_OP("buildInfo", BuildInfo);
LC_REGISTER_OP("cpuFeatures", CpuFeatures);
LC_REGISTER_OP("devices", Devices);
LC_REGISTER_OP("cudaStatus", CudaStatus);
LC_REGISTER_OP("setThreads", SetThreads);
LC_REGISTER_OP("threads", Threads);
LC_REGISTER_OP("setStreamPool", SetStreamPool);
LC_REGISTER_OP("streamPool", StreamPool);
LC_REGISTER_OP("allowedCpus", AllowedCpus);
LC_REGISTER_OP("setIsa", SetIsa);
LC_REGISTER_OP("memoryStats", MemoryStats);
LC_REGISTER_OP("pinnedMemoryStats", PinnedMemoryStats);
LC_REGISTER_OP("trimPool", TrimPool);
LC_REGISTER_OP("synchronize", Synchronize);

}  // namespace lc

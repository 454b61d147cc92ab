// Awaitable waits, settling a promise on the JS thread, so that JS awaits the device instead of
// blocking its event loop (native.synchronizeAsync(device), Stream.synchronizeAsync()): a Fence
// (device.h) waited for on a libuv worker thread, or on the CPU device, the streams reporting
// their own arrival (await_cpu_streams); and readAsync, a CPU stream's read-back in stream order.
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>

#include "binding.h"

namespace lc {

Napi::Value error_value(Napi::Env env, Code code, const std::string& msg) {
  try {
    throw Error(code, msg);
  } catch (...) {
    try {
      rethrow_as_js(env);
    } catch (const Napi::Error& e) {
      return e.Value();
    }
  }
}

void PromiseWorker::Execute() {
  try {
    run();
  } catch (const Error& e) {
    failed_ = true, code_ = e.code, message_ = e.what();
  } catch (const std::exception& e) {
    failed_ = true, code_ = Code::E_INTERNAL, message_ = e.what();
  } catch (...) {
    failed_ = true, code_ = Code::E_INTERNAL, message_ = "unknown native exception on a worker thread";
  }
}

void PromiseWorker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  if (failed_) {
    deferred_.Reject(error_value(env, code_, message_));
    return;
  }
  try {
    deferred_.Resolve(value(env));
  } catch (const Error& e) {
    deferred_.Reject(error_value(env, e.code, e.what()));
  } catch (const std::exception& e) {
    deferred_.Reject(error_value(env, Code::E_INTERNAL, e.what()));
  }
}

namespace {

class FenceWorker : public PromiseWorker {
 public:
  FenceWorker(Napi::Env env, std::unique_ptr<Fence> fence, std::function<void()> then, Napi::Value keep)
      : PromiseWorker(env, "longcat:synchronizeAsync"), fence_(std::move(fence)), then_(std::move(then)) {
    if (keep.IsObject()) keep_ = Napi::Persistent(keep.As<Napi::Object>());
  }

 private:
  void run() override { fence_->wait(); }
  Napi::Value value(Napi::Env env) override {
    fence_.reset();  // its events are destroyed on the JS thread, like every other event
    if (then_) then_();
    return env.Undefined();
  }
  std::unique_ptr<Fence> fence_;
  std::function<void()> then_;
  Napi::ObjectReference keep_;
};

// synchronizeAsync('cpu') the short way: a job queued on each of the calling thread's CPU streams
// counts down, and the stream thread that runs the last one hands the settling to the JS thread
// (a thread-safe function call), so the JS thread is woken once, by the last stream to get there.
// (A Fence waited for on a libuv worker wakes that worker first and the JS thread after it: ~0.13
// ms more per scheduler round on the 2-vCPU VM, bench/RESULTS.md, session 10.)
struct CpuCountdown;
struct CpuSettle {
  CpuSettle(Napi::Env env, Device d, std::shared_ptr<CpuCountdown> cd)
      : deferred(Napi::Promise::Deferred::New(env)), device(d), countdown(std::move(cd)) {}
  Napi::Promise::Deferred deferred;
  Device device;
  std::shared_ptr<CpuCountdown> countdown;
};

// On the JS thread: the streams' errors, then the promise (like FenceWorker::OnOK).
void settle_cpu(Napi::Env env, Napi::Function, CpuSettle* c, std::nullptr_t*) {
  if (env == nullptr) return;  // the environment was torn down first: nothing to settle
  Napi::HandleScope scope(env);
  try {
    device_raise_errors(c->device);
    c->deferred.Resolve(env.Undefined());
  } catch (const Error& e) {
    c->deferred.Reject(error_value(env, e.code, e.what()));
  } catch (const std::exception& e) {
    c->deferred.Reject(error_value(env, Code::E_INTERNAL, e.what()));
  }
}
using CpuSettleFn = Napi::TypedThreadSafeFunction<CpuSettle, std::nullptr_t, settle_cpu>;

// Shared by the streams' jobs: the last one calls fn, unless the function was finalized first
// (its environment torn down before the streams drained: Node then frees it whoever holds it).
struct CpuCountdown {
  explicit CpuCountdown(int64_t n) : left(n) {}
  std::atomic<int64_t> left;
  std::mutex m;
  bool finalized = false;
  CpuSettleFn fn;
};

Napi::Value await_cpu_streams(Napi::Env env, Device d) {
  const std::vector<Stream*> streams = this_thread_cpu_streams();
  for (Stream* s : streams)
    if (s->capturing()) fail(Code::E_ARGUMENT, "synchronizeAsync(%s): a stream is being captured into a graph", d.str().c_str());
  auto cd = std::make_shared<CpuCountdown>(static_cast<int64_t>(streams.size()));
  auto* c = new CpuSettle(env, d, cd);
  Napi::Promise p = c->deferred.Promise();
  if (streams.empty()) {
    settle_cpu(env, Napi::Function(), c, nullptr);
    delete c;
    return p;
  }
  cd->fn = CpuSettleFn::New(env, "longcat:synchronizeAsync", 0, 1, c, [](Napi::Env, void*, CpuSettle* ctx) {
    {
      std::lock_guard<std::mutex> lk(ctx->countdown->m);
      ctx->countdown->finalized = true;
    }
    delete ctx;
  });
  for (Stream* s : streams)
    s->enqueue(
        [cd] {
          if (cd->left.fetch_sub(1) != 1) return;
          std::lock_guard<std::mutex> lk(cd->m);
          if (cd->finalized) return;
          cd->fn.NonBlockingCall();
          cd->fn.Release();
        },
        "synchronizeAsync");
  return p;
}

// readAsync(stream, tensors) on the CPU: a job queued on the stream copies the tensors' bytes out
// when the stream gets there and hands them to the JS thread (one wake, as await_cpu_streams), so
// the caller reads one step's results while the work queued behind them (the next step) runs.
struct CpuRead;
struct CpuReadSettle {
  CpuReadSettle(Napi::Env env, Device d, std::shared_ptr<CpuRead> r)
      : deferred(Napi::Promise::Deferred::New(env)), device(d), read(std::move(r)) {}
  Napi::Promise::Deferred deferred;
  Device device;
  std::shared_ptr<CpuRead> read;
};

void settle_read(Napi::Env env, Napi::Function, CpuReadSettle* c, std::nullptr_t*);
using CpuReadFn = Napi::TypedThreadSafeFunction<CpuReadSettle, std::nullptr_t, settle_read>;

struct CpuRead {
  std::vector<Tensor> tensors;            // kept alive until the job ran
  std::vector<std::vector<uint8_t>> out;  // written by the stream's thread before the call
  std::mutex m;
  bool finalized = false;
  CpuReadFn fn;
};

// On the JS thread: the streams' errors (a failed step's bytes are not results), then the bytes.
void settle_read(Napi::Env env, Napi::Function, CpuReadSettle* c, std::nullptr_t*) {
  if (env == nullptr) return;
  Napi::HandleScope scope(env);
  try {
    device_raise_errors(c->device);
    Napi::Array arr = Napi::Array::New(env, c->read->out.size());
    for (size_t i = 0; i < c->read->out.size(); ++i) {
      const std::vector<uint8_t>& b = c->read->out[i];
      Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, b.size());
      if (!b.empty()) std::memcpy(buf.Data(), b.data(), b.size());
      arr.Set(static_cast<uint32_t>(i), Napi::Uint8Array::New(env, b.size(), buf, 0));
    }
    c->deferred.Resolve(arr);
  } catch (const Error& e) {
    c->deferred.Reject(error_value(env, e.code, e.what()));
  } catch (const std::exception& e) {
    c->deferred.Reject(error_value(env, Code::E_INTERNAL, e.what()));
  }
}

}  // namespace

// readAsync(stream, tensors): resolves with each tensor's bytes as they are once the work queued on
// `stream` before the call ran (CPU tensors on a CPU stream); later work is not waited for.
static Napi::Value ReadAsync(const Napi::CallbackInfo& info) {
  OpArgs a(info, "readAsync");
  std::vector<Tensor> ts = a.tensor_list(1, "tensors");
  for (const Tensor& t : ts)
    if (!t.device().is_cpu())
      fail(Code::E_DEVICE, "readAsync: a tensor is on %s; it reads CPU tensors", t.device().str().c_str());
  Stream& s = a.stream(0, Device{});
  if (s.capturing()) fail(Code::E_ARGUMENT, "readAsync: the stream is being captured into a graph");
  auto r = std::make_shared<CpuRead>();
  r->tensors = std::move(ts);
  r->out.resize(r->tensors.size());
  auto* c = new CpuReadSettle(info.Env(), Device{}, r);
  Napi::Promise p = c->deferred.Promise();
  r->fn = CpuReadFn::New(info.Env(), "longcat:readAsync", 0, 1, c, [](Napi::Env, void*, CpuReadSettle* ctx) {
    {
      std::lock_guard<std::mutex> lk(ctx->read->m);
      ctx->read->finalized = true;
    }
    delete ctx;
  });
  s.enqueue(
      [r] {
        for (size_t i = 0; i < r->tensors.size(); ++i) {
          const Tensor& t = r->tensors[i];
          const auto* src = static_cast<const uint8_t*>(t.data());
          r->out[i].assign(src, src + t.nbytes());
        }
        r->tensors.clear();
        std::lock_guard<std::mutex> lk(r->m);
        if (r->finalized) return;
        r->fn.NonBlockingCall();
        r->fn.Release();
      },
      "readAsync");
  return p;
}
LC_REGISTER_OP("readAsync", ReadAsync);

Napi::Value await_fence(Napi::Env env, std::unique_ptr<Fence> fence, std::function<void()> then, Napi::Value keep) {
  return (new FenceWorker(env, std::move(fence), std::move(then), keep))->queue();
}

// synchronizeAsync(device?): the awaitable native.synchronize(device): resolves once the work
// queued on the device's streams so far ran (CUDA: the whole device), rejects with its error.
static Napi::Value SynchronizeAsync(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0);
  if (d.is_cpu()) return await_cpu_streams(info.Env(), d);
  return await_fence(
      info.Env(), Fence::of_device(d), [d] { device_raise_errors(d); }, info.Env().Undefined());
}
LC_REGISTER_OP("synchronizeAsync", SynchronizeAsync);

}  // namespace lc

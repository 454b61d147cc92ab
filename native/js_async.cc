// Awaitable waits, settling a promise on the JS thread, so that JS awaits the device instead of
// blocking its event loop (native.synchronizeAsync(device), Stream.synchronizeAsync()): a Fence
// (device.h) waited for on a libuv worker thread, or on the CPU device, the streams reporting
// their own arrival (await_cpu_streams); and readAsync, a CPU stream's read-back in stream order.
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

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

}  // namespace

// synchronizeAsync('cpu') the short way: a job queued on each of the calling thread's CPU streams
// counts down, and the stream thread that runs the last one hands the settling to the JS thread
// (a thread-safe function call), so the JS thread is woken once, by the last stream to get there.
// (A Fence waited for on a libuv worker wakes that worker first and the JS thread after it: ~0.13
// ms more per scheduler round on the 2-vCPU VM, bench/RESULTS.md, session 10.) readAsync is the
// same with one stream whose job first copies the tensors' bytes out: the caller reads one step's
// results while the work queued behind them (the next step) runs.
struct CpuCountdown;
struct CpuSettle {
  CpuSettle(Napi::Env env, Device d, std::shared_ptr<CpuCountdown> cd)
      : deferred(Napi::Promise::Deferred::New(env)), device(d), countdown(std::move(cd)) {}
  Napi::Promise::Deferred deferred;
  Device device;
  std::shared_ptr<CpuCountdown> countdown;
};

void settle_cpu(Napi::Env env, Napi::Function, CpuSettler* s, CpuSettle* c);
using CpuSettleFn = Napi::TypedThreadSafeFunction<CpuSettler, CpuSettle, settle_cpu>;

// One thread-safe function per environment settles every CPU wait and read (AddonData::cpu_settler):
// creating and releasing one per wait cost the JS thread a handle's setup and close on every
// scheduler round. It holds the event loop open only while a promise of it is unsettled (`pending`,
// JS thread only), as a function per wait did.
struct CpuSettler {
  std::mutex m;
  bool finalized = false;  // (under m) the environment was torn down: Node freed the function
  CpuSettleFn fn;
  int64_t pending = 0;
};

// Shared by the streams' jobs: the last one hands `settle` to the settler's function, unless that
// was finalized first (its environment torn down before the streams drained).
struct CpuCountdown {
  explicit CpuCountdown(int64_t n) : left(n) {}
  std::atomic<int64_t> left;
  bool read = false;                                   // readAsync: resolve with `out`
  std::vector<Tensor> tensors;                         // readAsync: kept alive until the job copied them
  std::vector<std::vector<uint8_t>> out;               // their bytes, written by the stream's thread before the call
  std::thread::id owner = std::this_thread::get_id();  // whose streams a read takes errors from
  std::mutex m;
  Code code = Code::E_INTERNAL;  // the first error the jobs took (under m)
  std::string error;
  std::shared_ptr<CpuSettler> settler;
  CpuSettle* settle = nullptr;  // handed to the settler's call, which deletes it
};

namespace {

// The environment's settler, made on first use (its function does not hold the loop open by itself).
std::shared_ptr<CpuSettler> cpu_settler(Napi::Env env) {
  std::shared_ptr<CpuSettler>& s = addon_data(env).cpu_settler;
  if (s) return s;
  s = std::make_shared<CpuSettler>();
  s->fn = CpuSettleFn::New(env, "longcat:settle", 0, 1, s.get(), [](Napi::Env, void*, CpuSettler* ctx) {
    std::lock_guard<std::mutex> lk(ctx->m);
    ctx->finalized = true;
  });
  s->fn.Unref(env);
  return s;
}

}  // namespace

// On the JS thread: the error the streams' jobs took (a failed step's bytes are not results), then
// the promise (like FenceWorker::OnOK), with readAsync's bytes.
void settle_cpu(Napi::Env env, Napi::Function, CpuSettler* s, CpuSettle* c) {
  std::unique_ptr<CpuSettle> own(c);
  if (env == nullptr) return;  // the environment was torn down first: nothing to settle
  if (--s->pending == 0) s->fn.Unref(env);
  Napi::HandleScope scope(env);
  try {
    if (!c->countdown->error.empty()) throw Error(c->countdown->code, c->countdown->error);
    if (!c->countdown->read) {
      c->deferred.Resolve(env.Undefined());
      return;
    }
    const std::vector<std::vector<uint8_t>>& out = c->countdown->out;
    Napi::Array arr = Napi::Array::New(env, out.size());
    for (size_t i = 0; i < out.size(); ++i) {
      Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, out[i].size());
      if (!out[i].empty()) std::memcpy(buf.Data(), out[i].data(), out[i].size());
      arr.Set(static_cast<uint32_t>(i), Napi::Uint8Array::New(env, out[i].size(), buf, 0));
    }
    c->deferred.Resolve(arr);
  } catch (const Error& e) {
    c->deferred.Reject(error_value(env, e.code, e.what()));
  } catch (const std::exception& e) {
    c->deferred.Reject(error_value(env, Code::E_INTERNAL, e.what()));
  }
}

namespace {

// A promise settled once each of `streams` ran the work queued on it so far (`cd` counts them).
Napi::Value settle_after_streams(Napi::Env env, Device d, const std::vector<Stream*>& streams, std::shared_ptr<CpuCountdown> cd,
                                 const char* name) {
  auto* c = new CpuSettle(env, d, cd);
  Napi::Promise p = c->deferred.Promise();
  std::shared_ptr<CpuSettler> settler = cpu_settler(env);
  if (settler->pending++ == 0) settler->fn.Ref(env);
  if (streams.empty()) {
    settle_cpu(env, Napi::Function(), settler.get(), c);
    return p;
  }
  cd->settler = std::move(settler);
  cd->settle = c;
  // Each job takes the errors in its stream's order, when the stream gets there (not when the JS
  // thread settles: by then the work queued behind may have failed too, and that failure is the next
  // wait's). A read takes its own stream's, else one another stream of the thread kept (a step's part
  // that failed on its stream, Graph::replay): its bytes depend on that step. A wait takes its own.
  for (Stream* s : streams)
    s->enqueue(
        [cd, s] {
          for (size_t i = 0; i < cd->tensors.size(); ++i) {
            const auto* src = static_cast<const uint8_t*>(cd->tensors[i].data());
            cd->out[i].assign(src, src + cd->tensors[i].nbytes());
          }
          cd->tensors.clear();
          {
            std::lock_guard<std::mutex> lk(cd->m);  // (the first error only: the others stay for their next wait)
            if (cd->error.empty() && !s->take_error(&cd->code, &cd->error) && cd->read)
              take_cpu_stream_error(cd->owner, &cd->code, &cd->error);
          }
          if (cd->left.fetch_sub(1) != 1) return;
          CpuSettler& settler = *cd->settler;
          std::lock_guard<std::mutex> lk(settler.m);
          if (settler.finalized || settler.fn.NonBlockingCall(cd->settle) != napi_ok) delete cd->settle;
          cd->settle = nullptr;
        },
        name);
  return p;
}

Napi::Value await_cpu_streams(Napi::Env env, Device d) {
  const std::vector<Stream*> streams = this_thread_cpu_streams();
  for (Stream* s : streams)
    if (s->capturing()) fail(Code::E_ARGUMENT, "synchronizeAsync(%s): a stream is being captured into a graph", d.str().c_str());
  return settle_after_streams(env, d, streams, std::make_shared<CpuCountdown>(static_cast<int64_t>(streams.size())),
                              "synchronizeAsync");
}

}  // namespace

Napi::Value await_cpu_stream(Napi::Env env, Stream& s) {
  if (s.capturing()) fail(Code::E_ARGUMENT, "synchronizeAsync() on a stream that is being captured into a graph");
  return settle_after_streams(env, s.device(), {&s}, std::make_shared<CpuCountdown>(1), "synchronizeAsync");
}

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
  auto cd = std::make_shared<CpuCountdown>(1);
  cd->read = true;
  cd->out.resize(ts.size());
  cd->tensors = std::move(ts);
  return settle_after_streams(info.Env(), Device{}, {&s}, std::move(cd), "readAsync");
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

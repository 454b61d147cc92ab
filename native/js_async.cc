// Awaitable waits: a Fence (device.h) waited for on a libuv worker thread, settling a promise on
// the JS thread, so that JS awaits the device instead of blocking its event loop
// (native.synchronizeAsync(device), Stream.synchronizeAsync()).
#include "binding.h"

namespace lc {

namespace {

// The LongcatError for a code and message, as a value (to reject a promise with).
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

class FenceWorker : public Napi::AsyncWorker {
 public:
  FenceWorker(Napi::Env env, std::unique_ptr<Fence> fence, std::function<void()> then, Napi::Value keep)
      : Napi::AsyncWorker(env, "longcat:synchronizeAsync"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fence_(std::move(fence)),
        then_(std::move(then)) {
    if (keep.IsObject()) keep_ = Napi::Persistent(keep.As<Napi::Object>());
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      fence_->wait();
    } catch (const Error& e) {
      failed_ = true, code_ = e.code, message_ = e.what();
    } catch (const std::exception& e) {
      failed_ = true, code_ = Code::E_INTERNAL, message_ = e.what();
    } catch (...) {
      failed_ = true, code_ = Code::E_INTERNAL, message_ = "unknown native exception while waiting";
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    fence_.reset();  // its events are destroyed on the JS thread, like every other event
    if (failed_) {
      deferred_.Reject(error_value(env, code_, message_));
      return;
    }
    try {
      if (then_) then_();
      deferred_.Resolve(env.Undefined());
    } catch (const Error& e) {
      deferred_.Reject(error_value(env, e.code, e.what()));
    } catch (const std::exception& e) {
      deferred_.Reject(error_value(env, Code::E_INTERNAL, e.what()));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<Fence> fence_;
  std::function<void()> then_;
  Napi::ObjectReference keep_;
  bool failed_ = false;
  Code code_ = Code::E_INTERNAL;
  std::string message_;
};

}  // namespace

Napi::Value await_fence(Napi::Env env, std::unique_ptr<Fence> fence, std::function<void()> then, Napi::Value keep) {
  auto* w = new FenceWorker(env, std::move(fence), std::move(then), keep);  // deletes itself when done
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// synchronizeAsync(device?): the awaitable native.synchronize(device): resolves once the work
// queued on the device's streams so far ran (CUDA: the whole device), rejects with its error.
static Napi::Value SynchronizeAsync(const Napi::CallbackInfo& info) {
  Device d = device_arg(info, 0);
  return await_fence(
      info.Env(), Fence::of_device(d), [d] { device_raise_errors(d); }, info.Env().Undefined());
}
LC_REGISTER_OP("synchronizeAsync", SynchronizeAsync);

}  // namespace lc

// The JS Stream class (StreamWrap): an ordered queue of work on one device (a worker thread on the
// CPU, a cudaStream_t on CUDA), and native.defaultStream(device), the stream ops use given null
// (one per JS environment: addon.cc).
#include "binding.h"

namespace lc {

Napi::Function StreamWrap::Init(Napi::Env env) {
  return DefineClass(
      env, "Stream",
      {InstanceAccessor<&StreamWrap::DeviceName>("device"), InstanceMethod<&StreamWrap::Synchronize>("synchronize"),
       InstanceMethod<&StreamWrap::SynchronizeAsync>("synchronizeAsync"), InstanceMethod<&StreamWrap::WaitEvent>("waitEvent"),
       InstanceMethod<&StreamWrap::Dispose>("dispose")});
}

StreamWrap::StreamWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StreamWrap>(info) {
  if (info.Length() == 1 && info[0].IsExternal()) {
    s_ = *info[0].As<Napi::External<std::shared_ptr<Stream>>>().Data();
    return;
  }
  try {
    s_ = std::make_shared<Stream>(device_arg(info, 0));
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

Napi::Object StreamWrap::WrapDefault(Napi::Env env, Device d) {
  std::shared_ptr<Stream> s = default_stream(env, d);
  return addon_data(env).stream_ctor.New({Napi::External<std::shared_ptr<Stream>>::New(env, &s)});
}

bool StreamWrap::IsStream(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(addon_data(env).stream_ctor.Value());
}

const std::shared_ptr<Stream>& StreamWrap::shared() const {
  if (!s_) fail(Code::E_DISPOSED, "stream was disposed");
  return s_;
}

Napi::Value StreamWrap::DeviceName(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), get().device().str()); });
}
Napi::Value StreamWrap::Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    get().synchronize();
    return info.Env().Undefined();
  });
}
// The awaitable synchronize(): resolves once the work queued so far ran, rejects with its error.
Napi::Value StreamWrap::SynchronizeAsync(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (get().device().is_cpu()) return await_cpu_stream(info.Env(), get());
    // CUDA: the fence's wait reports the stream's errors itself; the wrapper outlives it (`keep`).
    return await_fence(info.Env(), Fence::of_stream(get()), nullptr, info.This());
  });
}
Napi::Value StreamWrap::WaitEvent(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !EventWrap::IsEvent(info.Env(), info[0]))
      fail(Code::E_ARGUMENT, "waitEvent(event): expected an Event");
    EventWrap::Unwrap(info[0].As<Napi::Object>())->get().wait_on(get());
    return info.Env().Undefined();
  });
}
Napi::Value StreamWrap::Dispose(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (s_) {
      s_->synchronize();  // runs what is queued; errors surface here
      s_.reset();         // graphs that replay on it keep it alive
    }
    return info.Env().Undefined();
  });
}
// The stream ops use when given null: one per device, ordered with every null-stream op.
static Napi::Value DefaultStream(const Napi::CallbackInfo& info) {
  return StreamWrap::WrapDefault(info.Env(), device_arg(info, 0));
}
LC_REGISTER_OP("defaultStream", DefaultStream);

}  // namespace lc

// The JS Event class (EventWrap): a marker recorded on a stream, which other streams can wait on
// and which times the work between two of them (elapsedMs).
#include "binding.h"

namespace lc {

Napi::Function EventWrap::Init(Napi::Env env) {
  return DefineClass(env, "Event",
                     {InstanceMethod<&EventWrap::Record>("record"), InstanceMethod<&EventWrap::Synchronize>("synchronize"),
                      InstanceMethod<&EventWrap::Query>("query"), InstanceMethod<&EventWrap::ElapsedMs>("elapsedMs")});
}

EventWrap::EventWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventWrap>(info) {
  try {
    e_ = std::make_unique<Event>(device_arg(info, 0));
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

bool EventWrap::IsEvent(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(addon_data(env).event_ctor.Value());
}

Event& EventWrap::get() const { return *e_; }

Napi::Value EventWrap::Record(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Stream* s = default_stream(info.Env(), e_->device()).get();
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
      if (!StreamWrap::IsStream(info.Env(), info[0])) fail(Code::E_ARGUMENT, "record(stream?): expected a Stream");
      s = &StreamWrap::Unwrap(info[0].As<Napi::Object>())->get();
    }
    e_->record(*s);
    return info.Env().Undefined();
  });
}
Napi::Value EventWrap::Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    e_->synchronize();
    return info.Env().Undefined();
  });
}
Napi::Value EventWrap::Query(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::Boolean::New(info.Env(), e_->query()); });
}
Napi::Value EventWrap::ElapsedMs(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !IsEvent(info.Env(), info[0])) fail(Code::E_ARGUMENT, "elapsedMs(end): expected an Event");
    return Napi::Number::New(info.Env(), e_->elapsed_ms(Unwrap(info[0].As<Napi::Object>())->get()));
  });
}

}  // namespace lc

// Module entry: creates the per-environment AddonData and exports the JS classes (js_tensor.cc,
// js_stream.cc, js_event.cc, js_graph.cc) and every registered module function (ops/*.cc,
// js_*.cc), each wrapped so that an lc::Error thrown inside becomes a LongcatError.
#include "binding.h"

namespace lc {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

const std::shared_ptr<Stream>& default_stream(Napi::Env env, Device d) {
  auto& s = addon_data(env).default_streams[{d.kind, d.index}];
  if (!s) s = std::make_shared<Stream>(d);
  return s;
}

// setErrorFactory(makeError) lets the SDK supply its LongcatError constructor.
static Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction())
    throw Napi::TypeError::New(info.Env(), "setErrorFactory(fn): expected a function");
  addon_data(info.Env()).make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* d = new AddonData();
  env.SetInstanceData(d);
  auto add_class = [&](const char* name, Napi::Function ctor, Napi::FunctionReference& ref) {
    ref = Napi::Persistent(ctor);
    exports.Set(name, ctor);
  };
  add_class("Tensor", TensorWrap::Init(env), d->tensor_ctor);
  add_class("Stream", StreamWrap::Init(env), d->stream_ctor);
  add_class("Event", EventWrap::Init(env), d->event_ctor);
  add_class("Graph", GraphWrap::Init(env), d->graph_ctor);
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory));
  for (const RegisteredOp& op : registered_ops())
    exports.Set(op.name, Napi::Function::New(
                             env,
                             [op](const Napi::CallbackInfo& info) -> Napi::Value {
                               return guarded(info, [&]() -> Napi::Value { return op.call(info); });
                             },
                             op.name));
  return exports;
}

}  // namespace lc

static Napi::Object InitLongcat(Napi::Env env, Napi::Object exports) { return lc::Init(env, exports); }
NODE_API_MODULE(longcat, InitLongcat)

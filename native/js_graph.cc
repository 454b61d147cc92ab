// The JS Graph class (GraphWrap) and native.captureGraph(streams, fn), which records the ops fn()
// queues on `streams` into a graph that replay() queues again as one unit. The graph keeps its
// streams alive: replay after the JS Stream was disposed or collected still runs.
#include "binding.h"

namespace lc {

Napi::Function GraphWrap::Init(Napi::Env env) {
  return DefineClass(env, "Graph",
                     {InstanceMethod<&GraphWrap::Replay>("replay"), InstanceMethod<&GraphWrap::Prewake>("prewake"),
                      InstanceMethod<&GraphWrap::Dispose>("dispose")});
}

GraphWrap::GraphWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GraphWrap>(info) {
  if (info.Length() == 1 && info[0].IsExternal()) g_.reset(info[0].As<Napi::External<Graph>>().Data());
}

Napi::Value GraphWrap::Replay(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!g_) fail(Code::E_DISPOSED, "graph was disposed");
    g_->replay();
    return info.Env().Undefined();
  });
}

Napi::Value GraphWrap::Prewake(const Napi::CallbackInfo& info) {
  if (g_) g_->prewake();
  return info.Env().Undefined();
}

Napi::Value GraphWrap::Dispose(const Napi::CallbackInfo& info) {
  g_.reset();
  return info.Env().Undefined();
}

// captureGraph(streams, fn): runs fn() with every op queued on `streams` captured instead of run;
// returns a Graph whose replay() queues all of it again (one call per step instead of one per op).
static Napi::Value CaptureGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::shared_ptr<Stream>> streams;
  try {
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsFunction())
      fail(Code::E_ARGUMENT, "captureGraph(streams, fn): expected an array of Streams and a function");
    Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!StreamWrap::IsStream(env, a.Get(i))) fail(Code::E_ARGUMENT, "captureGraph: streams[%u] is not a Stream", i);
      streams.push_back(StreamWrap::Unwrap(a.Get(i).As<Napi::Object>())->shared());
    }
    Capture::begin(streams);
  } catch (...) {
    rethrow_as_js(env);
  }
  try {
    info[1].As<Napi::Function>().Call({});
  } catch (...) {
    Capture::abort(streams);
    throw;
  }
  try {
    std::unique_ptr<Graph> g = Capture::end(streams);
    return addon_data(env).graph_ctor.New({Napi::External<Graph>::New(env, g.release())});
  } catch (...) {
    rethrow_as_js(env);
  }
}
LC_REGISTER_OP("captureGraph", CaptureGraph);

// graphProfile(on): the per-node profile gathered from the CPU graphs replayed since the last call
// (Graph profiling, device.h), then profiling switched on or off.
static Napi::Value GraphProfileFn(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    OpArgs a(info, "graphProfile");
    const bool on = a.boolean(0, "on");
    Napi::Env env = info.Env();
    const std::vector<GraphProfile> profiles = graph_profile(on);
    Napi::Array out = Napi::Array::New(env, profiles.size());
    for (size_t g = 0; g < profiles.size(); ++g) {
      const GraphProfile& p = profiles[g];
      Napi::Object o = Napi::Object::New(env);
      o.Set("replays", Napi::Number::New(env, static_cast<double>(p.replays)));
      o.Set("ns", Napi::Number::New(env, static_cast<double>(p.ns)));
      o.Set("startNs", Napi::Number::New(env, static_cast<double>(p.start_ns)));
      Napi::Array nodes = Napi::Array::New(env, p.nodes.size());
      for (size_t i = 0; i < p.nodes.size(); ++i) {
        const NodeProfile& n = p.nodes[i];
        Napi::Object no = Napi::Object::New(env);
        no.Set("op", Napi::String::New(env, n.op));
        no.Set("stream", Napi::Number::New(env, n.stream));
        no.Set("phase", Napi::Number::New(env, n.phase));
        no.Set("ns", Napi::Number::New(env, static_cast<double>(n.ns)));
        no.Set("waitNs", Napi::Number::New(env, static_cast<double>(n.wait_ns)));
        no.Set("jobs", Napi::Number::New(env, static_cast<double>(n.jobs)));
        no.Set("weightBytes", Napi::Number::New(env, static_cast<double>(n.weight_bytes)));
        no.Set("busyNs", Napi::Number::New(env, static_cast<double>(n.busy_ns)));
        nodes.Set(static_cast<uint32_t>(i), no);
      }
      o.Set("nodes", nodes);
      out.Set(static_cast<uint32_t>(g), o);
    }
    return out;
  });
}
LC_REGISTER_OP("graphProfile", GraphProfileFn);

}  // namespace lc

// The N-API side. Only binding code (addon.cc, binding.cc, js_*.cc, ops/*.cc) includes this header:
// it turns JS values into checked C++ arguments, lc::Error into LongcatError exceptions, and hands
// work to streams. Binding code checks and dispatches; it never computes (kernels do).
//
// How an op reads (embedding in ops/elementwise.cc, shortened): only what is its own.
//
//   void Embedding(const OpArgs& a) {                                 // errors say "embedding: ..."
//     Tensor y = a.tensor(1, "y"), table = a.tensor(2, "table"), ids = a.tensor(3, "ids");
//     const Device d = table.device();                               // the op runs where its input is
//     int64_t V, H;
//     a.dims(table, "table", {DType::F32, DType::BF16}, d, &V, &H);  // dtype, rank 2, device; V, H = sizes
//     a.expect(ids, "ids", {DType::I32}, d);                         // dtype and device
//     a.expect(y, "y", {DType::F32}, d, {ids.numel(), H});           // ... and the exact shape (-1: any)
//     a.launch(d, [=] { cpu::embedding(..., y.ptr<float>()); },      // CPU: queued on the stream's worker
//              LC_GPU(gpu::embedding(..., y.ptr<float>(), stream))); // CUDA: launched now on `stream`
//   }
//   LC_REGISTER_OP("embedding", Embedding);                          // exported as native.embedding
//
// Such an op returns undefined; its stream is argument 0 (a.launch checks it is on d). An op that
// returns a value is written against the CallbackInfo instead (OpFn) and makes its own OpArgs.
// From the older spelling: expect_dtype + expect_device (+ expect_shape) on one tensor is a.expect;
// expect_dtype + expect_ndim + reading t.dim(i) is a.dims; the `#ifdef LONGCAT_WITH_CUDA
// [=](void* st) {...} #else nullptr #endif` argument of launch is LC_GPU(...); `(void)keep;` in a
// lambda is hold(keep), or opt_ptr<T>(keep) where the kernel takes the optional's pointer.
// Every check throws lc::Error with a code of lib/errors.ts (E_DTYPE, E_SHAPE, E_DEVICE, ...) and a
// message "<op>: '<argument>' ..."; the op table turns it into a LongcatError.
#pragma once
#include <napi.h>

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "device.h"
#include "tensor.h"

namespace lc {

// ---- JS classes (one file each: js_tensor.cc, js_stream.cc, js_event.cc, js_graph.cc) -----------

// JS wrapper of a Tensor. Holds no tensor once disposed.
class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, Tensor t);
  static bool IsTensor(Napi::Env env, Napi::Value v);
  explicit TensorWrap(const Napi::CallbackInfo& info);
  ~TensorWrap() override;
  const Tensor& get(const char* what) const;  // throws E_DISPOSED

 private:
  void set(Napi::Env env, Tensor t);
  void drop(Napi::Env env);
  Napi::Value Dtype(const Napi::CallbackInfo&);
  Napi::Value Shape(const Napi::CallbackInfo&);
  Napi::Value DeviceName(const Napi::CallbackInfo&);
  Napi::Value Nbytes(const Napi::CallbackInfo&);
  Napi::Value Disposed(const Napi::CallbackInfo&);
  Napi::Value Pinned(const Napi::CallbackInfo&);
  Napi::Value ToBytes(const Napi::CallbackInfo&);
  Napi::Value CopyFromBytes(const Napi::CallbackInfo&);
  Napi::Value View(const Napi::CallbackInfo&);
  Napi::Value Narrow(const Napi::CallbackInfo&);
  Napi::Value To(const Napi::CallbackInfo&);
  Napi::Value Dispose(const Napi::CallbackInfo&);
  std::optional<Tensor> t_;
  int64_t external_ = 0;  // bytes reported to V8 as external memory
};

class StreamWrap : public Napi::ObjectWrap<StreamWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  static bool IsStream(Napi::Env env, Napi::Value v);
  static Napi::Object WrapDefault(Napi::Env env, Device d);
  explicit StreamWrap(const Napi::CallbackInfo& info);
  Stream& get() const { return *shared(); }
  // The stream, shared (a Graph keeps the streams it captured); throws E_DISPOSED.
  const std::shared_ptr<Stream>& shared() const;

 private:
  Napi::Value DeviceName(const Napi::CallbackInfo&);
  Napi::Value Synchronize(const Napi::CallbackInfo&);
  Napi::Value SynchronizeAsync(const Napi::CallbackInfo&);
  Napi::Value WaitEvent(const Napi::CallbackInfo&);
  Napi::Value Dispose(const Napi::CallbackInfo&);
  std::shared_ptr<Stream> s_;  // null once disposed; a default stream is shared with AddonData
};

class EventWrap : public Napi::ObjectWrap<EventWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  static bool IsEvent(Napi::Env env, Napi::Value v);
  explicit EventWrap(const Napi::CallbackInfo& info);
  Event& get() const;

 private:
  Napi::Value Record(const Napi::CallbackInfo&);
  Napi::Value Synchronize(const Napi::CallbackInfo&);
  Napi::Value Query(const Napi::CallbackInfo&);
  Napi::Value ElapsedMs(const Napi::CallbackInfo&);
  std::unique_ptr<Event> e_;
};

// A captured graph; only captureGraph makes one.
class GraphWrap : public Napi::ObjectWrap<GraphWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit GraphWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value Replay(const Napi::CallbackInfo&);
  Napi::Value Prewake(const Napi::CallbackInfo&);
  Napi::Value Dispose(const Napi::CallbackInfo&);
  std::unique_ptr<Graph> g_;
};

// Per-environment state (the main thread and every worker thread have their own): the JS
// constructors of the classes above, the SDK's error factory and the environment's default stream
// of each device (so that workers neither order behind nor capture each other's work). Set up by
// addon.cc as the environment's instance data, destroyed when the environment is torn down.
struct CpuSettler;  // js_async.cc
struct AddonData {
  Napi::FunctionReference tensor_ctor, stream_ctor, event_ctor, graph_ctor, make_error;
  std::map<std::pair<int, int>, std::shared_ptr<Stream>> default_streams;
  std::shared_ptr<CpuSettler> cpu_settler;  // made on the first CPU wait or read (js_async.cc)
};
AddonData& addon_data(Napi::Env env);
// The stream ops use when given null: one per device and environment, made on first use.
const std::shared_ptr<Stream>& default_stream(Napi::Env env, Device d);

// Converts the C++ exception in flight into the JS exception the SDK expects.
[[noreturn]] void rethrow_as_js(Napi::Env env);

// A promise that resolves once `fence` was waited for off the JS thread (on a libuv worker) and
// then `then` ran on the JS thread (e.g. raising errors kept by CPU streams); rejected with a
// LongcatError when either throws. `keep` (e.g. the Stream object) stays referenced until then.
// (js_async.cc)
Napi::Value await_fence(Napi::Env env, std::unique_ptr<Fence> fence, std::function<void()> then, Napi::Value keep);
// Stream.synchronizeAsync() on a CPU stream: a job queued on it takes the error of the work before it
// in stream order and settles the promise (as synchronizeAsync('cpu'); js_async.cc).
Napi::Value await_cpu_stream(Napi::Env env, Stream& s);
// The LongcatError for a code and message, as a value (to reject a promise with; js_async.cc).
Napi::Value error_value(Napi::Env env, Code code, const std::string& msg);

// A job on a libuv worker that settles a promise: run() off the JS thread, then on the JS thread the
// promise resolves with value() or rejects with the LongcatError of what either threw (an lc::Error
// keeps its code, anything else is E_INTERNAL). Allocated with new; deletes itself when done.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  Napi::Promise queue() {
    Napi::Promise p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  PromiseWorker(Napi::Env env, const char* name) : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}
  virtual void run() = 0;                        // on the worker
  virtual Napi::Value value(Napi::Env env) = 0;  // on the JS thread, after run() returned

 private:
  void Execute() final;
  void OnOK() final;
  Napi::Promise::Deferred deferred_;
  bool failed_ = false;
  Code code_ = Code::E_INTERNAL;
  std::string message_;
};

// The device named by info[i] ('cpu', 'cuda:N'); the CPU when it is null or undefined.
Device device_arg(const Napi::CallbackInfo& info, size_t i);

// An int64_t as the `long long` that "%lld" formats: fail(..., "k = %lld", ll(k)).
inline long long ll(int64_t v) { return static_cast<long long>(v); }

// ---- argument checks ----------------------------------------------------------------------------

using DTypes = std::initializer_list<DType>;

// Each fails with a typed error "<op>: '<name>' ..." (`want` uses -1 for "any size").
void expect_dtype(const char* op, const char* name, const Tensor& t, DTypes ok);                         // E_DTYPE
void expect_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& want);  // E_SHAPE
void expect_ndim(const char* op, const char* name, const Tensor& t, int ndim);                           // E_SHAPE
void expect_device(const char* op, const char* name, const Tensor& t, Device d);                         // E_DEVICE
// t has the shape of `ref` (named ref_name in the message).
void expect_same_shape(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref);
// Rows of a last dimension: at least one dimension and a non-zero last one (E_SHAPE).
void expect_rows(const char* op, const char* name, const Tensor& t);
// A per-row output of x ([.., V] -> [..]); a 1-D x gives one row, shape [1] or [] (E_SHAPE).
void expect_row_shape(const char* op, const char* name, const Tensor& t, const Tensor& x);
void expect_finite(const char* op, const char* name, double v);  // E_ARGUMENT for NaN / infinities

// Rank N = the number of `sizes` pointers, checked (E_SHAPE); writes the N sizes:
//   int64_t n, k;
//   expect_dims(op, "weight", w, &n, &k);
// (Plain variables rather than a structured binding: C++17 lambdas cannot capture those.)
template <typename... Size>
void expect_dims(const char* op, const char* name, const Tensor& t, Size*... sizes) {
  expect_ndim(op, name, t, static_cast<int>(sizeof...(Size)));
  int i = 0;
  ((*sizes = t.shape[i++]), ...);
}

// Positional argument access with typed errors that name the op and the argument, and the checks
// above bound to the op's name.
class OpArgs {
 public:
  OpArgs(const Napi::CallbackInfo& info, const char* op) : info_(info), op_(op) {}
  OpArgs(const OpArgs&) = delete;  // it refers to the call's arguments: a launch lambda must not capture it
  OpArgs& operator=(const OpArgs&) = delete;
  const char* op() const { return op_; }
  const Napi::CallbackInfo& info() const { return info_; }
  Napi::Env env() const { return info_.Env(); }
  bool present(size_t i) const { return i < info_.Length() && !info_[i].IsNull() && !info_[i].IsUndefined(); }
  Tensor tensor(size_t i, const char* name) const;
  std::optional<Tensor> opt_tensor(size_t i, const char* name) const;
  // A JS array of Tensors (e.g. one weight per expert).
  std::vector<Tensor> tensor_list(size_t i, const char* name) const;
  // The stream at i, or the default stream of `d` when null/undefined; checks its device.
  Stream& stream(size_t i, Device d) const;
  double number(size_t i, const char* name) const;
  int64_t integer(size_t i, const char* name) const;
  bool boolean(size_t i, const char* name) const;
  std::string string(size_t i, const char* name) const;

  // dtype one of `ok` and on device `d`; the second form also checks the exact shape (-1: any size).
  void expect(const Tensor& t, const char* name, DTypes ok, Device d) const;
  void expect(const Tensor& t, const char* name, DTypes ok, Device d, const std::vector<int64_t>& shape) const;
  // The same for an optional argument, when it was given.
  void expect(const std::optional<Tensor>& t, const char* name, DTypes ok, Device d, const std::vector<int64_t>& shape) const {
    if (t) expect(*t, name, ok, d, shape);
  }
  // dtype, rank and device in one call, writing the sizes (DeepGEMM's get_shape<N>):
  //   int64_t t, e;
  //   a.dims(logits, "logits", {DType::F32}, d, &t, &e);   // f32, rank 2, on d; t, e = its sizes
  template <typename... Size>
  void dims(const Tensor& t, const char* name, DTypes ok, Device d, Size*... sizes) const {
    expect_dtype(op_, name, t, ok);
    expect_dims(op_, name, t, sizes...);
    expect_device(op_, name, t, d);
  }
  // The routed tokens of an MoE op: u f32 [T, H], idx int32 [T, k], weights f32 [T, k] (routerTopk's
  // outputs), all on u's device; writes T, H and k.
  void routed_tokens(const Tensor& u, const Tensor& idx, const Tensor& w, int64_t* t, int64_t* h, int64_t* k) const;
  // launch() on the stream of argument 0 (d's default stream when null), which must be on d.
  // `cpu_spins`: the CPU work spins on a flag another stream's kernel releases (Stream::enqueue_spinning).
  // `split`: the CPU work in row ranges, which a graph replay may fuse with its neighbours (device.h).
  void launch(Device d, std::function<void()> cpu, std::function<void(void*)> gpu, bool cpu_spins = false,
              std::shared_ptr<const RowSplit> split = nullptr) const;

 private:
  const Napi::CallbackInfo& info_;
  const char* op_;
};

// Whether a and b share bytes of one storage (an output that must not overlap an input it reads).
inline bool overlaps(const Tensor& a, const Tensor& b) {
  return a.storage == b.storage && a.offset < b.offset + b.nbytes() && b.offset < a.offset + a.nbytes();
}

// A raw pointer into an optional tensor, null when it is absent. A launch lambda that uses it
// must also capture the optional itself (e.g. through this call inside the lambda), which keeps
// the memory alive until the work has run.
template <typename T>
T* opt_ptr(const std::optional<Tensor>& t) {
  return t ? t->ptr<T>() : nullptr;
}

// Mentioned in a launch lambda, makes [=] capture (and so keep alive until the work has run)
// tensors the work reaches only through raw pointers, e.g. a cpu::WeightRef: [=] { hold(w, scale); ... }.
template <typename... T>
void hold(const T&...) {}

// ---- handle objects ----------------------------------------------------------------------------

// A JS object that carries a C++ handle in a tagged External '_handle' (the handle is deleted with
// the object; the tag makes a forged object unrecognizable). The caller defines its other properties.
template <typename T>
Napi::Object handle_object(Napi::Env env, T* handle, const napi_type_tag& tag) {
  Napi::Object obj = Napi::Object::New(env);
  auto ext = Napi::External<T>::New(env, handle, [](Napi::Env, T* p) { delete p; });
  ext.TypeTag(&tag);
  obj.DefineProperty(Napi::PropertyDescriptor::Value("_handle", ext, napi_default));
  return obj;
}

// The handle inside an object that handle_object made with `tag`, or null when `v` is not one.
template <typename T>
T* handle_in(Napi::Value v, const napi_type_tag& tag) {
  if (!v.IsObject()) return nullptr;
  Napi::Value h = v.As<Napi::Object>().Get("_handle");
  if (!h.IsExternal() || !h.As<Napi::External<T>>().CheckTypeTag(&tag)) return nullptr;
  return h.As<Napi::External<T>>().Data();
}

// ---- dispatch ----------------------------------------------------------------------------------

// Runs an op on the stream's device: on the CPU `cpu()` is queued on the stream's worker (capture
// tensors by value: that keeps their memory alive until it has run); on CUDA `gpu(cudaStream)` is
// called now and the launch checked. A null `gpu` means the op has no CUDA kernel in this build.
void launch(const char* op, Stream& s, std::function<void()> cpu, std::function<void(void*)> gpu, bool cpu_spins = false,
            std::shared_ptr<const RowSplit> split = nullptr);

// The CUDA half of launch(): LC_GPU(gpu::kernel(args..., stream)) is a lambda capturing by value
// whose parameter `stream` is the cudaStream_t; statements may be chained with ';'. In a build
// without the CUDA backend it is nullptr (the gpu:: launchers are not even declared there), so an
// op needs no #ifdef around its launch. LC_IF_CUDA(expr, otherwise) is the same switch for a
// value computed outside the launch (e.g. a workspace size): `otherwise` without the backend.
// The gpu:: declarations come from cuda/*.h, included under #ifdef LONGCAT_WITH_CUDA.
#ifdef LONGCAT_WITH_CUDA
#define LC_GPU(...) [=](void* stream) { __VA_ARGS__; }
#define LC_IF_CUDA(expr, otherwise) (expr)
#else
#define LC_GPU(...) nullptr
#define LC_IF_CUDA(expr, otherwise) (otherwise)
#endif

// ---- registration ------------------------------------------------------------------------------

// Each ops/*.cc and js_*.cc file registers its module functions; addon.cc exports them all, each
// wrapped in guarded() so an lc::Error becomes a LongcatError. A function is either an OpFn (it
// reads the CallbackInfo and returns its value) or a StreamOpFn: an op that fills tensors it is
// given, called with its arguments bound to its name and answered with undefined.
using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
using StreamOpFn = void (*)(const OpArgs& a);
struct RegisteredOp {
  const char* name;
  OpFn fn;  // exactly one of the two is set
  StreamOpFn stream_fn;
  Napi::Value call(const Napi::CallbackInfo& info) const;
};
struct OpRegistrar {
  OpRegistrar(const char* name, OpFn fn);
  OpRegistrar(const char* name, StreamOpFn fn);
};
const std::vector<RegisteredOp>& registered_ops();
#define LC_CONCAT_(a, b) a##b
#define LC_CONCAT(a, b) LC_CONCAT_(a, b)
#define LC_REGISTER_OP(name, fn) static ::lc::OpRegistrar LC_CONCAT(lc_op_registrar_, __LINE__)(name, fn)

// For ops written as `[](const Napi::CallbackInfo& info) { ... }` bodies that may throw lc::Error.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

}  // namespace lc

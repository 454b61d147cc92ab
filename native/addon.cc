// Module entry: tensors, streams, events, device and build facts, and the registered ops.
#include <cstring>
#include <map>

#include "binding.h"
#include "cpu/features.h"
#include "cpu/threadpool.h"
#include "cuda_api.h"

namespace lc {

namespace {

struct AddonData {
  Napi::FunctionReference tensor_ctor, stream_ctor, event_ctor, graph_ctor, make_error;
};

AddonData& data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

std::vector<std::pair<const char*, OpFn>>& op_table() {
  static std::vector<std::pair<const char*, OpFn>> t;
  return t;
}

Napi::Error make_js_error(Napi::Env env, Code code, const std::string& msg) {
  AddonData& d = data(env);
  if (!d.make_error.IsEmpty()) {
    Napi::Value v = d.make_error.Call({Napi::String::New(env, code_name(code)), Napi::String::New(env, msg)});
    if (v.IsObject()) return Napi::Error(env, v);
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code_name(code)));
  return e;
}

}  // namespace

[[noreturn]] void rethrow_as_js(Napi::Env env) {
  try {
    throw;
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw make_js_error(env, e.code, e.what());
  } catch (const std::bad_alloc&) {
    throw make_js_error(env, Code::E_OOM, "out of host memory");
  } catch (const std::exception& e) {
    throw make_js_error(env, Code::E_INTERNAL, e.what());
  } catch (...) {
    throw make_js_error(env, Code::E_INTERNAL, "unknown native exception");
  }
}

// ---- argument access --------------------------------------------------------------------

Tensor OpArgs::tensor(size_t i, const char* name) const {
  if (!present(i)) fail(Code::E_ARGUMENT, "%s: argument '%s' is missing (expected a Tensor)", op_, name);
  if (!TensorWrap::IsTensor(env(), info_[i]))
    fail(Code::E_ARGUMENT, "%s: argument '%s' is not a Tensor", op_, name);
  std::string what = std::string(op_) + " argument '" + name + "'";
  return TensorWrap::Unwrap(info_[i].As<Napi::Object>())->get(what.c_str());
}

std::optional<Tensor> OpArgs::opt_tensor(size_t i, const char* name) const {
  if (!present(i)) return std::nullopt;
  return tensor(i, name);
}

std::vector<Tensor> OpArgs::tensor_list(size_t i, const char* name) const {
  if (!present(i) || !info_[i].IsArray()) fail(Code::E_ARGUMENT, "%s: argument '%s' must be an array of Tensors", op_, name);
  Napi::Array arr = info_[i].As<Napi::Array>();
  std::vector<Tensor> r;
  r.reserve(arr.Length());
  for (uint32_t j = 0; j < arr.Length(); ++j) {
    Napi::Value v = arr.Get(j);
    std::string what = std::string(op_) + " argument '" + name + "[" + std::to_string(j) + "]'";
    if (!TensorWrap::IsTensor(env(), v)) fail(Code::E_ARGUMENT, "%s is not a Tensor", what.c_str());
    r.push_back(TensorWrap::Unwrap(v.As<Napi::Object>())->get(what.c_str()));
  }
  return r;
}

Stream& OpArgs::stream(size_t i, Device d) const {
  if (!present(i)) return default_stream(d);
  if (!StreamWrap::IsStream(env(), info_[i])) fail(Code::E_ARGUMENT, "%s: 'stream' is not a Stream", op_);
  Stream& s = StreamWrap::Unwrap(info_[i].As<Napi::Object>())->get();
  if (s.device() != d)
    fail(Code::E_DEVICE, "%s: stream is on %s but the tensors are on %s", op_, s.device().str().c_str(), d.str().c_str());
  return s;
}

double OpArgs::number(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsNumber())
    fail(Code::E_ARGUMENT, "%s: argument '%s' must be a number", op_, name);
  return info_[i].As<Napi::Number>().DoubleValue();
}

int64_t OpArgs::integer(size_t i, const char* name) const {
  double v = number(i, name);
  if (v != static_cast<double>(static_cast<int64_t>(v)))
    fail(Code::E_ARGUMENT, "%s: argument '%s' must be an integer, got %g", op_, name, v);
  return static_cast<int64_t>(v);
}

bool OpArgs::boolean(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsBoolean())
    fail(Code::E_ARGUMENT, "%s: argument '%s' must be a boolean", op_, name);
  return info_[i].As<Napi::Boolean>().Value();
}

std::string OpArgs::string(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsString())
    fail(Code::E_ARGUMENT, "%s: argument '%s' must be a string", op_, name);
  return info_[i].As<Napi::String>().Utf8Value();
}

void expect_dtype(const char* op, const char* name, const Tensor& t, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (t.dtype == d) return;
  std::string list;
  for (DType d : ok) list += (list.empty() ? "" : " or ") + std::string(dtype_name(d));
  fail(Code::E_DTYPE, "%s: '%s' has dtype %s, expected %s", op, name, dtype_name(t.dtype), list.c_str());
}

void expect_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& want) {
  bool ok = t.shape.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || want[i] == t.shape[i];
  if (ok) return;
  std::string w = "[";
  for (size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + (want[i] < 0 ? std::string("*") : std::to_string(want[i]));
  fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %s]", op, name, shape_str(t.shape).c_str(), w.c_str());
}

void expect_ndim(const char* op, const char* name, const Tensor& t, int ndim) {
  if (t.ndim() != ndim)
    fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %d dimensions", op, name, shape_str(t.shape).c_str(), ndim);
}

void expect_device(const char* op, const char* name, const Tensor& t, Device d) {
  if (t.device() != d)
    fail(Code::E_DEVICE, "%s: '%s' is on %s but the op runs on %s", op, name, t.device().str().c_str(), d.str().c_str());
}

void launch(const char* op, Stream& s, std::function<void()> cpu, std::function<void(void*)> gpu) {
  if (s.device().is_cpu()) {
    s.enqueue(std::move(cpu));
    return;
  }
  if (!gpu) fail(Code::E_DEVICE, "%s has no CUDA kernel in this build", op);
  cuda::set_device(s.device().index);  // the kernels launch on the current device: the stream's
  gpu(s.cuda_handle());
  cuda::check_launch(op);
}

OpRegistrar::OpRegistrar(const char* name, OpFn fn) { op_table().emplace_back(name, fn); }

// ---- Tensor -----------------------------------------------------------------------------

static DType parse_dtype(const std::string& s) {
  DType t;
  if (!dtype_from_name(s.c_str(), &t))
    fail(Code::E_DTYPE, "unknown dtype '%s' (expected f32, bf16, f16, fp8_e4m3, int8, int32 or int64)", s.c_str());
  return t;
}

static std::vector<int64_t> parse_shape(Napi::Value v) {
  if (!v.IsArray()) fail(Code::E_SHAPE, "shape must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)))
      fail(Code::E_SHAPE, "shape must be an array of non-negative integers, element %u is not", i);
    s.push_back(static_cast<int64_t>(d));
  }
  return s;
}

static Napi::Array shape_array(Napi::Env env, const std::vector<int64_t>& s) {
  Napi::Array a = Napi::Array::New(env, s.size());
  for (size_t i = 0; i < s.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s[i])));
  return a;
}

// The block a new tensor got may have been freed while kernels that read it were still queued (the
// pool orders reuse for kernels, not for host copies, which run outside every stream): a device
// tensor is filled only once the device is idle.
static void copy_to_device(const Tensor& t, const void* src) {
  if (t.device().is_cpu()) {
    std::memcpy(t.data(), src, t.nbytes());
  } else {
    cuda::device_synchronize(t.device().index);
    cuda::memcpy_h2d(t.device().index, t.data(), src, t.nbytes());
  }
}

Napi::Function TensorWrap::Init(Napi::Env env) {
  return DefineClass(env, "Tensor",
                     {InstanceAccessor<&TensorWrap::Dtype>("dtype"),
                      InstanceAccessor<&TensorWrap::Shape>("shape"),
                      InstanceAccessor<&TensorWrap::DeviceName>("device"),
                      InstanceAccessor<&TensorWrap::Nbytes>("nbytes"),
                      InstanceAccessor<&TensorWrap::Disposed>("disposed"),
                      InstanceMethod<&TensorWrap::ToBytes>("toBytes"),
                      InstanceMethod<&TensorWrap::CopyFromBytes>("copyFromBytes"),
                      InstanceMethod<&TensorWrap::View>("view"),
                      InstanceMethod<&TensorWrap::Narrow>("narrow"),
                      InstanceMethod<&TensorWrap::To>("to"),
                      InstanceMethod<&TensorWrap::Dispose>("dispose")});
}

// new Tensor(dtype, shape, device = 'cpu', bytes?) allocates from the device pool and, when
// `bytes` (an ArrayBufferView of exactly nbytes) is given, uploads it. Internal construction
// passes an External instead.
TensorWrap::TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
  if (info.Length() == 1 && info[0].IsExternal()) {
    set(info.Env(), *info[0].As<Napi::External<Tensor>>().Data());
    return;
  }
  try {
    if (info.Length() < 2 || !info[0].IsString())
      fail(Code::E_ARGUMENT, "new Tensor(dtype, shape, device?, bytes?): dtype must be a string");
    DType dt = parse_dtype(info[0].As<Napi::String>().Utf8Value());
    std::vector<int64_t> shape = parse_shape(info[1]);
    Device dev;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      if (!info[2].IsString()) fail(Code::E_DEVICE, "device must be a string such as 'cpu' or 'cuda:0'");
      dev = Device::parse(info[2].As<Napi::String>().Utf8Value());
    }
    Tensor t = empty_tensor(dev, dt, shape);
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      if (!info[3].IsTypedArray() && !info[3].IsDataView())
        fail(Code::E_ARGUMENT, "Tensor bytes must be a TypedArray or DataView");
      Napi::TypedArray ta = info[3].As<Napi::TypedArray>();
      size_t len = info[3].IsDataView() ? info[3].As<Napi::DataView>().ByteLength() : ta.ByteLength();
      const uint8_t* src = info[3].IsDataView()
                               ? static_cast<const uint8_t*>(info[3].As<Napi::DataView>().Data())
                               : static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      if (static_cast<int64_t>(len) != t.nbytes())
        fail(Code::E_SHAPE, "Tensor data has %zu bytes but %s %s needs %lld", len, dtype_name(dt),
             shape_str(shape).c_str(), static_cast<long long>(t.nbytes()));
      copy_to_device(t, src);
    }
    set(info.Env(), std::move(t));
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

TensorWrap::~TensorWrap() {
  // Runs from the GC finalizer: the backstop for tensors nobody disposed.
  t_.reset();
}

void TensorWrap::set(Napi::Env env, Tensor t) {
  t_ = std::move(t);
  if (t_->device().is_cpu() && t_->storage->pool) {
    external_ = t_->nbytes();
    Napi::MemoryManagement::AdjustExternalMemory(env, external_);
  }
}

void TensorWrap::drop(Napi::Env env) {
  if (external_) Napi::MemoryManagement::AdjustExternalMemory(env, -external_);
  external_ = 0;
  t_.reset();
}

Napi::Object TensorWrap::Wrap(Napi::Env env, Tensor t) {
  return data(env).tensor_ctor.New({Napi::External<Tensor>::New(env, &t)});
}

bool TensorWrap::IsTensor(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(data(env).tensor_ctor.Value());
}

const Tensor& TensorWrap::get(const char* what) const {
  if (!t_) fail(Code::E_DISPOSED, "%s: tensor was disposed", what);
  return *t_;
}

Napi::Value TensorWrap::Dtype(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), dtype_name(get("dtype").dtype)); });
}
Napi::Value TensorWrap::Shape(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return shape_array(info.Env(), get("shape").shape); });
}
Napi::Value TensorWrap::DeviceName(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::String::New(info.Env(), get("device").device().str()); });
}
Napi::Value TensorWrap::Nbytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), static_cast<double>(get("nbytes").nbytes())); });
}
Napi::Value TensorWrap::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !t_); }

// Waits for all work on the tensor's device, then copies its bytes into a new Uint8Array.
Napi::Value TensorWrap::ToBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Tensor& t = get("toBytes");
    device_synchronize(t.device());
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(info.Env(), static_cast<size_t>(t.nbytes()));
    if (t.nbytes() > 0) {
      if (t.device().is_cpu())
        std::memcpy(buf.Data(), t.data(), t.nbytes());
      else
        cuda::memcpy_d2h(t.device().index, buf.Data(), t.data(), t.nbytes());
    }
    return Napi::Uint8Array::New(info.Env(), static_cast<size_t>(t.nbytes()), buf, 0);
  });
}

Napi::Value TensorWrap::CopyFromBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Tensor& t = get("copyFromBytes");
    if (info.Length() < 1 || !info[0].IsTypedArray()) fail(Code::E_ARGUMENT, "copyFromBytes(bytes): expected a TypedArray");
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    if (static_cast<int64_t>(ta.ByteLength()) != t.nbytes())
      fail(Code::E_SHAPE, "copyFromBytes: got %zu bytes, tensor %s %s has %lld", ta.ByteLength(), dtype_name(t.dtype),
           shape_str(t.shape).c_str(), static_cast<long long>(t.nbytes()));
    device_synchronize(t.device());
    copy_to_device(t, static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset());
    return info.Env().Undefined();
  });
}

// A reshaped view sharing storage; one dimension may be -1.
Napi::Value TensorWrap::View(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Tensor t = get("view");
    if (info.Length() < 1 || !info[0].IsArray()) fail(Code::E_SHAPE, "view(shape): shape must be an array");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<int64_t> s;
    int infer = -1;
    int64_t known = 1;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      double d = a.Get(i).IsNumber() ? a.Get(i).As<Napi::Number>().DoubleValue() : -2;
      if (d == -1 && infer < 0) {
        infer = static_cast<int>(i);
        s.push_back(1);
        continue;
      }
      if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)))
        fail(Code::E_SHAPE, "view: element %u of the shape is not a non-negative integer (or a single -1)", i);
      s.push_back(static_cast<int64_t>(d));
      known *= s.back();
    }
    if (infer >= 0) {
      if (known == 0 || t.numel() % known != 0)
        fail(Code::E_SHAPE, "view: cannot infer -1 in %s for %lld elements", shape_str(s).c_str(), static_cast<long long>(t.numel()));
      s[infer] = t.numel() / known;
    }
    Tensor v = t;
    v.shape = s;
    if (v.numel() != t.numel())
      fail(Code::E_SHAPE, "view: shape %s has %lld elements, tensor %s has %lld", shape_str(s).c_str(),
           static_cast<long long>(v.numel()), shape_str(t.shape).c_str(), static_cast<long long>(t.numel()));
    return Wrap(info.Env(), v);
  });
}

// narrow(start, length): rows [start, start + length) of the first dimension, sharing storage.
Napi::Value TensorWrap::Narrow(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    OpArgs a(info, "narrow");
    Tensor t = get("narrow");
    if (t.ndim() < 1) fail(Code::E_SHAPE, "narrow: tensor is a scalar");
    int64_t start = a.integer(0, "start"), len = a.integer(1, "length");
    if (start < 0 || len < 0 || start + len > t.shape[0])
      fail(Code::E_SHAPE, "narrow: rows [%lld, %lld) out of range for first dimension %lld", static_cast<long long>(start),
           static_cast<long long>(start + len), static_cast<long long>(t.shape[0]));
    Tensor v = t;
    v.shape[0] = len;
    v.offset += start * (t.shape[0] ? t.nbytes() / t.shape[0] : 0);
    return Wrap(info.Env(), v);
  });
}

// to(device): a copy on another device (or the same device: a fresh copy).
Napi::Value TensorWrap::To(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    OpArgs a(info, "to");
    const Tensor& t = get("to");
    Device d = Device::parse(a.string(0, "device"));
    Tensor r = empty_tensor(d, t.dtype, t.shape);
    device_synchronize(t.device());
    if (t.nbytes() > 0) {
      if (t.device().is_cpu() && d.is_cpu())
        std::memcpy(r.data(), t.data(), t.nbytes());
      else if (t.device().is_cpu())
        copy_to_device(r, t.data());
      else if (d.is_cpu())
        cuda::memcpy_d2h(t.device().index, r.data(), t.data(), t.nbytes());
      else if (d == t.device()) {
        cuda::memcpy_d2d(d.index, r.data(), t.data(), t.nbytes(), nullptr);
        cuda::device_synchronize(d.index);
      } else {
        std::vector<uint8_t> host(t.nbytes());
        cuda::memcpy_d2h(t.device().index, host.data(), t.data(), t.nbytes());
        copy_to_device(r, host.data());
      }
    }
    return Wrap(info.Env(), r);
  });
}

Napi::Value TensorWrap::Dispose(const Napi::CallbackInfo& info) {
  drop(info.Env());
  return info.Env().Undefined();
}

// ---- Stream / Event ---------------------------------------------------------------------

static Device device_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return Device{};
  if (!info[i].IsString()) fail(Code::E_DEVICE, "device must be a string such as 'cpu' or 'cuda:0'");
  return Device::parse(info[i].As<Napi::String>().Utf8Value());
}

Napi::Function StreamWrap::Init(Napi::Env env) {
  return DefineClass(env, "Stream",
                     {InstanceAccessor<&StreamWrap::DeviceName>("device"),
                      InstanceMethod<&StreamWrap::Synchronize>("synchronize"),
                      InstanceMethod<&StreamWrap::WaitEvent>("waitEvent"),
                      InstanceMethod<&StreamWrap::Dispose>("dispose")});
}

StreamWrap::StreamWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StreamWrap>(info) {
  if (info.Length() == 1 && info[0].IsExternal()) {
    s_ = info[0].As<Napi::External<Stream>>().Data();
    return;
  }
  try {
    owned_ = std::make_unique<Stream>(device_arg(info, 0));
    s_ = owned_.get();
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

Napi::Object StreamWrap::WrapDefault(Napi::Env env, Device d) {
  return data(env).stream_ctor.New({Napi::External<Stream>::New(env, &default_stream(d))});
}

bool StreamWrap::IsStream(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(data(env).stream_ctor.Value());
}

Stream& StreamWrap::get() const {
  if (!s_) fail(Code::E_DISPOSED, "stream was disposed");
  return *s_;
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
Napi::Value StreamWrap::WaitEvent(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !EventWrap::IsEvent(info.Env(), info[0])) fail(Code::E_ARGUMENT, "waitEvent(event): expected an Event");
    EventWrap::Unwrap(info[0].As<Napi::Object>())->get().wait_on(get());
    return info.Env().Undefined();
  });
}
Napi::Value StreamWrap::Dispose(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (s_) {
      s_->synchronize();  // runs what is queued; errors surface here
      owned_.reset();
      s_ = nullptr;
    }
    return info.Env().Undefined();
  });
}

Napi::Function EventWrap::Init(Napi::Env env) {
  return DefineClass(env, "Event",
                     {InstanceMethod<&EventWrap::Record>("record"),
                      InstanceMethod<&EventWrap::Synchronize>("synchronize"),
                      InstanceMethod<&EventWrap::Query>("query"),
                      InstanceMethod<&EventWrap::ElapsedMs>("elapsedMs")});
}

EventWrap::EventWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventWrap>(info) {
  try {
    e_ = std::make_unique<Event>(device_arg(info, 0));
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

bool EventWrap::IsEvent(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(data(env).event_ctor.Value());
}

Event& EventWrap::get() const { return *e_; }

Napi::Value EventWrap::Record(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Stream* s = &default_stream(e_->device());
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

// ---- module functions -------------------------------------------------------------------

static Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cuda", Napi::Boolean::New(env, cuda::compiled()));
  o.Set("cudaArchs", Napi::String::New(env, cuda::archs()));
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
  o.Set("avxvnni", f.avx_vnni);
  o.Set("isa", cpu::isa_name(cpu::isa()));
  return o;
}

static Napi::Value Devices(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
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
  });
}

static Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int n = cuda::device_count();
  o.Set("compiled", cuda::compiled());
  o.Set("available", n > 0);
  o.Set("deviceCount", n);
  o.Set("reason", cuda::unavailable_reason());
  return o;
}

static Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    OpArgs a(info, "setThreads");
    int64_t n = a.integer(0, "threads");
    if (n < 1 || n > 1024) fail(Code::E_ARGUMENT, "setThreads: thread count must be in 1..1024, got %lld", static_cast<long long>(n));
    cpu::ThreadPool::global().set_threads(static_cast<int>(n));
    return info.Env().Undefined();
  });
}

static Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), cpu::ThreadPool::global().threads());
}

static Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    OpArgs a(info, "setIsa");
    cpu::Isa i;
    std::string s = a.string(0, "isa");
    if (!cpu::isa_from_name(s, &i)) fail(Code::E_ARGUMENT, "setIsa: unknown ISA '%s' (scalar, avx2 or avx512)", s.c_str());
    cpu::set_isa(i);
    return Napi::String::New(info.Env(), cpu::isa_name(cpu::isa()));
  });
}

static Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Device d = device_arg(info, 0);
    PoolStats s = device_pool(d).stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("liveBytes", static_cast<double>(s.live_bytes));
    o.Set("cachedBytes", static_cast<double>(s.cached_bytes));
    o.Set("peakBytes", static_cast<double>(s.peak_bytes));
    o.Set("liveBlocks", static_cast<double>(s.live_blocks));
    return o;
  });
}

static Napi::Value TrimPool(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    device_pool(device_arg(info, 0)).trim();
    return info.Env().Undefined();
  });
}

// ---- graphs ------------------------------------------------------------------------------

class GraphWrap : public Napi::ObjectWrap<GraphWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Graph", {InstanceMethod<&GraphWrap::Replay>("replay"), InstanceMethod<&GraphWrap::Dispose>("dispose")});
  }
  explicit GraphWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GraphWrap>(info) {
    if (info.Length() == 1 && info[0].IsExternal()) g_.reset(info[0].As<Napi::External<Graph>>().Data());
  }

 private:
  Napi::Value Replay(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      if (!g_) fail(Code::E_DISPOSED, "graph was disposed");
      g_->replay();
      return info.Env().Undefined();
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    g_.reset();
    return info.Env().Undefined();
  }
  std::unique_ptr<Graph> g_;
};

// captureGraph(streams, fn): runs fn() with every op queued on `streams` captured instead of run;
// returns a Graph whose replay() queues all of it again (one call per step instead of one per op).
static Napi::Value CaptureGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<Stream*> streams;
  try {
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsFunction())
      fail(Code::E_ARGUMENT, "captureGraph(streams, fn): expected an array of Streams and a function");
    Napi::Array a = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!StreamWrap::IsStream(env, a.Get(i))) fail(Code::E_ARGUMENT, "captureGraph: streams[%u] is not a Stream", i);
      streams.push_back(&StreamWrap::Unwrap(a.Get(i).As<Napi::Object>())->get());
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
    return data(env).graph_ctor.New({Napi::External<Graph>::New(env, g.release())});
  } catch (...) {
    rethrow_as_js(env);
  }
}

// The stream ops use when given null: one per device, ordered with every null-stream op.
static Napi::Value DefaultStream(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return StreamWrap::WrapDefault(info.Env(), device_arg(info, 0)); });
}

static Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    device_synchronize(device_arg(info, 0));
    return info.Env().Undefined();
  });
}

// init({ makeError }) lets the SDK supply its LongcatError constructor.
static Napi::Value SetErrorFactory(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorFactory(fn): expected a function");
  data(info.Env()).make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* d = new AddonData();
  env.SetInstanceData(d);
  Napi::Function tensor = TensorWrap::Init(env), stream = StreamWrap::Init(env), event = EventWrap::Init(env);
  d->tensor_ctor = Napi::Persistent(tensor);
  d->stream_ctor = Napi::Persistent(stream);
  d->event_ctor = Napi::Persistent(event);
  exports.Set("Tensor", tensor);
  exports.Set("Stream", stream);
  exports.Set("Event", event);
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("cpuFeatures", Napi::Function::New(env, CpuFeatures));
  exports.Set("devices", Napi::Function::New(env, Devices));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("threads", Napi::Function::New(env, Threads));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa));
  exports.Set("memoryStats", Napi::Function::New(env, MemoryStats));
  exports.Set("trimPool", Napi::Function::New(env, TrimPool));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("defaultStream", Napi::Function::New(env, DefaultStream));
  Napi::Function graph = GraphWrap::Init(env);
  d->graph_ctor = Napi::Persistent(graph);
  exports.Set("Graph", graph);
  exports.Set("captureGraph", Napi::Function::New(env, CaptureGraph));
  exports.Set("setErrorFactory", Napi::Function::New(env, SetErrorFactory));
  for (auto& [name, fn] : op_table()) {
    OpFn f = fn;
    exports.Set(name, Napi::Function::New(env, [f](const Napi::CallbackInfo& info) -> Napi::Value {
                  return guarded(info, [&]() -> Napi::Value { return f(info); });
                }, name));
  }
  return exports;
}

}  // namespace lc

static Napi::Object InitLongcat(Napi::Env env, Napi::Object exports) { return lc::Init(env, exports); }
NODE_API_MODULE(longcat, InitLongcat)

// The JS Tensor class (TensorWrap): construction from bytes, accessors, toBytes / copyFromBytes,
// view / narrow (sharing storage), to(device), dispose. Undisposed tensors are released by the GC.
// Also native.pinnedTensor (pinned host memory) and native.copy (a copy queued on a stream).
#include <algorithm>
#include <cstring>

#include "binding.h"
#include "cuda_api.h"

namespace lc {

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
  return DefineClass(
      env, "Tensor",
      {InstanceAccessor<&TensorWrap::Dtype>("dtype"), InstanceAccessor<&TensorWrap::Shape>("shape"),
       InstanceAccessor<&TensorWrap::DeviceName>("device"), InstanceAccessor<&TensorWrap::Nbytes>("nbytes"),
       InstanceAccessor<&TensorWrap::Disposed>("disposed"), InstanceAccessor<&TensorWrap::Pinned>("pinned"),
       InstanceMethod<&TensorWrap::ToBytes>("toBytes"), InstanceMethod<&TensorWrap::CopyFromBytes>("copyFromBytes"),
       InstanceMethod<&TensorWrap::View>("view"), InstanceMethod<&TensorWrap::Narrow>("narrow"),
       InstanceMethod<&TensorWrap::To>("to"), InstanceMethod<&TensorWrap::Dispose>("dispose")});
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
      const uint8_t* src = info[3].IsDataView() ? static_cast<const uint8_t*>(info[3].As<Napi::DataView>().Data())
                                                : static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      if (static_cast<int64_t>(len) != t.nbytes())
        fail(Code::E_SHAPE, "Tensor data has %zu bytes but %s %s needs %lld", len, dtype_name(dt), shape_str(shape).c_str(),
             static_cast<long long>(t.nbytes()));
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
  return addon_data(env).tensor_ctor.New({Napi::External<Tensor>::New(env, &t)});
}

bool TensorWrap::IsTensor(Napi::Env env, Napi::Value v) {
  return v.IsObject() && v.As<Napi::Object>().InstanceOf(addon_data(env).tensor_ctor.Value());
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
  return guarded(info,
                 [&]() -> Napi::Value { return Napi::Number::New(info.Env(), static_cast<double>(get("nbytes").nbytes())); });
}
Napi::Value TensorWrap::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !t_); }
Napi::Value TensorWrap::Pinned(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value { return Napi::Boolean::New(info.Env(), page_locked(get("pinned"))); });
}

// Waits for all work on the tensor's device, then copies its bytes into a new Uint8Array.
Napi::Value TensorWrap::ToBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Tensor& t = get("toBytes");
    device_synchronize(t.device());
    t.storage->wait_copies();
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
    t.storage->wait_copies();
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
      if (s.back() != 0 && known > (int64_t{1} << 53) / s.back())
        fail(Code::E_SHAPE, "view: the shape has more than 2^53 elements");
      known *= s.back();
    }
    if (infer >= 0) {
      if (known == 0 || t.numel() % known != 0)
        fail(Code::E_SHAPE, "view: cannot infer -1 in %s for %lld elements", shape_str(s).c_str(),
             static_cast<long long>(t.numel()));
      s[infer] = t.numel() / known;
    }
    check_shape("view", s, t.dtype);
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
    t.storage->wait_copies();
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

// pinnedTensor(dtype, shape): a CPU tensor from the pinned pool (see pinned_tensor).
static Napi::Value PinnedTensor(const Napi::CallbackInfo& info) {
  OpArgs a(info, "pinnedTensor");
  const DType dt = parse_dtype(a.string(0, "dtype"));
  if (!a.present(1)) fail(Code::E_SHAPE, "pinnedTensor: shape must be an array of non-negative integers");
  return TensorWrap::Wrap(info.Env(), pinned_tensor(dt, parse_shape(info[1])));
}

// copy(stream, dst, src): dst <- src queued on `stream` (see types/native.d.ts). The byte moves
// are the runtime's (a queued memcpy on a CPU stream, cudaMemcpyAsync on a CUDA one).
static void Copy(const OpArgs& a) {
  const Tensor dst = a.tensor(1, "dst"), src = a.tensor(2, "src");
  if (dst.dtype != src.dtype)
    fail(Code::E_DTYPE, "copy: 'dst' has dtype %s but 'src' has %s", dtype_name(dst.dtype), dtype_name(src.dtype));
  if (dst.shape != src.shape)
    fail(Code::E_SHAPE, "copy: 'dst' has shape %s but 'src' has %s", shape_str(dst.shape).c_str(), shape_str(src.shape).c_str());
  if (overlaps(dst, src)) fail(Code::E_ARGUMENT, "copy: 'dst' overlaps 'src'");
  const Device dd = dst.device(), sd = src.device();
  if (!dd.is_cpu() && !sd.is_cpu() && dd != sd)
    fail(Code::E_DEVICE, "copy: 'dst' is on %s and 'src' on %s; copy between two CUDA devices with to()", dd.str().c_str(),
         sd.str().c_str());
  const Device d = dd.is_cpu() ? sd : dd;  // the CUDA side's device; the CPU when both sides are
  Stream& s = a.stream(0, d);
  const size_t n = static_cast<size_t>(dst.nbytes());
  if (d.is_cpu()) {
    launch(
        "copy", s, [=] { std::memcpy(dst.data(), src.data(), n); }, nullptr);
    return;
  }
  if (!dd.is_cpu() && !sd.is_cpu()) {
    if (n) cuda::memcpy_d2d(d.index, dst.data(), src.data(), n, s.cuda_handle());
    return;
  }
  const Tensor& host = dd.is_cpu() ? dst : src;
  const char* host_name = dd.is_cpu() ? "dst" : "src";
  const bool pinned = page_locked(host), captured = cuda::stream_capturing(d.index, s.cuda_handle());
  // A graph node copies at every replay, long after the call: only from or into page-locked memory
  // (the runtime stages a pageable copy within the call, which a graph cannot do).
  if (captured && !pinned)
    fail(Code::E_ARGUMENT,
         "copy: '%s' is pageable host memory, which a copy captured into a CUDA graph cannot use; capture a copy of a "
         "pinned tensor (empty(shape, { pinned: true }))",
         host_name);
  if (n == 0) return;
  // Queued CPU work that writes the source (or reads the destination) first; a graph's replays
  // are the replayer's to order.
  if (!captured) device_synchronize(Device{});
  if (dd.is_cpu())
    cuda::memcpy_d2h_async(d.index, dst.data(), src.data(), n, s.cuda_handle());
  else
    cuda::memcpy_h2d_async(d.index, dst.data(), src.data(), n, s.cuda_handle());
  if (!pinned) return;  // the runtime is done with pageable memory when the call returns
  if (captured) {
    s.hold_while_captured(host.storage);  // as long as the graph lives
    return;
  }
  auto& pending = host.storage->pending_copies;
  pending.erase(std::remove_if(pending.begin(), pending.end(), [](const std::shared_ptr<Event>& e) { return e->query(); }),
                pending.end());
  auto done = std::make_shared<Event>(d);
  done->record(s);
  pending.push_back(std::move(done));
}

// copyBytes(stream, dst, bytes): dst <- `bytes` as they are at the call (a copy is taken), queued on
// the CPU stream: work queued before it may still read dst (a queued step's inputs: one call where a
// tensor made of the bytes, a copy of it and its disposal were three).
static void CopyBytes(const OpArgs& a) {
  const Tensor dst = a.tensor(1, "dst");
  if (!dst.device().is_cpu())
    fail(Code::E_DEVICE, "copyBytes: 'dst' is on %s; it writes CPU tensors", dst.device().str().c_str());
  if (!a.present(2) || !a.info()[2].IsTypedArray()) fail(Code::E_ARGUMENT, "copyBytes: 'bytes' must be a typed array");
  const auto ta = a.info()[2].As<Napi::TypedArray>();
  const size_t n = ta.ByteLength();
  if (n != static_cast<size_t>(dst.nbytes()))
    fail(Code::E_SHAPE, "copyBytes: 'bytes' has %zu bytes but 'dst' %lld", n, static_cast<long long>(dst.nbytes()));
  const auto* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  auto bytes = std::make_shared<const std::vector<uint8_t>>(p, p + n);
  Stream& s = a.stream(0, Device{});
  launch(
      "copyBytes", s, [dst, bytes, n] { std::memcpy(dst.data(), bytes->data(), n); }, nullptr);
}

LC_REGISTER_OP("pinnedTensor", PinnedTensor);
LC_REGISTER_OP("copy", Copy);
LC_REGISTER_OP("copyBytes", CopyBytes);

}  // namespace lc

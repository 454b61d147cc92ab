// The binding layer's shared machinery (declared in binding.h): lc::Error -> LongcatError,
// positional argument access, the argument checks, launch(), and the registry of module functions.
#include "binding.h"

#include <cmath>

#include "cuda_api.h"

namespace lc {

namespace {

Napi::Error make_js_error(Napi::Env env, Code code, const std::string& msg) {
  AddonData& d = addon_data(env);
  if (!d.make_error.IsEmpty()) {
    Napi::Value v = d.make_error.Call({Napi::String::New(env, code_name(code)), Napi::String::New(env, msg)});
    if (v.IsObject()) return Napi::Error(env, v);
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code_name(code)));
  return e;
}

std::vector<RegisteredOp>& op_table() {
  static std::vector<RegisteredOp> t;
  return t;
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

Device device_arg(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || info[i].IsUndefined() || info[i].IsNull()) return Device{};
  if (!info[i].IsString()) fail(Code::E_DEVICE, "device must be a string such as 'cpu' or 'cuda:0'");
  return Device::parse(info[i].As<Napi::String>().Utf8Value());
}

// ---- argument access ----------------------------------------------------------------------------

Tensor OpArgs::tensor(size_t i, const char* name) const {
  if (!present(i)) fail(Code::E_ARGUMENT, "%s: argument '%s' is missing (expected a Tensor)", op_, name);
  if (!TensorWrap::IsTensor(env(), info_[i])) fail(Code::E_ARGUMENT, "%s: argument '%s' is not a Tensor", op_, name);
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
  if (!present(i)) return *default_stream(env(), d);
  if (!StreamWrap::IsStream(env(), info_[i])) fail(Code::E_ARGUMENT, "%s: 'stream' is not a Stream", op_);
  Stream& s = StreamWrap::Unwrap(info_[i].As<Napi::Object>())->get();
  if (s.device() != d)
    fail(Code::E_DEVICE, "%s: stream is on %s but the tensors are on %s", op_, s.device().str().c_str(), d.str().c_str());
  return s;
}

double OpArgs::number(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsNumber()) fail(Code::E_ARGUMENT, "%s: argument '%s' must be a number", op_, name);
  return info_[i].As<Napi::Number>().DoubleValue();
}

int64_t OpArgs::integer(size_t i, const char* name) const {
  double v = number(i, name);
  if (v != static_cast<double>(static_cast<int64_t>(v)))
    fail(Code::E_ARGUMENT, "%s: argument '%s' must be an integer, got %g", op_, name, v);
  return static_cast<int64_t>(v);
}

bool OpArgs::boolean(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsBoolean()) fail(Code::E_ARGUMENT, "%s: argument '%s' must be a boolean", op_, name);
  return info_[i].As<Napi::Boolean>().Value();
}

std::string OpArgs::string(size_t i, const char* name) const {
  if (i >= info_.Length() || !info_[i].IsString()) fail(Code::E_ARGUMENT, "%s: argument '%s' must be a string", op_, name);
  return info_[i].As<Napi::String>().Utf8Value();
}

void OpArgs::expect(const Tensor& t, const char* name, DTypes ok, Device d) const {
  expect_dtype(op_, name, t, ok);
  expect_device(op_, name, t, d);
}

void OpArgs::expect(const Tensor& t, const char* name, DTypes ok, Device d, const std::vector<int64_t>& shape) const {
  expect_dtype(op_, name, t, ok);
  expect_shape(op_, name, t, shape);
  expect_device(op_, name, t, d);
}

// ---- checks -------------------------------------------------------------------------------------

void expect_dtype(const char* op, const char* name, const Tensor& t, DTypes ok) {
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

void expect_same_shape(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  if (t.shape != ref.shape)
    fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %s (the shape of %s)", op, name, shape_str(t.shape).c_str(),
         shape_str(ref.shape).c_str(), ref_name);
}

void expect_rows(const char* op, const char* name, const Tensor& t) {
  if (t.ndim() < 1 || t.dim(-1) < 1)
    fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected at least one dimension with a non-zero last dimension", op, name,
         shape_str(t.shape).c_str());
}

void expect_row_shape(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  std::vector<int64_t> want(x.shape.begin(), x.shape.end() - 1);
  if (t.shape == want || (x.ndim() == 1 && t.shape == std::vector<int64_t>{1})) return;
  fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %s (x without its last dimension)", op, name, shape_str(t.shape).c_str(),
       shape_str(want).c_str());
}

void expect_finite(const char* op, const char* name, double v) {
  if (!std::isfinite(v)) fail(Code::E_ARGUMENT, "%s: '%s' must be a finite number, got %g", op, name, v);
}

// ---- dispatch and registration ------------------------------------------------------------------

void launch(const char* op, Stream& s, std::function<void()> cpu, std::function<void(void*)> gpu, bool cpu_spins,
            std::shared_ptr<const RowSplit> split) {
  if (s.device().is_cpu()) {
    if (cpu_spins)
      s.enqueue_spinning(std::move(cpu), op);
    else
      s.enqueue(std::move(cpu), op, std::move(split));
    return;
  }
  if (!gpu) fail(Code::E_DEVICE, "%s has no CUDA kernel in this build", op);
  cuda::set_device(s.device().index);  // the kernels launch on the current device: the stream's
  gpu(s.cuda_handle());
  cuda::check_launch(op);
}

void OpArgs::routed_tokens(const Tensor& u, const Tensor& idx, const Tensor& w, int64_t* t, int64_t* h, int64_t* k) const {
  const Device d = u.device();
  dims(u, "u", {DType::F32}, d, t, h);
  expect(idx, "idx", {DType::I32}, d, {*t, -1});
  *k = idx.dim(1);
  expect(w, "weights", {DType::F32}, d, {*t, *k});
}

void OpArgs::launch(Device d, std::function<void()> cpu, std::function<void(void*)> gpu, bool cpu_spins,
                    std::shared_ptr<const RowSplit> split) const {
  ::lc::launch(op_, stream(0, d), std::move(cpu), std::move(gpu), cpu_spins, std::move(split));
}

OpRegistrar::OpRegistrar(const char* name, OpFn fn) { op_table().push_back(RegisteredOp{name, fn, nullptr}); }
OpRegistrar::OpRegistrar(const char* name, StreamOpFn fn) { op_table().push_back(RegisteredOp{name, nullptr, fn}); }

Napi::Value RegisteredOp::call(const Napi::CallbackInfo& info) const {
  if (fn) return fn(info);
  stream_fn(OpArgs(info, name));
  return info.Env().Undefined();
}

const std::vector<RegisteredOp>& registered_ops() { return op_table(); }

}  // namespace lc

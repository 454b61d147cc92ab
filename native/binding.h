// The N-API side. Only binding code (addon.cc, ops/*.cc) includes this header: it turns JS values
// into checked C++ arguments, lc::Error into LongcatError exceptions, and hands work to streams.
#pragma once
#include <napi.h>

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "device.h"
#include "tensor.h"

namespace lc {

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
  Stream& get() const;

 private:
  Napi::Value DeviceName(const Napi::CallbackInfo&);
  Napi::Value Synchronize(const Napi::CallbackInfo&);
  Napi::Value WaitEvent(const Napi::CallbackInfo&);
  Napi::Value Dispose(const Napi::CallbackInfo&);
  Stream* s_ = nullptr;
  std::unique_ptr<Stream> owned_;  // null for a device's default stream, which is only borrowed
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

// Converts the C++ exception in flight into the JS exception the SDK expects.
[[noreturn]] void rethrow_as_js(Napi::Env env);

// Positional argument access with typed errors that name the op and the argument.
class OpArgs {
 public:
  OpArgs(const Napi::CallbackInfo& info, const char* op) : info_(info), op_(op) {}
  const char* op() const { return op_; }
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

 private:
  const Napi::CallbackInfo& info_;
  const char* op_;
};

// Argument checks shared by every op. `want` uses -1 for "any size".
void expect_dtype(const char* op, const char* name, const Tensor& t, std::initializer_list<DType> ok);
void expect_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& want);
void expect_ndim(const char* op, const char* name, const Tensor& t, int ndim);
void expect_device(const char* op, const char* name, const Tensor& t, Device d);

// Runs an op: on CPU `cpu` is queued on the stream's worker (it must capture the tensors it
// uses by value, which keeps their memory alive); on CUDA `gpu(cudaStream)` is called now.
// A null `gpu` means the op has no CUDA kernel in this build.
void launch(const char* op, Stream& s, std::function<void()> cpu, std::function<void(void*)> gpu);

// Op registration: each ops/*.cc file registers its functions; addon.cc exports them all.
using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct OpRegistrar {
  OpRegistrar(const char* name, OpFn fn);
};
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

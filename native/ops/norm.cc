// rmsnorm(stream, y, x, weight, eps, add?, hOut?)
#include "../binding.h"
#include "../cpu/norm.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#endif

namespace lc {

static Napi::Value Rmsnorm(const Napi::CallbackInfo& info) {
  const char* op = "rmsnorm";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), w = a.tensor(3, "weight");
  float eps = static_cast<float>(a.number(4, "eps"));
  std::optional<Tensor> add = a.opt_tensor(5, "add"), h = a.opt_tensor(6, "hOut");
  Device d = x.device();
  expect_dtype(op, "x", x, {DType::F32});
  expect_dtype(op, "weight", w, {DType::F32, DType::BF16});
  expect_dtype(op, "y", y, {DType::F32, DType::BF16});
  if (x.ndim() < 1) fail(Code::E_SHAPE, "rmsnorm: 'x' must have at least one dimension");
  int64_t dim = x.dim(-1), rows = x.rows();
  expect_shape(op, "weight", w, {dim});
  if (y.shape != x.shape) fail(Code::E_SHAPE, "rmsnorm: 'y' has shape %s, expected %s (the shape of x)", shape_str(y.shape).c_str(), shape_str(x.shape).c_str());
  for (auto* t : {&y, &w}) expect_device(op, t == &y ? "y" : "weight", *t, d);
  if (add) {
    expect_dtype(op, "add", *add, {DType::F32});
    if (add->shape != x.shape) fail(Code::E_SHAPE, "rmsnorm: 'add' has shape %s, expected %s", shape_str(add->shape).c_str(), shape_str(x.shape).c_str());
    expect_device(op, "add", *add, d);
  }
  if (h) {
    expect_dtype(op, "hOut", *h, {DType::F32});
    if (h->shape != x.shape) fail(Code::E_SHAPE, "rmsnorm: 'hOut' has shape %s, expected %s", shape_str(h->shape).c_str(), shape_str(x.shape).c_str());
    expect_device(op, "hOut", *h, d);
  }
  if (!(eps >= 0)) fail(Code::E_ARGUMENT, "rmsnorm: eps must be >= 0, got %g", eps);
  Stream& s = a.stream(0, d);
  const float* addp = add ? add->ptr<float>() : nullptr;
  float* hp = h ? h->ptr<float>() : nullptr;
  std::optional<Tensor> keep_add = add, keep_h = h;
  launch(op, s,
         [=] { cpu::rmsnorm(rows, dim, x.ptr<float>(), addp, hp, w.data(), w.dtype, eps, y.data(), y.dtype); (void)keep_add; (void)keep_h; },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) { gpu::rmsnorm(rows, dim, x.ptr<float>(), addp, hp, w.data(), w.dtype, eps, y.data(), y.dtype, st); }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

LC_REGISTER_OP("rmsnorm", Rmsnorm);

}  // namespace lc

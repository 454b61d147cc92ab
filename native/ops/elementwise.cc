// Element-wise and row-wise ops of the forward pass (kernels: cpu/elementwise.cc, cuda/elementwise.cu).
// Stream first, then outputs, inputs, scalars (see types/ops-small.d.ts):
//   embedding(stream, y f32 [.., H], table f32|bf16 [V, H], ids int32 [..])
//   siluMul(stream, y, gate, up): y = silu(gate) * up
//   add(stream, y, a, b, alpha = 1): y = a + alpha * b
//   scale(stream, y, x, alpha): y = alpha * x
//   scaleGroups(stream, y, x, scales, group): y[n, c] = x[n, c] * scales[n % R, c / group]
//   argmax(stream, idx int32 [..], x f32 [.., V])
//   softmax / logSoftmax(stream, y, x): over the last dimension
#include "../binding.h"
#include "../cpu/elementwise.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/elementwise.h"
#endif

namespace lc {

namespace {

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  const char* op = "embedding";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), table = a.tensor(2, "table"), ids = a.tensor(3, "ids");
  const Device d = table.device();
  a.expect(y, "y", {DType::F32}, d);
  a.expect(ids, "ids", {DType::I32}, d);
  int64_t V, H;
  a.dims(table, "table", {DType::F32, DType::BF16}, d, &V, &H);
  const int64_t T = ids.numel();
  std::vector<int64_t> ys = ids.shape;
  ys.push_back(H);
  if (y.shape != ys)
    fail(Code::E_SHAPE, "embedding: 'y' has shape %s, expected %s (ids shape + [H = %lld])", shape_str(y.shape).c_str(),
         shape_str(ys).c_str(), static_cast<long long>(H));
  Stream& s = a.stream(0, d);
  launch(
      op, s,
      [=] {
        int64_t bad = cpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>());
        if (bad >= 0)
          fail(Code::E_ARGUMENT, "embedding: ids[%lld] = %d is out of range for a table of V = %lld rows",
               static_cast<long long>(bad), ids.ptr<int32_t>()[bad], static_cast<long long>(V));
      },
      LC_GPU(gpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  const char* op = "siluMul";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), g = a.tensor(2, "gate"), u = a.tensor(3, "up");
  const Device d = g.device();
  a.expect(g, "gate", {DType::F32}, d);
  a.expect(u, "up", {DType::F32}, d, g.shape);
  a.expect(y, "y", {DType::F32}, d, g.shape);
  Stream& s = a.stream(0, d);
  const int64_t n = g.numel();
  launch(
      op, s, [=] { cpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>()); },
      LC_GPU(gpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  const char* op = "add";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "a"), b = a.tensor(3, "b");
  const float alpha = a.present(4) ? static_cast<float>(a.number(4, "alpha")) : 1.0f;
  const Device d = x.device();
  a.expect(x, "a", {DType::F32}, d);
  a.expect(b, "b", {DType::F32}, d, x.shape);
  a.expect(y, "y", {DType::F32}, d, x.shape);
  Stream& s = a.stream(0, d);
  const int64_t n = x.numel();
  launch(
      op, s, [=] { cpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>()); },
      LC_GPU(gpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

Napi::Value Scale(const Napi::CallbackInfo& info) {
  const char* op = "scale";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  const float alpha = static_cast<float>(a.number(3, "alpha"));
  const Device d = x.device();
  a.expect(x, "x", {DType::F32}, d);
  a.expect(y, "y", {DType::F32}, d, x.shape);
  Stream& s = a.stream(0, d);
  const int64_t n = x.numel();
  launch(
      op, s, [=] { cpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>()); },
      LC_GPU(gpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

// x and y viewed as [rows, last dim], scales [R, ceil(last dim / group)] with rows % R == 0.
Napi::Value ScaleGroups(const Napi::CallbackInfo& info) {
  const char* op = "scaleGroups";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), sc = a.tensor(3, "scales");
  const int64_t group = a.integer(4, "group");
  const Device d = x.device();
  a.expect(x, "x", {DType::F32}, d);
  a.expect(y, "y", {DType::F32}, d, x.shape);
  int64_t r, scale_cols;
  a.dims(sc, "scales", {DType::F32}, d, &r, &scale_cols);
  if (x.ndim() < 1) fail(Code::E_SHAPE, "scaleGroups: 'x' must have at least one dimension");
  if (group < 1) fail(Code::E_ARGUMENT, "scaleGroups: group must be >= 1, got %lld", static_cast<long long>(group));
  const int64_t cols = x.dim(-1), rows = cols > 0 ? x.numel() / cols : 0, groups = (cols + group - 1) / group;
  if (scale_cols != groups)
    fail(Code::E_SHAPE, "scaleGroups: 'scales' has shape %s: expected %lld columns (ceil(%lld / %lld)) for 'x' of shape %s",
         shape_str(sc.shape).c_str(), static_cast<long long>(groups), static_cast<long long>(cols), static_cast<long long>(group),
         shape_str(x.shape).c_str());
  if (r < 1 || rows % r != 0)
    fail(Code::E_SHAPE, "scaleGroups: 'scales' has %lld rows, which must divide the %lld rows of 'x' (shape %s)",
         static_cast<long long>(r), static_cast<long long>(rows), shape_str(x.shape).c_str());
  Stream& s = a.stream(0, d);
  launch(
      op, s, [=] { cpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>()); },
      LC_GPU(gpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  const char* op = "argmax";
  OpArgs a(info, op);
  Tensor idx = a.tensor(1, "idx"), x = a.tensor(2, "x");
  const Device d = x.device();
  a.expect(idx, "idx", {DType::I32}, d);
  a.expect(x, "x", {DType::F32}, d);
  expect_rows(op, "x", x);
  if (x.dim(-1) > INT32_MAX)
    fail(Code::E_SHAPE, "argmax: last dimension %lld does not fit int32", static_cast<long long>(x.dim(-1)));
  expect_row_shape(op, "idx", idx, x);
  Stream& s = a.stream(0, d);
  const int64_t rows = x.rows(), V = x.dim(-1);
  launch(
      op, s, [=] { cpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>()); },
      LC_GPU(gpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>(), stream)));
  return info.Env().Undefined();
}

Napi::Value SoftmaxImpl(const Napi::CallbackInfo& info, const char* op, bool log) {
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  const Device d = x.device();
  a.expect(x, "x", {DType::F32}, d);
  a.expect(y, "y", {DType::F32}, d);
  expect_rows(op, "x", x);
  expect_same_shape(op, "y", y, "x", x);
  Stream& s = a.stream(0, d);
  const int64_t rows = x.rows(), V = x.dim(-1);
  launch(
      op, s, [=] { cpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log); },
      LC_GPU(gpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log, stream)));
  return info.Env().Undefined();
}
Napi::Value Softmax(const Napi::CallbackInfo& info) { return SoftmaxImpl(info, "softmax", false); }
Napi::Value LogSoftmax(const Napi::CallbackInfo& info) { return SoftmaxImpl(info, "logSoftmax", true); }

}  // namespace

LC_REGISTER_OP("embedding", Embedding);
LC_REGISTER_OP("siluMul", SiluMul);
LC_REGISTER_OP("add", Add);
LC_REGISTER_OP("scale", Scale);
LC_REGISTER_OP("scaleGroups", ScaleGroups);
LC_REGISTER_OP("argmax", Argmax);
LC_REGISTER_OP("softmax", Softmax);
LC_REGISTER_OP("logSoftmax", LogSoftmax);

}  // namespace lc

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

// The f32 tensors of an element-wise op, named as its arguments: each of the first one's shape and
// on its device, which is returned (the op runs there).
Device expect_f32_alike(const OpArgs& a, std::initializer_list<std::pair<const char*, const Tensor&>> tensors) {
  const Tensor& first = tensors.begin()->second;
  const Device d = first.device();
  for (const auto& [name, t] : tensors) a.expect(t, name, {DType::F32}, d, first.shape);
  return d;
}

void Embedding(const OpArgs& a) {
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
  a.launch(
      d,
      [=] {
        int64_t bad = cpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>());
        if (bad >= 0)
          fail(Code::E_ARGUMENT, "embedding: ids[%lld] = %d is out of range for a table of V = %lld rows",
               static_cast<long long>(bad), ids.ptr<int32_t>()[bad], static_cast<long long>(V));
      },
      LC_GPU(gpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>(), stream)));
}

void SiluMul(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), g = a.tensor(2, "gate"), u = a.tensor(3, "up");
  const Device d = expect_f32_alike(a, {{"gate", g}, {"up", u}, {"y", y}});
  const int64_t n = g.numel();
  a.launch(
      d, [=] { cpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>()); },
      LC_GPU(gpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>(), stream)));
}

void Add(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "a"), b = a.tensor(3, "b");
  const float alpha = a.present(4) ? static_cast<float>(a.number(4, "alpha")) : 1.0f;
  const Device d = expect_f32_alike(a, {{"a", x}, {"b", b}, {"y", y}});
  const int64_t n = x.numel();
  a.launch(
      d, [=] { cpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>()); },
      LC_GPU(gpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>(), stream)));
}

void Scale(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  const float alpha = static_cast<float>(a.number(3, "alpha"));
  const Device d = expect_f32_alike(a, {{"x", x}, {"y", y}});
  const int64_t n = x.numel();
  a.launch(
      d, [=] { cpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>()); },
      LC_GPU(gpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>(), stream)));
}

// x and y viewed as [rows, last dim], scales [R, ceil(last dim / group)] with rows % R == 0.
void ScaleGroups(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), sc = a.tensor(3, "scales");
  const int64_t group = a.integer(4, "group");
  const Device d = expect_f32_alike(a, {{"x", x}, {"y", y}});
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
  a.launch(
      d, [=] { cpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>()); },
      LC_GPU(gpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>(), stream)));
}

void Argmax(const OpArgs& a) {
  Tensor idx = a.tensor(1, "idx"), x = a.tensor(2, "x");
  const Device d = x.device();
  a.expect(idx, "idx", {DType::I32}, d);
  a.expect(x, "x", {DType::F32}, d);
  expect_rows(a.op(), "x", x);
  if (x.dim(-1) > INT32_MAX)
    fail(Code::E_SHAPE, "argmax: last dimension %lld does not fit int32", static_cast<long long>(x.dim(-1)));
  expect_row_shape(a.op(), "idx", idx, x);
  const int64_t rows = x.rows(), V = x.dim(-1);
  a.launch(
      d, [=] { cpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>()); },
      LC_GPU(gpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>(), stream)));
}

void SoftmaxImpl(const OpArgs& a, bool log) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  const Device d = x.device();
  a.expect(x, "x", {DType::F32}, d);
  a.expect(y, "y", {DType::F32}, d);
  expect_rows(a.op(), "x", x);
  expect_same_shape(a.op(), "y", y, "x", x);
  const int64_t rows = x.rows(), V = x.dim(-1);
  a.launch(
      d, [=] { cpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log); },
      LC_GPU(gpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log, stream)));
}
void Softmax(const OpArgs& a) { SoftmaxImpl(a, false); }
void LogSoftmax(const OpArgs& a) { SoftmaxImpl(a, true); }

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

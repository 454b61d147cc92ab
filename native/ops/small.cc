// Small ops: embedding, siluMul, add, scale, convert, fp8 quantization, argmax, (log)softmax, sample.
// Stream first, then outputs, inputs, scalars (see types/ops-small.d.ts).
#include <cmath>

#include "../binding.h"
#include "../cpu/elementwise.h"
#include "../cpu/quant.h"
#include "../cpu/sampling.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/quant.h"
#include "../../cuda/small.h"
#define LC_GPU(...) [=](void* st) { __VA_ARGS__; }
#else
#define LC_GPU(...) nullptr
#endif
#ifdef LONGCAT_WITH_CUDA
#define GPU_SAMPLE_WS(rows, V) gpu::sample_workspace_bytes(rows, V)
#else
#define GPU_SAMPLE_WS(rows, V) cpu::sample_workspace_bytes(rows, V)
#endif

namespace lc {

namespace {

void expect_same_shape(const char* op, const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  if (t.shape != ref.shape)
    fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %s (the shape of %s)", op, name, shape_str(t.shape).c_str(),
         shape_str(ref.shape).c_str(), ref_name);
}

// The shape of a per-row output of x ([.., V] -> [..]); a 1-D x gives one row, shape [1] or [].
void expect_row_shape(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  std::vector<int64_t> want(x.shape.begin(), x.shape.end() - 1);
  if (t.shape == want || (x.ndim() == 1 && t.shape == std::vector<int64_t>{1})) return;
  fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected %s (x without its last dimension)", op, name,
       shape_str(t.shape).c_str(), shape_str(want).c_str());
}

void expect_rows_input(const char* op, const Tensor& x) {
  if (x.ndim() < 1 || x.dim(-1) < 1)
    fail(Code::E_SHAPE, "%s: 'x' has shape %s, expected at least one dimension with a non-zero last dimension", op,
         shape_str(x.shape).c_str());
}

// embedding(stream, y f32 [.., H], table f32|bf16 [V, H], ids int32 [..])
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  const char* op = "embedding";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), table = a.tensor(2, "table"), ids = a.tensor(3, "ids");
  Device d = table.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "table", table, {DType::F32, DType::BF16});
  expect_dtype(op, "ids", ids, {DType::I32});
  expect_ndim(op, "table", table, 2);
  expect_device(op, "y", y, d);
  expect_device(op, "ids", ids, d);
  const int64_t V = table.dim(0), H = table.dim(1), T = ids.numel();
  std::vector<int64_t> ys = ids.shape;
  ys.push_back(H);
  if (y.shape != ys)
    fail(Code::E_SHAPE, "embedding: 'y' has shape %s, expected %s (ids shape + [H = %lld])", shape_str(y.shape).c_str(),
         shape_str(ys).c_str(), static_cast<long long>(H));
  Stream& s = a.stream(0, d);
  launch(op, s,
         [=] {
           int64_t bad = cpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>());
           if (bad >= 0)
             fail(Code::E_ARGUMENT, "embedding: ids[%lld] = %d is out of range for a table of V = %lld rows",
                  static_cast<long long>(bad), ids.ptr<int32_t>()[bad], static_cast<long long>(V));
         },
         LC_GPU(gpu::embedding(T, H, table.data(), table.dtype, V, ids.ptr<int32_t>(), y.ptr<float>(), st)));
  return info.Env().Undefined();
}

// siluMul(stream, y, gate, up): y = silu(gate) * up
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  const char* op = "siluMul";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), g = a.tensor(2, "gate"), u = a.tensor(3, "up");
  Device d = g.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "gate", g, {DType::F32});
  expect_dtype(op, "up", u, {DType::F32});
  expect_same_shape(op, "up", u, "gate", g);
  expect_same_shape(op, "y", y, "gate", g);
  expect_device(op, "y", y, d);
  expect_device(op, "up", u, d);
  Stream& s = a.stream(0, d);
  const int64_t n = g.numel();
  launch(op, s, [=] { cpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>()); },
         LC_GPU(gpu::silu_mul(n, g.ptr<float>(), u.ptr<float>(), y.ptr<float>(), st)));
  return info.Env().Undefined();
}

// add(stream, y, a, b, alpha = 1): y = a + alpha * b
Napi::Value Add(const Napi::CallbackInfo& info) {
  const char* op = "add";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "a"), b = a.tensor(3, "b");
  float alpha = a.present(4) ? static_cast<float>(a.number(4, "alpha")) : 1.0f;
  Device d = x.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "a", x, {DType::F32});
  expect_dtype(op, "b", b, {DType::F32});
  expect_same_shape(op, "b", b, "a", x);
  expect_same_shape(op, "y", y, "a", x);
  expect_device(op, "y", y, d);
  expect_device(op, "b", b, d);
  Stream& s = a.stream(0, d);
  const int64_t n = x.numel();
  launch(op, s, [=] { cpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>()); },
         LC_GPU(gpu::add(n, x.ptr<float>(), b.ptr<float>(), alpha, y.ptr<float>(), st)));
  return info.Env().Undefined();
}

// scale(stream, y, x, alpha): y = alpha * x
Napi::Value Scale(const Napi::CallbackInfo& info) {
  const char* op = "scale";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  float alpha = static_cast<float>(a.number(3, "alpha"));
  Device d = x.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "x", x, {DType::F32});
  expect_same_shape(op, "y", y, "x", x);
  expect_device(op, "y", y, d);
  Stream& s = a.stream(0, d);
  const int64_t n = x.numel();
  launch(op, s, [=] { cpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>()); },
         LC_GPU(gpu::scale(n, x.ptr<float>(), alpha, y.ptr<float>(), st)));
  return info.Env().Undefined();
}

// scaleGroups(stream, y, x, scales, group): y[n, c] = x[n, c] * scales[n % R, c / group], x and y
// viewed as [rows, last dim], scales [R, ceil(last dim / group)] with rows % R == 0.
Napi::Value ScaleGroups(const Napi::CallbackInfo& info) {
  const char* op = "scaleGroups";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), sc = a.tensor(3, "scales");
  const int64_t group = a.integer(4, "group");
  Device d = x.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "x", x, {DType::F32});
  expect_dtype(op, "scales", sc, {DType::F32});
  expect_same_shape(op, "y", y, "x", x);
  expect_device(op, "y", y, d);
  expect_device(op, "scales", sc, d);
  expect_ndim(op, "scales", sc, 2);
  if (x.ndim() < 1) fail(Code::E_SHAPE, "scaleGroups: 'x' must have at least one dimension");
  if (group < 1) fail(Code::E_ARGUMENT, "scaleGroups: group must be >= 1, got %lld", static_cast<long long>(group));
  const int64_t cols = x.dim(-1), rows = cols > 0 ? x.numel() / cols : 0, r = sc.dim(0);
  if (sc.dim(1) != (cols + group - 1) / group)
    fail(Code::E_SHAPE, "scaleGroups: 'scales' has shape %s: expected %lld columns (ceil(%lld / %lld)) for 'x' of shape %s",
         shape_str(sc.shape).c_str(), static_cast<long long>((cols + group - 1) / group), static_cast<long long>(cols),
         static_cast<long long>(group), shape_str(x.shape).c_str());
  if (r < 1 || rows % r != 0)
    fail(Code::E_SHAPE, "scaleGroups: 'scales' has %lld rows, which must divide the %lld rows of 'x' (shape %s)", static_cast<long long>(r),
         static_cast<long long>(rows), shape_str(x.shape).c_str());
  Stream& s = a.stream(0, d);
  launch(op, s, [=] { cpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>()); },
         LC_GPU(gpu::scale_groups(rows, cols, x.ptr<float>(), sc.ptr<float>(), r, group, y.ptr<float>(), st)));
  return info.Env().Undefined();
}

// convert(stream, y, x): any pair of f32, bf16, f16, fp8_e4m3, same shape
Napi::Value Convert(const Napi::CallbackInfo& info) {
  const char* op = "convert";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  Device d = x.device();
  expect_dtype(op, "y", y, {DType::F32, DType::BF16, DType::F16, DType::FP8_E4M3});
  expect_dtype(op, "x", x, {DType::F32, DType::BF16, DType::F16, DType::FP8_E4M3});
  expect_same_shape(op, "y", y, "x", x);
  expect_device(op, "y", y, d);
  Stream& s = a.stream(0, d);
  const int64_t n = x.numel();
  launch(op, s, [=] { cpu::convert(n, x.data(), x.dtype, y.data(), y.dtype); },
         LC_GPU(gpu::convert(n, x.data(), x.dtype, y.data(), y.dtype, st)));
  return info.Env().Undefined();
}

// quantizeFp8Act(stream, q fp8 [.., K], scale f32 [.., ceil(K/128)], x f32 [.., K])
Napi::Value QuantizeFp8Act(const Napi::CallbackInfo& info) {
  const char* op = "quantizeFp8Act";
  OpArgs a(info, op);
  Tensor q = a.tensor(1, "q"), sc = a.tensor(2, "scale"), x = a.tensor(3, "x");
  Device d = x.device();
  expect_dtype(op, "q", q, {DType::FP8_E4M3});
  expect_dtype(op, "scale", sc, {DType::F32});
  expect_dtype(op, "x", x, {DType::F32});
  expect_rows_input(op, x);
  expect_same_shape(op, "q", q, "x", x);
  const int64_t K = x.dim(-1), T = x.rows();
  std::vector<int64_t> ss = x.shape;
  ss.back() = (K + cpu::kFp8Block - 1) / cpu::kFp8Block;
  expect_shape(op, "scale", sc, ss);
  expect_device(op, "q", q, d);
  expect_device(op, "scale", sc, d);
  Stream& s = a.stream(0, d);
  launch(op, s, [=] { cpu::quantize_fp8_act(T, K, x.ptr<float>(), q.ptr<uint8_t>(), sc.ptr<float>()); },
         LC_GPU(gpu::quantize_fp8_act(T, K, x.data(), DType::F32, q.ptr<uint8_t>(), sc.ptr<float>(), st)));
  return info.Env().Undefined();
}

void check_fp8_weight(const char* op, const Tensor& q, const Tensor& sc, const Tensor& w) {
  expect_dtype(op, "q", q, {DType::FP8_E4M3});
  expect_dtype(op, "scaleInv", sc, {DType::F32});
  expect_dtype(op, "w", w, {DType::F32, DType::BF16});
  expect_ndim(op, "w", w, 2);
  expect_same_shape(op, "q", q, "w", w);
  const int64_t N = w.dim(0), K = w.dim(1);
  expect_shape(op, "scaleInv", sc, {(N + cpu::kFp8Block - 1) / cpu::kFp8Block, (K + cpu::kFp8Block - 1) / cpu::kFp8Block});
  expect_device(op, "q", q, w.device());
  expect_device(op, "scaleInv", sc, w.device());
}

// quantizeFp8Blocks(stream, q fp8 [N, K], scaleInv f32 [ceil(N/128), ceil(K/128)], w f32|bf16 [N, K])
Napi::Value QuantizeFp8Blocks(const Napi::CallbackInfo& info) {
  const char* op = "quantizeFp8Blocks";
  OpArgs a(info, op);
  Tensor q = a.tensor(1, "q"), sc = a.tensor(2, "scaleInv"), w = a.tensor(3, "w");
  check_fp8_weight(op, q, sc, w);
  Stream& s = a.stream(0, w.device());
  const int64_t N = w.dim(0), K = w.dim(1);
  launch(op, s, [=] { cpu::quantize_fp8_blocks(N, K, w.data(), w.dtype, q.ptr<uint8_t>(), sc.ptr<float>()); },
         LC_GPU(gpu::quantize_fp8_blocks(N, K, w.data(), w.dtype, q.ptr<uint8_t>(), sc.ptr<float>(), st)));
  return info.Env().Undefined();
}

// dequantizeFp8Blocks(stream, w f32|bf16 [N, K], q fp8 [N, K], scaleInv f32 [ceil(N/128), ceil(K/128)])
Napi::Value DequantizeFp8Blocks(const Napi::CallbackInfo& info) {
  const char* op = "dequantizeFp8Blocks";
  OpArgs a(info, op);
  Tensor w = a.tensor(1, "w"), q = a.tensor(2, "q"), sc = a.tensor(3, "scaleInv");
  check_fp8_weight(op, q, sc, w);
  Stream& s = a.stream(0, w.device());
  const int64_t N = w.dim(0), K = w.dim(1);
  launch(op, s, [=] { cpu::dequantize_fp8_blocks(N, K, q.ptr<uint8_t>(), sc.ptr<float>(), w.data(), w.dtype); },
         LC_GPU(gpu::dequantize_fp8_blocks(N, K, q.ptr<uint8_t>(), sc.ptr<float>(), w.data(), w.dtype, st)));
  return info.Env().Undefined();
}

// argmax(stream, idx int32 [..], x f32 [.., V])
Napi::Value Argmax(const Napi::CallbackInfo& info) {
  const char* op = "argmax";
  OpArgs a(info, op);
  Tensor idx = a.tensor(1, "idx"), x = a.tensor(2, "x");
  Device d = x.device();
  expect_dtype(op, "idx", idx, {DType::I32});
  expect_dtype(op, "x", x, {DType::F32});
  expect_rows_input(op, x);
  if (x.dim(-1) > INT32_MAX) fail(Code::E_SHAPE, "argmax: last dimension %lld does not fit int32", static_cast<long long>(x.dim(-1)));
  expect_row_shape(op, "idx", idx, x);
  expect_device(op, "idx", idx, d);
  Stream& s = a.stream(0, d);
  const int64_t rows = x.rows(), V = x.dim(-1);
  launch(op, s, [=] { cpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>()); },
         LC_GPU(gpu::argmax(rows, V, x.ptr<float>(), idx.ptr<int32_t>(), st)));
  return info.Env().Undefined();
}

Napi::Value SoftmaxImpl(const Napi::CallbackInfo& info, const char* op, bool log) {
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  Device d = x.device();
  expect_dtype(op, "y", y, {DType::F32});
  expect_dtype(op, "x", x, {DType::F32});
  expect_rows_input(op, x);
  expect_same_shape(op, "y", y, "x", x);
  expect_device(op, "y", y, d);
  Stream& s = a.stream(0, d);
  const int64_t rows = x.rows(), V = x.dim(-1);
  launch(op, s, [=] { cpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log); },
         LC_GPU(gpu::softmax(rows, V, x.ptr<float>(), y.ptr<float>(), log, st)));
  return info.Env().Undefined();
}
Napi::Value Softmax(const Napi::CallbackInfo& info) { return SoftmaxImpl(info, "softmax", false); }
Napi::Value LogSoftmax(const Napi::CallbackInfo& info) { return SoftmaxImpl(info, "logSoftmax", true); }

// sample(stream, ids int32 [..], logits f32 [.., V], temperature, topK, topP, minP, seed, step)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  const char* op = "sample";
  OpArgs a(info, op);
  Tensor ids = a.tensor(1, "ids"), x = a.tensor(2, "logits");
  Device d = x.device();
  expect_dtype(op, "ids", ids, {DType::I32});
  expect_dtype(op, "logits", x, {DType::F32});
  if (x.ndim() < 1 || x.dim(-1) < 1)
    fail(Code::E_SHAPE, "sample: 'logits' has shape %s, expected a non-empty last dimension", shape_str(x.shape).c_str());
  if (x.dim(-1) > INT32_MAX) fail(Code::E_SHAPE, "sample: vocabulary %lld does not fit int32", static_cast<long long>(x.dim(-1)));
  expect_row_shape(op, "ids", ids, x);
  expect_device(op, "ids", ids, d);
  cpu::SampleParams p;
  double temp = a.number(3, "temperature");
  int64_t top_k = a.integer(4, "topK");
  double top_p = a.number(5, "topP"), min_p = a.number(6, "minP");
  int64_t seed = a.integer(7, "seed"), step = a.integer(8, "step");
  if (!(temp >= 0) || !std::isfinite(temp)) fail(Code::E_ARGUMENT, "sample: temperature must be a finite number >= 0, got %g", temp);
  if (top_k < 0) fail(Code::E_ARGUMENT, "sample: topK must be >= 0 (0 = off), got %lld", static_cast<long long>(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail(Code::E_ARGUMENT, "sample: topP must be in (0, 1] (1 = off), got %g", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail(Code::E_ARGUMENT, "sample: minP must be in [0, 1] (0 = off), got %g", min_p);
  if (seed < 0) fail(Code::E_ARGUMENT, "sample: seed must be a non-negative integer, got %lld", static_cast<long long>(seed));
  if (step < 0) fail(Code::E_ARGUMENT, "sample: step must be a non-negative integer, got %lld", static_cast<long long>(step));
  p.temperature = static_cast<float>(temp);
  p.top_k = top_k;
  p.top_p = static_cast<float>(top_p);
  p.min_p = static_cast<float>(min_p);
  p.seed = static_cast<uint64_t>(seed);
  p.step = static_cast<uint64_t>(step);
  const int64_t rows = x.rows(), V = x.dim(-1);
  Stream& s = a.stream(0, d);
  std::optional<Tensor> ws;
  if (p.temperature > 0.0f && rows > 0)
    ws = empty_tensor(d, DType::I8, {d.is_cpu() ? cpu::sample_workspace_bytes(rows, V) : GPU_SAMPLE_WS(rows, V)});
  void* wsp = ws ? ws->data() : nullptr;
  const int64_t ws_bytes = ws ? ws->numel() : 0;
  (void)ws_bytes;
  launch(op, s,
         [=] {
           cpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), wsp);
           (void)ws;
         },
         LC_GPU(gpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), wsp, ws_bytes, st); (void)ws));
  return info.Env().Undefined();
}

}  // namespace

LC_REGISTER_OP("embedding", Embedding);
LC_REGISTER_OP("siluMul", SiluMul);
LC_REGISTER_OP("add", Add);
LC_REGISTER_OP("scale", Scale);
LC_REGISTER_OP("scaleGroups", ScaleGroups);
LC_REGISTER_OP("convert", Convert);
LC_REGISTER_OP("quantizeFp8Act", QuantizeFp8Act);
LC_REGISTER_OP("quantizeFp8Blocks", QuantizeFp8Blocks);
LC_REGISTER_OP("dequantizeFp8Blocks", DequantizeFp8Blocks);
LC_REGISTER_OP("argmax", Argmax);
LC_REGISTER_OP("softmax", Softmax);
LC_REGISTER_OP("logSoftmax", LogSoftmax);
LC_REGISTER_OP("sample", Sample);

}  // namespace lc

// Format conversion and quantization ops (kernels: cpu/quant.cc, cuda/quant.cu):
//   convert(stream, y, x): any pair of f32, bf16, f16, fp8_e4m3, same shape
//   quantizeFp8Act(stream, q fp8 [.., K], scale f32 [.., ceil(K/128)], x f32 [.., K])
//   quantizeFp8Blocks(stream, q fp8 [N, K], scaleInv f32 [ceil(N/128), ceil(K/128)], w f32|bf16 [N, K])
//   dequantizeFp8Blocks(stream, w f32|bf16 [N, K], q fp8 [N, K], scaleInv f32 [ceil(N/128), ceil(K/128)])
//   quantizeInt8Rows(stream, q int8 [N, K], scale f32 [N], w f32|bf16 [N, K]): per-row int8 weights for linear
//   quantizeInt4(stream, q int8 [N, G, g / 2], scale f16 [N, G], w f32|bf16 [N, K]): symmetric int4 groups (CPU)
//   repackGptqInt4(stream, q int8 [N, G, g / 2], qweight int32 [K / 8, N]): GPTQ's packed codes in the int4 format (CPU)
#include "../binding.h"
#include "../cpu/linear.h"
#include "../cpu/quant.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/quant.h"
#include "../../cuda/elementwise.h"
#endif

namespace lc {

namespace {

constexpr DTypes kFloatTypes = {DType::F32, DType::BF16, DType::F16, DType::FP8_E4M3};

int64_t fp8_blocks(int64_t n) { return (n + cpu::kFp8Block - 1) / cpu::kFp8Block; }

void Convert(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x");
  const Device d = x.device();
  a.expect(y, "y", kFloatTypes, d);
  a.expect(x, "x", kFloatTypes, d);
  expect_same_shape(a.op(), "y", y, "x", x);
  const int64_t n = x.numel();
  a.launch(
      d, [=] { cpu::convert(n, x.data(), x.dtype, y.data(), y.dtype); },
      LC_GPU(gpu::convert(n, x.data(), x.dtype, y.data(), y.dtype, stream)));
}

void QuantizeFp8Act(const OpArgs& a) {
  Tensor q = a.tensor(1, "q"), sc = a.tensor(2, "scale"), x = a.tensor(3, "x");
  const Device d = x.device();
  a.expect(q, "q", {DType::FP8_E4M3}, d);
  a.expect(sc, "scale", {DType::F32}, d);
  a.expect(x, "x", {DType::F32}, d);
  expect_rows(a.op(), "x", x);
  expect_same_shape(a.op(), "q", q, "x", x);
  const int64_t K = x.dim(-1), T = x.rows();
  std::vector<int64_t> ss = x.shape;
  ss.back() = fp8_blocks(K);
  expect_shape(a.op(), "scale", sc, ss);
  a.launch(
      d, [=] { cpu::quantize_fp8_act(T, K, x.ptr<float>(), q.ptr<uint8_t>(), sc.ptr<float>()); },
      LC_GPU(gpu::quantize_fp8_act(T, K, x.data(), DType::F32, q.ptr<uint8_t>(), sc.ptr<float>(), stream)));
}

// The arguments of quantizeFp8Blocks / dequantizeFp8Blocks: w [N, K], q like w, 128 x 128 block scales.
void check_fp8_weight(const OpArgs& a, const Tensor& q, const Tensor& sc, const Tensor& w, int64_t* n, int64_t* k) {
  const Device d = w.device();
  a.expect(q, "q", {DType::FP8_E4M3}, d);
  a.expect(sc, "scaleInv", {DType::F32}, d);
  a.dims(w, "w", {DType::F32, DType::BF16}, d, n, k);
  expect_same_shape(a.op(), "q", q, "w", w);
  expect_shape(a.op(), "scaleInv", sc, {fp8_blocks(*n), fp8_blocks(*k)});
}

void QuantizeFp8Blocks(const OpArgs& a) {
  Tensor q = a.tensor(1, "q"), sc = a.tensor(2, "scaleInv"), w = a.tensor(3, "w");
  int64_t N, K;
  check_fp8_weight(a, q, sc, w, &N, &K);
  a.launch(
      w.device(), [=] { cpu::quantize_fp8_blocks(N, K, w.data(), w.dtype, q.ptr<uint8_t>(), sc.ptr<float>()); },
      LC_GPU(gpu::quantize_fp8_blocks(N, K, w.data(), w.dtype, q.ptr<uint8_t>(), sc.ptr<float>(), stream)));
}

void DequantizeFp8Blocks(const OpArgs& a) {
  Tensor w = a.tensor(1, "w"), q = a.tensor(2, "q"), sc = a.tensor(3, "scaleInv");
  int64_t N, K;
  check_fp8_weight(a, q, sc, w, &N, &K);
  a.launch(
      w.device(), [=] { cpu::dequantize_fp8_blocks(N, K, q.ptr<uint8_t>(), sc.ptr<float>(), w.data(), w.dtype); },
      LC_GPU(gpu::dequantize_fp8_blocks(N, K, q.ptr<uint8_t>(), sc.ptr<float>(), w.data(), w.dtype, stream)));
}

void QuantizeInt8Rows(const OpArgs& a) {
  Tensor q = a.tensor(1, "q"), scale = a.tensor(2, "scale"), w = a.tensor(3, "w");
  const Device d = w.device();
  int64_t n, k;
  a.dims(w, "w", {DType::F32, DType::BF16}, d, &n, &k);
  a.expect(q, "q", {DType::I8}, d, {n, k});
  a.expect(scale, "scale", {DType::F32}, d, {n});
  a.launch(
      d, [=] { cpu::quantize_int8_rows(n, k, w.data(), w.dtype, q.ptr<int8_t>(), scale.ptr<float>()); },
      LC_GPU(gpu::quantize_int8_rows(n, k, w.data(), w.dtype, q.ptr<int8_t>(), scale.ptr<float>(), stream)));
}

void QuantizeInt4(const OpArgs& a) {
  Tensor q = a.tensor(1, "q"), scale = a.tensor(2, "scale"), w = a.tensor(3, "w");
  const Device d = w.device();
  int64_t n, k, qn, G, half;
  a.dims(w, "w", {DType::F32, DType::BF16}, d, &n, &k);
  a.dims(q, "q", {DType::I8}, d, &qn, &G, &half);
  const int64_t g = 2 * half;
  if (g < 32 || g > cpu::kInt4MaxGroup || g % 32 != 0 || k < 1)
    fail(Code::E_SHAPE,
         "quantizeInt4: 'q' has shape %s: [n, groups, group / 2] with a group of 32..%lld columns, a multiple of 32",
         shape_str(q.shape).c_str(), ll(cpu::kInt4MaxGroup));
  G = cpu::int4_groups(k, g);
  a.expect(q, "q", {DType::I8}, d, {n, G, half});
  a.expect(scale, "scale", {DType::F16}, d, {n, G});
  if (!d.is_cpu()) fail(Code::E_DEVICE, "quantizeInt4: CPU tensors only (the quantizer runs where checkpoints are mapped)");
  a.launch(
      d, [=] { cpu::quantize_int4_groups(n, k, g, w.data(), w.dtype, q.ptr<uint8_t>(), scale.ptr<uint16_t>()); }, [](void*) {});
}

void RepackGptqInt4(const OpArgs& a) {
  Tensor q = a.tensor(1, "q"), qw = a.tensor(2, "qweight");
  const Device d = qw.device();
  int64_t k8, n, qn, G, half;
  a.dims(qw, "qweight", {DType::I32}, d, &k8, &n);
  a.dims(q, "q", {DType::I8}, d, &qn, &G, &half);
  const int64_t g = 2 * half, k = 8 * k8;
  if (g < 32 || g > cpu::kInt4MaxGroup || g % 32 != 0 || k < 1)
    fail(Code::E_SHAPE,
         "repackGptqInt4: 'q' has shape %s: [n, groups, group / 2] with a group of 32..%lld columns, a multiple of 32",
         shape_str(q.shape).c_str(), ll(cpu::kInt4MaxGroup));
  a.expect(q, "q", {DType::I8}, d, {n, cpu::int4_groups(k, g), half});
  if (!d.is_cpu()) fail(Code::E_DEVICE, "repackGptqInt4: CPU tensors only (checkpoints are repacked where they are mapped)");
  a.launch(
      d, [=] { cpu::repack_gptq_int4(n, k, g, qw.ptr<int32_t>(), q.ptr<uint8_t>()); }, [](void*) {});
}

}  // namespace

LC_REGISTER_OP("convert", Convert);
LC_REGISTER_OP("quantizeFp8Act", QuantizeFp8Act);
LC_REGISTER_OP("quantizeFp8Blocks", QuantizeFp8Blocks);
LC_REGISTER_OP("dequantizeFp8Blocks", DequantizeFp8Blocks);
LC_REGISTER_OP("quantizeInt8Rows", QuantizeInt8Rows);
LC_REGISTER_OP("quantizeInt4", QuantizeInt4);
LC_REGISTER_OP("repackGptqInt4", RepackGptqInt4);

}  // namespace lc

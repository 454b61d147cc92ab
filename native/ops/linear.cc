// linear(stream, y, x, weight, scale?): y[.., n] = x[.., k] @ weight[n, k]^T
// quantizeInt8Rows(stream, q, scale, w): symmetric per-row int8 weights for linear
#include "../binding.h"
#include "../cpu/linear.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#include "../../cuda/quant.h"
#endif

namespace lc {

// Checks a weight and its scale (fp8 block scales or int8 per-row scales) and describes them.
cpu::WeightRef weight_ref(const char* op, const Tensor& w, const std::optional<Tensor>& scale) {
  expect_dtype(op, "weight", w, {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8});
  expect_ndim(op, "weight", w, 2);
  cpu::WeightRef r;
  r.dtype = w.dtype;
  r.data = w.data();
  r.n = w.dim(0);
  r.k = w.dim(1);
  if (w.dtype == DType::FP8_E4M3 || w.dtype == DType::I8) {
    if (!scale) fail(Code::E_ARGUMENT, "%s: a %s weight needs its scale tensor", op, dtype_name(w.dtype));
    expect_dtype(op, "scale", *scale, {DType::F32});
    expect_device(op, "scale", *scale, w.device());
    if (w.dtype == DType::FP8_E4M3)
      expect_shape(op, "scale (weight_scale_inv)", *scale, {(r.n + 127) / 128, (r.k + 127) / 128});
    else
      expect_shape(op, "scale", *scale, {r.n});
    r.scale = scale->ptr<float>();
  } else if (scale) {
    fail(Code::E_ARGUMENT, "%s: a %s weight takes no scale", op, dtype_name(w.dtype));
  }
  return r;
}

static Napi::Value Linear(const Napi::CallbackInfo& info) {
  const char* op = "linear";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), w = a.tensor(3, "weight");
  std::optional<Tensor> scale = a.opt_tensor(4, "scale");
  Device d = x.device();
  expect_device(op, "y", y, d);
  expect_device(op, "weight", w, d);
  expect_dtype(op, "x", x, {DType::F32, DType::BF16});
  expect_dtype(op, "y", y, {DType::F32, DType::BF16});
  cpu::WeightRef wr = weight_ref(op, w, scale);
  if (x.ndim() < 1 || x.dim(-1) != wr.k)
    fail(Code::E_SHAPE, "linear: 'x' has shape %s, its last dimension must be k = %lld (weight %s)", shape_str(x.shape).c_str(),
         static_cast<long long>(wr.k), shape_str(w.shape).c_str());
  std::vector<int64_t> ys = x.shape;
  ys.back() = wr.n;
  if (y.shape != ys) fail(Code::E_SHAPE, "linear: 'y' has shape %s, expected %s", shape_str(y.shape).c_str(), shape_str(ys).c_str());
  int64_t t = 1;  // rows of x (not x.rows(): k may be 0)
  for (int i = 0; i + 1 < x.ndim(); ++i) t *= x.dim(i);
  Stream& s = a.stream(0, d);
  std::optional<Tensor> keep = scale;
#ifdef LONGCAT_WITH_CUDA
  // fp8 activations on the e4m3 tensor cores (an sm_89+ kernel image); otherwise the bf16 path serves.
  std::optional<Tensor> ws;
  if (!d.is_cpu() && wr.dtype == DType::FP8_E4M3 && t >= cpu::kFp8ActivationMinRows &&
      cpu::matmul_precision() == cpu::MatmulPrecision::FP8 && gpu::kernel_image(d.index).fp8_mma())
    ws = empty_tensor(d, DType::I8, {static_cast<int64_t>(gpu::linear_fp8_workspace_bytes(t, wr.k))});
#endif
  launch(op, s, [=] { cpu::linear(t, x.data(), x.dtype, wr, y.data(), y.dtype); (void)w; (void)keep; },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) {
           if (ws) gpu::linear_fp8(t, x.data(), x.dtype, wr, y.data(), y.dtype, ws->data(), st);
           else gpu::linear(t, x.data(), x.dtype, wr, y.data(), y.dtype, st);
         }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

LC_REGISTER_OP("linear", Linear);

// setMatmulPrecision('bf16' | 'highest' | 'fp8'): see cpu::MatmulPrecision. Returns the previous one.
static Napi::Value SetMatmulPrecision(const Napi::CallbackInfo& info) {
  OpArgs a(info, "setMatmulPrecision");
  const std::string p = a.string(0, "precision");
  using P = cpu::MatmulPrecision;
  static const std::pair<const char*, P> kNames[] = {{"bf16", P::BF16}, {"highest", P::Highest}, {"fp8", P::FP8}};
  const P before = cpu::matmul_precision();
  bool found = false;
  for (const auto& [name, v] : kNames)
    if (p == name) cpu::set_matmul_precision(v), found = true;
  if (!found) fail(Code::E_ARGUMENT, "setMatmulPrecision: expected 'bf16', 'highest' or 'fp8', got '%s'", p.c_str());
  for (const auto& [name, v] : kNames)
    if (v == before) return Napi::String::New(info.Env(), name);
  return info.Env().Undefined();
}
LC_REGISTER_OP("setMatmulPrecision", SetMatmulPrecision);

// setCudaGemm('mma' | 'wgmma'): the tensor-core kernel of bf16 x bf16 CUDA GEMMs on sm_90 (see
// gpu::linear_wgmma; 'wgmma' is opt-in until it has run on a card). Returns the previous one.
static Napi::Value SetCudaGemm(const Napi::CallbackInfo& info) {
  OpArgs a(info, "setCudaGemm");
  const std::string k = a.string(0, "kernel");
  if (k != "mma" && k != "wgmma") fail(Code::E_ARGUMENT, "setCudaGemm: expected 'mma' or 'wgmma', got '%s'", k.c_str());
#ifdef LONGCAT_WITH_CUDA
  const bool before = gpu::wgmma_enabled();
  gpu::set_wgmma_enabled(k == "wgmma");
  return Napi::String::New(info.Env(), before ? "wgmma" : "mma");
#else
  if (k == "wgmma") fail(Code::E_DEVICE, "setCudaGemm: this build has no CUDA backend");
  return Napi::String::New(info.Env(), "mma");
#endif
}
LC_REGISTER_OP("setCudaGemm", SetCudaGemm);

static Napi::Value QuantizeInt8Rows(const Napi::CallbackInfo& info) {
  const char* op = "quantizeInt8Rows";
  OpArgs a(info, op);
  Tensor q = a.tensor(1, "q"), scale = a.tensor(2, "scale"), w = a.tensor(3, "w");
  Device d = w.device();
  expect_dtype(op, "w", w, {DType::F32, DType::BF16});
  expect_dtype(op, "q", q, {DType::I8});
  expect_dtype(op, "scale", scale, {DType::F32});
  expect_ndim(op, "w", w, 2);
  const int64_t n = w.dim(0), k = w.dim(1);
  expect_shape(op, "q", q, {n, k});
  expect_shape(op, "scale", scale, {n});
  expect_device(op, "q", q, d);
  expect_device(op, "scale", scale, d);
  Stream& s = a.stream(0, d);
  launch(op, s, [=] { cpu::quantize_int8_rows(n, k, w.data(), w.dtype, q.ptr<int8_t>(), scale.ptr<float>()); },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) { gpu::quantize_int8_rows(n, k, w.data(), w.dtype, q.ptr<int8_t>(), scale.ptr<float>(), st); }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

LC_REGISTER_OP("quantizeInt8Rows", QuantizeInt8Rows);

}  // namespace lc

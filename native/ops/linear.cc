// linear(stream, y, x, weight, scale?): y[.., n] = x[.., k] @ weight[n, k]^T (an int4 weight: codes
// int8 [n, groups, group / 2] and its group scales, cpu/linear.h)
// setMatmulPrecision(precision), setCudaGemm(kernel): process-wide GEMM switches
#include "../binding.h"
#include "../cpu/linear.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#endif

namespace lc {

// An int4 weight (cpu/linear.h's format): codes int8 [n, G, g / 2], scales bf16 / f16 [n, G] or
// [n, G, 2]; k (the input width, from x) must fall in the last group: (G - 1) * g < k <= G * g.
// k < 0: G * g. `name` / `scale_name` name the tensors in errors.
cpu::WeightRef int4_weight_ref(const char* op, const char* name, const Tensor& w, const char* scale_name, const Tensor* scale,
                               int64_t k) {
  cpu::WeightRef r;
  const int64_t n = w.dim(0), G = w.dim(1), g = 2 * w.dim(2);
  if (g < 32 || g > cpu::kInt4MaxGroup || g % 32 != 0)
    fail(Code::E_SHAPE,
         "%s: int4 weight '%s' has shape %s: [n, groups, group / 2] with a group of 32..%lld columns, a multiple of 32", op, name,
         shape_str(w.shape).c_str(), ll(cpu::kInt4MaxGroup));
  if (k < 0) k = G * g;
  if (G != cpu::int4_groups(k, g) || k < 1)
    fail(Code::E_SHAPE,
         "%s: int4 weight '%s' has shape %s (%lld groups of %lld), which does not fit k = %lld (needs %lld groups)", op, name,
         shape_str(w.shape).c_str(), ll(G), ll(g), ll(k), ll(cpu::int4_groups(k, g)));
  if (!scale)
    fail(Code::E_ARGUMENT, "%s: int4 weight '%s' needs its scale tensor (bf16 / f16 [n, groups] or [n, groups, 2])", op, name);
  expect_dtype(op, scale_name, *scale, {DType::BF16, DType::F16});
  expect_device(op, scale_name, *scale, w.device());
  const bool zero = scale->ndim() == 3;
  if (zero)
    expect_shape(op, scale_name, *scale, {n, G, 2});
  else
    expect_shape(op, scale_name, *scale, {n, G});
  r.dtype = DType::I4;
  r.data = w.data();
  r.n = n;
  r.k = k;
  r.group = g;
  r.group_scale = scale->ptr<uint16_t>();
  r.group_scale_f16 = scale->dtype == DType::F16;
  r.group_zero = zero;
  return r;
}

// Checks a weight and its scale (fp8 block scales, int8 per-row scales, int4 group scales) and
// describes them. k: the input width (x's last dimension), needed for an int4 weight; < 0 when unknown.
cpu::WeightRef weight_ref(const char* op, const Tensor& w, const std::optional<Tensor>& scale, int64_t k_in) {
  expect_dtype(op, "weight", w, {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8});
  if (w.dtype == DType::I8 && w.ndim() == 3) return int4_weight_ref(op, "weight", w, "scale", scale ? &*scale : nullptr, k_in);
  int64_t n, k;
  expect_dims(op, "weight", w, &n, &k);
  cpu::WeightRef r;
  r.dtype = w.dtype;
  r.data = w.data();
  r.n = n;
  r.k = k;
  if (w.dtype == DType::FP8_E4M3 || w.dtype == DType::I8) {
    if (!scale) fail(Code::E_ARGUMENT, "%s: a %s weight needs its scale tensor", op, dtype_name(w.dtype));
    expect_dtype(op, "scale", *scale, {DType::F32});
    expect_device(op, "scale", *scale, w.device());
    if (w.dtype == DType::FP8_E4M3)
      expect_shape(op, "scale (weight_scale_inv)", *scale, {(n + 127) / 128, (k + 127) / 128});
    else
      expect_shape(op, "scale", *scale, {n});
    r.scale = scale->ptr<float>();
  } else if (scale) {
    fail(Code::E_ARGUMENT, "%s: a %s weight takes no scale", op, dtype_name(w.dtype));
  }
  return r;
}

// A one-row linear (a decode GEMV) in ranges of output columns, for a graph replay's fused phases.
static std::shared_ptr<const RowSplit> linear_rows(const Tensor& x, const Tensor& w, const std::optional<Tensor>& scale,
                                                   const cpu::WeightRef& wr, const Tensor& y) {
  auto s = std::make_shared<RowSplit>();
  s->rows = wr.n;
  s->align = cpu::weight_rows_align(wr);
  s->row_cost = wr.n > 0 ? static_cast<double>(cpu::weight_bytes(wr)) / static_cast<double>(wr.n) : 1.0;
  const int64_t ysize = dtype_size(y.dtype);
  s->run = [=](int64_t r0, int64_t r1) {
    hold(w, scale);
    cpu::linear(1, x.data(), x.dtype, cpu::weight_rows(wr, r0, r1), static_cast<char*>(y.data()) + r0 * ysize, y.dtype);
  };
  s->reads = {{x.data(), static_cast<size_t>(x.nbytes())}};
  s->writes = {{y.data(), static_cast<size_t>(y.nbytes())}};
  s->weights = wr.data;
  s->weight_row_bytes = wr.dtype == DType::I4 ? cpu::int4_row_bytes(wr.k, wr.group) : wr.k * dtype_size(wr.dtype);
  return s;
}

static void Linear(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), w = a.tensor(3, "weight");
  std::optional<Tensor> scale = a.opt_tensor(4, "scale");
  const Device d = x.device();
  expect_device(a.op(), "weight", w, d);
  a.expect(x, "x", {DType::F32, DType::BF16}, d);
  a.expect(y, "y", {DType::F32, DType::BF16}, d);
  const cpu::WeightRef wr = weight_ref(a.op(), w, scale, x.ndim() >= 1 ? x.dim(-1) : -1);
  if (x.ndim() < 1 || x.dim(-1) != wr.k)
    fail(Code::E_SHAPE, "linear: 'x' has shape %s, its last dimension must be k = %lld (weight %s)", shape_str(x.shape).c_str(),
         static_cast<long long>(wr.k), shape_str(w.shape).c_str());
  std::vector<int64_t> ys = x.shape;
  ys.back() = wr.n;
  expect_shape(a.op(), "y", y, ys);
  int64_t t = 1;  // rows of x (not x.rows(): k may be 0)
  for (int i = 0; i + 1 < x.ndim(); ++i) t *= x.dim(i);
  // fp8 activations on the e4m3 tensor cores (an sm_89+ kernel image); otherwise the bf16 path serves.
  const bool fp8_act = !d.is_cpu() && wr.dtype == DType::FP8_E4M3 && t >= cpu::kFp8ActivationMinRows &&
                       cpu::matmul_precision() == cpu::MatmulPrecision::FP8 &&
                       LC_IF_CUDA(gpu::kernel_image(d.index).fp8_mma(), false);
  std::optional<Tensor> ws;
  if (fp8_act) ws = empty_tensor(d, DType::I8, {LC_IF_CUDA(static_cast<int64_t>(gpu::linear_fp8_workspace_bytes(t, wr.k)), 0)});
  a.launch(
      d,
      [=] {
        hold(w, scale);
        cpu::linear(t, x.data(), x.dtype, wr, y.data(), y.dtype);
      },
      LC_GPU(if (ws) gpu::linear_fp8(t, x.data(), x.dtype, wr, y.data(), y.dtype, ws->data(), stream);
             else gpu::linear(t, x.data(), x.dtype, wr, y.data(), y.dtype, stream)),
      false, d.is_cpu() && t == 1 && !overlaps(x, y) ? linear_rows(x, w, scale, wr, y) : nullptr);
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

}  // namespace lc

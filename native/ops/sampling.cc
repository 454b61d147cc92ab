// sample(stream, ids int32 [..], logits f32 [.., V], temperature, topK, topP, minP, seed, step): one
// token per row (kernels: cpu/sampling.cc, cuda/elementwise.cu).
#include <cmath>

#include "../binding.h"
#include "../cpu/sampling.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/elementwise.h"
#endif

namespace lc {

static void Sample(const OpArgs& a) {
  Tensor ids = a.tensor(1, "ids"), x = a.tensor(2, "logits");
  const Device d = x.device();
  a.expect(ids, "ids", {DType::I32}, d);
  a.expect(x, "logits", {DType::F32}, d);
  expect_rows(a.op(), "logits", x);
  if (x.dim(-1) > INT32_MAX) fail(Code::E_SHAPE, "sample: vocabulary %lld does not fit int32", static_cast<long long>(x.dim(-1)));
  expect_row_shape(a.op(), "ids", ids, x);
  const double temp = a.number(3, "temperature");
  const int64_t top_k = a.integer(4, "topK");
  const double top_p = a.number(5, "topP"), min_p = a.number(6, "minP");
  const int64_t seed = a.integer(7, "seed"), step = a.integer(8, "step");
  if (!(temp >= 0) || !std::isfinite(temp))
    fail(Code::E_ARGUMENT, "sample: temperature must be a finite number >= 0, got %g", temp);
  if (top_k < 0) fail(Code::E_ARGUMENT, "sample: topK must be >= 0 (0 = off), got %lld", static_cast<long long>(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail(Code::E_ARGUMENT, "sample: topP must be in (0, 1] (1 = off), got %g", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail(Code::E_ARGUMENT, "sample: minP must be in [0, 1] (0 = off), got %g", min_p);
  if (seed < 0) fail(Code::E_ARGUMENT, "sample: seed must be a non-negative integer, got %lld", static_cast<long long>(seed));
  if (step < 0) fail(Code::E_ARGUMENT, "sample: step must be a non-negative integer, got %lld", static_cast<long long>(step));
  cpu::SampleParams p;
  p.temperature = static_cast<float>(temp);
  p.top_k = top_k;
  p.top_p = static_cast<float>(top_p);
  p.min_p = static_cast<float>(min_p);
  p.seed = static_cast<uint64_t>(seed);
  p.step = static_cast<uint64_t>(step);
  const int64_t rows = x.rows(), V = x.dim(-1);
  std::optional<Tensor> ws;  // only a temperature > 0 draws
  if (p.temperature > 0.0f && rows > 0)
    ws = empty_tensor(d, DType::I8,
                      {d.is_cpu() ? cpu::sample_workspace_bytes(rows, V) : LC_IF_CUDA(gpu::sample_workspace_bytes(rows, V), 0)});
  a.launch(
      d, [=] { cpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), opt_ptr<void>(ws)); },
      LC_GPU(gpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), opt_ptr<void>(ws), ws ? ws->numel() : 0, stream)));
}

LC_REGISTER_OP("sample", Sample);

}  // namespace lc

// ngramEmbed(stream, y, base, rows, proj): LongCat-Flash-Lite's N-gram projection + mean (see
// types/ops-ngram.d.ts). Kernels: native/cpu/ngram.cc, cuda/ngram.cu.
#include "../binding.h"
#include "../cpu/ngram.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/ngram.h"
#endif

namespace lc {

namespace {

// y f32 [T, H], base f32 [T, H] (y == base allowed), rows f32|bf16 [E, T, D], proj f32|bf16 [E, H, D]
Napi::Value NgramEmbed(const Napi::CallbackInfo& info) {
  const char* op = "ngramEmbed";
  OpArgs a(info, op);
  Tensor y = a.tensor(1, "y"), base = a.tensor(2, "base"), rows = a.tensor(3, "rows"), proj = a.tensor(4, "proj");
  const Device d = base.device();
  int64_t T, H, E, D, E2, T2, H2, D2;
  a.dims(base, "base", {DType::F32}, d, &T, &H);
  a.expect(y, "y", {DType::F32}, d, {T, H});
  a.dims(rows, "rows", {DType::F32, DType::BF16}, d, &E, &T2, &D);
  a.dims(proj, "proj", {DType::F32, DType::BF16}, d, &E2, &H2, &D2);
  if (T2 != T || E2 != E || H2 != H || D2 != D)
    fail(Code::E_SHAPE, "ngramEmbed: 'rows' %s and 'proj' %s do not fit 'base' %s (expected [E, T, D] and [E, H, D])",
         shape_str(rows.shape).c_str(), shape_str(proj.shape).c_str(), shape_str(base.shape).c_str());
  if (y.storage == base.storage && y.offset != base.offset && y.offset < base.offset + base.nbytes() &&
      base.offset < y.offset + y.nbytes())
    fail(Code::E_ARGUMENT, "ngramEmbed: 'y' overlaps 'base' without being the same tensor");
  const DType rt = rows.dtype, pt = proj.dtype;
  Stream& s = a.stream(0, d);
  Tensor ws = empty_tensor(d, DType::F32, {d.is_cpu() ? cpu::ngram_workspace_floats(T, H) : 1});
  launch(
      op, s,
      [=] { cpu::ngram_embed(T, H, E, D, base.ptr<float>(), rows.data(), rt, proj.data(), pt, y.ptr<float>(), ws.ptr<float>()); },
      LC_GPU(gpu::ngram_embed(T, H, E, D, base.ptr<float>(), rows.data(), rt, proj.data(), pt, y.ptr<float>(), stream)));
  return info.Env().Undefined();
}

}  // namespace

LC_REGISTER_OP("ngramEmbed", NgramEmbed);

}  // namespace lc

// rope(stream, x, positions, ropeOffset, invFreq, attentionFactor?): rotates channels
// [ropeOffset, ropeOffset + 2 len(invFreq)) of every head of x [T, heads, headDim] in place
// (kernels: cpu/rope.cc, cuda/rope.cu).
#include "../binding.h"
#include "../cpu/rope.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/rope.h"
#endif

namespace lc {

static void Rope(const OpArgs& a) {
  Tensor x = a.tensor(1, "x"), pos = a.tensor(2, "positions");
  const int64_t offset = a.integer(3, "ropeOffset");
  Tensor inv = a.tensor(4, "invFreq");
  const double factor = a.present(5) ? a.number(5, "attentionFactor") : 1.0;
  const Device d = x.device();
  int64_t t, heads, hd, pairs;
  a.dims(x, "x", {DType::F32}, d, &t, &heads, &hd);
  a.expect(pos, "positions", {DType::I32}, d, {t});
  a.dims(inv, "invFreq", {DType::F32}, d, &pairs);
  const int64_t rd = 2 * pairs;
  if (offset < 0 || offset + rd > hd)
    fail(Code::E_ARGUMENT, "rope: channels [%lld, %lld) (ropeOffset %lld, 2 x invFreq length %lld) exceed the head dim %lld",
         ll(offset), ll(offset + rd), ll(offset), ll(rd), ll(hd));
  expect_finite(a.op(), "attentionFactor", factor);
  const float af = static_cast<float>(factor);
  a.launch(
      d, [=] { cpu::rope(t, heads, hd, x.ptr<float>(), pos.ptr<int32_t>(), offset, rd, inv.ptr<float>(), af); },
      LC_GPU(gpu::rope(t, heads, hd, x.ptr<float>(), pos.ptr<int32_t>(), offset, rd, inv.ptr<float>(), af, stream)));
}

LC_REGISTER_OP("rope", Rope);

}  // namespace lc

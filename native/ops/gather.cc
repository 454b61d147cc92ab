// gatherRows(stream, out, src, idx): out[i] = src[idx[i]] along the first dimension, any dtype
// (see types/ops-gather.d.ts). Kernels: native/cpu/gather.cc, cuda/gather.cu.
#include "../binding.h"
#include "../cpu/gather.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/gather.h"
#endif

namespace lc {

namespace {

// gatherRows(stream, out [..idx.shape, ..src.shape[1:]], src [R, ..], idx int32 [..]); out and src share a dtype
void GatherRows(const OpArgs& a) {
  Tensor out = a.tensor(1, "out"), src = a.tensor(2, "src"), idx = a.tensor(3, "idx");
  Device d = src.device();
  a.expect(idx, "idx", {DType::I32}, d);
  if (out.dtype != src.dtype)
    fail(Code::E_DTYPE, "gatherRows: 'out' has dtype %s, expected %s (the dtype of 'src')", dtype_name(out.dtype),
         dtype_name(src.dtype));
  if (src.ndim() < 1)
    fail(Code::E_SHAPE, "gatherRows: 'src' has shape %s, expected at least one dimension (its rows)",
         shape_str(src.shape).c_str());
  std::vector<int64_t> want = idx.shape;
  want.insert(want.end(), src.shape.begin() + 1, src.shape.end());
  if (out.shape != want)
    fail(Code::E_SHAPE, "gatherRows: 'out' has shape %s, expected %s (idx's shape, then src's shape without its first dimension)",
         shape_str(out.shape).c_str(), shape_str(want).c_str());
  a.expect(out, "out", {src.dtype}, d);
  if (overlaps(out, src)) fail(Code::E_ARGUMENT, "gatherRows: 'out' overlaps 'src'");
  int64_t row_bytes = dtype_size(src.dtype);
  for (size_t i = 1; i < src.shape.size(); ++i) row_bytes *= src.shape[i];
  const int64_t n = idx.numel(), rows = src.dim(0);
  a.launch(
      d,
      [=] {
        const int64_t bad = cpu::gather_rows(n, row_bytes, src.data(), rows, idx.ptr<int32_t>(), out.data());
        if (bad >= 0)
          fail(Code::E_ARGUMENT, "gatherRows: idx[%lld] = %d is out of range for 'src' of %lld rows", static_cast<long long>(bad),
               idx.ptr<int32_t>()[bad], static_cast<long long>(rows));
      },
      LC_GPU(gpu::gather_rows(n, row_bytes, src.data(), rows, idx.ptr<int32_t>(), out.data(), stream)));
}

}  // namespace

LC_REGISTER_OP("gatherRows", GatherRows);

}  // namespace lc

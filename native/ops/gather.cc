// gatherRows(stream, out, src, idx): out[i] = src[idx[i]] along the first dimension, and
// gatherColumns(stream, out, src, idx): out[.., i] = src[.., idx[i]] along the last, any dtype
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

// gatherColumns(stream, out [.., n], src [.., k], idx int32 [n]); out and src share a dtype and leading dimensions
void GatherColumns(const OpArgs& a) {
  Tensor out = a.tensor(1, "out"), src = a.tensor(2, "src"), idx = a.tensor(3, "idx");
  Device d = src.device();
  a.expect(idx, "idx", {DType::I32}, d);
  if (idx.ndim() != 1)
    fail(Code::E_SHAPE, "gatherColumns: 'idx' has shape %s, expected one dimension (the columns to take)",
         shape_str(idx.shape).c_str());
  if (out.dtype != src.dtype)
    fail(Code::E_DTYPE, "gatherColumns: 'out' has dtype %s, expected %s (the dtype of 'src')", dtype_name(out.dtype),
         dtype_name(src.dtype));
  if (src.ndim() < 1)
    fail(Code::E_SHAPE, "gatherColumns: 'src' has shape %s, expected at least one dimension (its columns)",
         shape_str(src.shape).c_str());
  std::vector<int64_t> want = src.shape;
  want.back() = idx.dim(0);
  if (out.shape != want)
    fail(Code::E_SHAPE, "gatherColumns: 'out' has shape %s, expected %s (src's shape with idx's length last)",
         shape_str(out.shape).c_str(), shape_str(want).c_str());
  a.expect(out, "out", {src.dtype}, d);
  if (overlaps(out, src)) fail(Code::E_ARGUMENT, "gatherColumns: 'out' overlaps 'src'");
  const int64_t k = src.shape.back(), n = idx.dim(0), rows = src.rows(), es = dtype_size(src.dtype);
  a.launch(
      d,
      [=] {
        const int64_t bad = cpu::gather_columns(rows, k, n, es, src.data(), idx.ptr<int32_t>(), out.data());
        if (bad >= 0)
          fail(Code::E_ARGUMENT, "gatherColumns: idx[%lld] = %d is out of range for 'src' of %lld columns",
               static_cast<long long>(bad), idx.ptr<int32_t>()[bad], static_cast<long long>(k));
      },
      LC_GPU(gpu::gather_columns(rows, k, n, es, src.data(), idx.ptr<int32_t>(), out.data(), stream)));
}

}  // namespace

LC_REGISTER_OP("gatherRows", GatherRows);
LC_REGISTER_OP("gatherColumns", GatherColumns);

}  // namespace lc

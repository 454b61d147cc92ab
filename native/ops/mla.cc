// MLA attention ops (kernels: cpu/mla.cc, cuda/mla.cu, cuda/mla_cache.cu):
//   mlaPrefill(stream, o, q, kvb, kpe, qStart, kvStart, softmaxScale)
//   mlaCacheWrite(stream, cache, ckv, kpe, slots)
//   mlaCacheGather(stream, ckv, kpe, cache, blockTable, start, length)
//   mlaAbsorbQ(stream, qLat, q, wkvb, nopeDim)
//   mlaDecodeAbsorbed(stream, oLat, qLat, q, cache, blockTable, seqLens, softmaxScale)
//   mlaOutput(stream, o, oLat, wkvb)
// Index tensors (starts, slots, block tables, lengths) are read when the op runs on its stream, so
// their bad values surface as typed errors at the stream's synchronize() (CPU); CUDA kernels clamp
// or skip them instead (see cuda/mla.h, cuda/mla_cache.h).
#include "../binding.h"
#include "../cpu/mla.h"
#include "../cpu/threadpool.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/mla_cache.h"
#include "../../cuda/mla.h"
#endif

namespace lc {

namespace {

// Checks block ids blockTable[row, first .. last) against the cache (run time).
void check_blocks(const char* op, const int32_t* bt, int64_t row, int64_t first, int64_t last, int64_t num_blocks) {
  for (int64_t i = first; i < last; ++i)
    if (bt[i] < 0 || bt[i] >= num_blocks)
      fail(Code::E_ARGUMENT, "%s: blockTable[%lld][%lld] = %d is not a block of the cache (%lld blocks)", op, ll(row), ll(i),
           bt[i], ll(num_blocks));
}

// The paged latent cache [num_blocks, block_size, row]: f32 or bf16 (row = dl + dr values), or the
// fp8 layout of cpu/mla.h (a fp8_e4m3 tensor, row = mla_fp8_row_bytes(dl, dr) bytes).
void expect_cache(const OpArgs& a, const Tensor& cache, Device d, int64_t* num_blocks, int64_t* block_size, int64_t* row) {
  a.dims(cache, "cache", {DType::F32, DType::BF16, DType::FP8_E4M3}, d, num_blocks, block_size, row);
  if (*block_size < 1)
    fail(Code::E_SHAPE, "%s: the cache block size (dim 1 of %s) must be >= 1", a.op(), shape_str(cache.shape).c_str());
}

cpu::MlaCache cache_format(const Tensor& cache) {
  return cache.dtype == DType::FP8_E4M3 ? cpu::MlaCache::FP8
         : cache.dtype == DType::BF16   ? cpu::MlaCache::BF16
                                        : cpu::MlaCache::F32;
}

// The rope width dr of cache rows of `row` elements holding a latent of dl values; -1 when the row
// is narrower than the latent alone. An fp8 cache also needs dl a multiple of 128 and an even dr.
int64_t cache_rope_dim(const OpArgs& a, const Tensor& cache, int64_t row, int64_t dl) {
  if (cache.dtype != DType::FP8_E4M3) return row - dl >= 0 ? row - dl : -1;
  if (dl % cpu::kMlaFp8Group != 0)
    fail(Code::E_SHAPE, "%s: an fp8 latent cache needs the latent width (kv_lora_rank) to be a multiple of %lld, got %lld",
         a.op(), ll(cpu::kMlaFp8Group), ll(dl));
  const int64_t rope_bytes = row - cpu::mla_fp8_rope_offset(dl);
  if (rope_bytes < 0 || rope_bytes % 4 != 0)
    fail(Code::E_SHAPE,
         "%s: fp8 cache rows of %lld bytes do not hold a latent of %lld (%lld bytes with its scales) and an even number of bf16 "
         "rope values (row bytes = %lld + 2 x rope)",
         a.op(), ll(row), ll(dl), ll(cpu::mla_fp8_rope_offset(dl)), ll(cpu::mla_fp8_rope_offset(dl)));
  return rope_bytes / 2;
}

// kv_b_proj's weight [nh x (nope + v), dl], f32 or bf16; returns its rows per head (nope + v).
int64_t expect_wkvb(const OpArgs& a, const Tensor& w, Device d, int64_t nh, int64_t dl) {
  int64_t rows, cols;
  a.dims(w, "wkvb", {DType::F32, DType::BF16}, d, &rows, &cols);
  if (cols != dl || nh < 1 || rows % nh != 0)
    fail(Code::E_SHAPE, "%s: 'wkvb' has shape %s, expected [%lld x (nope + v), %lld]", a.op(), shape_str(w.shape).c_str(), ll(nh),
         ll(dl));
  return rows / nh;
}

void MlaPrefill(const OpArgs& a) {
  Tensor o = a.tensor(1, "o"), q = a.tensor(2, "q"), kvb = a.tensor(3, "kvb"), kpe = a.tensor(4, "kpe");
  Tensor qs = a.tensor(5, "qStart"), ks = a.tensor(6, "kvStart");
  const double scale = a.number(7, "softmaxScale");
  const Device d = q.device();
  int64_t T, nh, dk, S, kvb_heads, kvb_dim, kpe_rows, dr, starts;
  a.expect(o, "o", {DType::F32}, d);
  a.dims(q, "q", {DType::F32}, d, &T, &nh, &dk);
  a.dims(kvb, "kvb", {DType::F32}, d, &S, &kvb_heads, &kvb_dim);
  a.dims(kpe, "kpe", {DType::F32}, d, &kpe_rows, &dr);
  a.dims(qs, "qStart", {DType::I32}, d, &starts);
  a.expect(ks, "kvStart", {DType::I32}, d);
  if (dr > dk) fail(Code::E_SHAPE, "mlaPrefill: kpe's rope dim %lld exceeds q's head dim %lld", ll(dr), ll(dk));
  const int64_t dn = dk - dr;
  const cpu::MlaDims md{/*nh*/ nh, /*dn*/ dn, /*dr*/ dr, /*dv*/ kvb_dim - dn, /*dl*/ 0};
  if (kvb_heads != nh || md.dv < 1)
    fail(Code::E_SHAPE,
         "mlaPrefill: 'kvb' has shape %s, expected [S, %lld, %lld + v_head_dim] (nope dim %lld from q %s and kpe %s)",
         shape_str(kvb.shape).c_str(), ll(nh), ll(md.dn), ll(md.dn), shape_str(q.shape).c_str(), shape_str(kpe.shape).c_str());
  expect_shape(a.op(), "kpe", kpe, {S, dr});
  expect_shape(a.op(), "o", o, {T, nh, md.dv});
  const int64_t B = starts - 1;
  if (B < 0) fail(Code::E_SHAPE, "mlaPrefill: 'qStart' must have B + 1 >= 1 entries");
  expect_shape(a.op(), "kvStart", ks, {B + 1});
  expect_finite(a.op(), "softmaxScale", scale);
  const float sc = static_cast<float>(scale);
  a.launch(
      d,
      [=] {
        const int32_t* qp = qs.ptr<int32_t>();
        const int32_t* kp = ks.ptr<int32_t>();
        if (qp[0] < 0 || kp[0] < 0)
          fail(Code::E_ARGUMENT, "mlaPrefill: qStart[0] = %d and kvStart[0] = %d must be >= 0", qp[0], kp[0]);
        for (int64_t b = 0; b < B; ++b) {
          if (qp[b + 1] < qp[b] || kp[b + 1] < kp[b])
            fail(Code::E_ARGUMENT, "mlaPrefill: qStart / kvStart must be non-decreasing (sequence %lld)", ll(b));
          if (kp[b + 1] - kp[b] < qp[b + 1] - qp[b])
            fail(Code::E_ARGUMENT,
                 "mlaPrefill: sequence %lld has %d queries but only %d keys (keys = cached prefix + new tokens)", ll(b),
                 qp[b + 1] - qp[b], kp[b + 1] - kp[b]);
        }
        if (qp[B] > T || kp[B] > S)
          fail(Code::E_ARGUMENT, "mlaPrefill: qStart[B] = %d / kvStart[B] = %d exceed the %lld queries / %lld keys", qp[B], kp[B],
               ll(T), ll(S));
        cpu::mla_prefill(md, B, o.ptr<float>(), q.ptr<float>(), kvb.ptr<float>(), kpe.ptr<float>(), qp, kp, sc);
      },
      // qStart / kvStart are validated on the device (invalid: o untouched)
      LC_GPU(Tensor ws = empty_tensor(d, DType::I32, {gpu::mla_prefill_workspace_ints(md, T, S, B)});
             gpu::mla_prefill(md, B, T, S, o.ptr<float>(), q.ptr<float>(), kvb.ptr<float>(), kpe.ptr<float>(), qs.ptr<int32_t>(),
                              ks.ptr<int32_t>(), sc, ws.ptr<int32_t>(), stream)));
}

void MlaCacheWrite(const OpArgs& a) {
  Tensor cache = a.tensor(1, "cache"), ckv = a.tensor(2, "ckv"), kpe = a.tensor(3, "kpe"), slots = a.tensor(4, "slots");
  const Device d = cache.device();
  int64_t nb, bs, row, T, dl;
  expect_cache(a, cache, d, &nb, &bs, &row);
  a.dims(ckv, "ckv", {DType::F32}, d, &T, &dl);
  const int64_t dr = cache_rope_dim(a, cache, row, dl), nslots = nb * bs;
  if (dr < 0) fail(Code::E_SHAPE, "mlaCacheWrite: cache rows of %lld values cannot hold a latent of %lld", ll(row), ll(dl));
  a.expect(kpe, "kpe", {DType::F32}, d, {T, dr});
  a.expect(slots, "slots", {DType::I32}, d, {T});
  const cpu::MlaDims md{/*nh*/ 0, /*dn*/ 0, /*dr*/ dr, /*dv*/ 0, /*dl*/ dl};
  const cpu::MlaCache cf = cache_format(cache);
  a.launch(
      d,
      [=] {
        const int32_t* sp = slots.ptr<int32_t>();
        for (int64_t i = 0; i < T; ++i)
          if (sp[i] < 0 || sp[i] >= nslots)
            fail(Code::E_ARGUMENT, "mlaCacheWrite: slots[%lld] = %d is outside the cache (%lld blocks x %lld = %lld slots)",
                 ll(i), sp[i], ll(nb), ll(bs), ll(nslots));
        cpu::mla_cache_write(md, T, cache.data(), cf, bs, ckv.ptr<float>(), kpe.ptr<float>(), sp);
      },
      // out-of-range slots are skipped on the GPU (no error from a kernel)
      LC_GPU(gpu::mla_cache_write(T, dl, dr, cache.data(), cf, nslots, ckv.ptr<float>(), kpe.ptr<float>(), slots.ptr<int32_t>(),
                                  stream)));
}

void MlaCacheGather(const OpArgs& a) {
  Tensor ckv = a.tensor(1, "ckv"), kpe = a.tensor(2, "kpe"), cache = a.tensor(3, "cache"), bt = a.tensor(4, "blockTable");
  const int64_t start = a.integer(5, "start"), length = a.integer(6, "length");
  const Device d = cache.device();
  int64_t nb, bs, row, ckv_rows, dl, mb;
  expect_cache(a, cache, d, &nb, &bs, &row);
  a.dims(ckv, "ckv", {DType::F32}, d, &ckv_rows, &dl);
  a.expect(kpe, "kpe", {DType::F32}, d);
  a.dims(bt, "blockTable", {DType::I32}, d, &mb);
  const int64_t dr = cache_rope_dim(a, cache, row, dl);
  if (dr < 0) fail(Code::E_SHAPE, "mlaCacheGather: cache rows of %lld values cannot hold a latent of %lld", ll(row), ll(dl));
  if (start < 0 || length < 0 || start + length > mb * bs)
    fail(Code::E_ARGUMENT, "mlaCacheGather: rows [%lld, %lld) are outside the block table (%lld blocks x %lld rows)", ll(start),
         ll(start + length), ll(mb), ll(bs));
  expect_shape(a.op(), "ckv", ckv, {length, dl});
  expect_shape(a.op(), "kpe", kpe, {length, dr});
  const cpu::MlaDims md{/*nh*/ 0, /*dn*/ 0, /*dr*/ dr, /*dv*/ 0, /*dl*/ dl};
  const cpu::MlaCache cf = cache_format(cache);
  a.launch(
      d,
      [=] {
        const int32_t* bp = bt.ptr<int32_t>();
        if (length > 0) check_blocks("mlaCacheGather", bp, 0, start / bs, (start + length - 1) / bs + 1, nb);
        cpu::mla_cache_gather(md, ckv.ptr<float>(), kpe.ptr<float>(), cache.data(), cf, bs, bp, start, length);
      },
      // rows of out-of-range block ids are zero-filled on the GPU
      LC_GPU(gpu::mla_cache_gather(dl, dr, ckv.ptr<float>(), kpe.ptr<float>(), cache.data(), cf, bs, nb, bt.ptr<int32_t>(), start,
                                   length, stream)));
}

void MlaAbsorbQ(const OpArgs& a) {
  Tensor ql = a.tensor(1, "qLat"), q = a.tensor(2, "q"), w = a.tensor(3, "wkvb");
  const int64_t dn = a.integer(4, "nopeDim");
  const Device d = q.device();
  int64_t T, nh, dk;
  a.dims(q, "q", {DType::F32}, d, &T, &nh, &dk);
  a.expect(ql, "qLat", {DType::F32}, d, {T, nh, -1});
  const int64_t dl = ql.dim(2), per_head = expect_wkvb(a, w, d, nh, dl);
  const cpu::MlaDims md{/*nh*/ nh, /*dn*/ dn, /*dr*/ dk - dn, /*dv*/ per_head - dn, /*dl*/ dl};
  if (dn < 1 || md.dr < 0 || md.dv < 0)
    fail(Code::E_SHAPE, "mlaAbsorbQ: nopeDim %lld does not fit q's head dim %lld and wkvb's %lld rows per head", ll(dn), ll(dk),
         ll(per_head));
  const bool bf = w.dtype == DType::BF16;
  a.launch(
      d, [=] { cpu::mla_absorb_q(md, T, ql.ptr<float>(), q.ptr<float>(), w.data(), bf); },
      LC_GPU(gpu::mla_absorb_q(md, T, ql.ptr<float>(), q.ptr<float>(), w.data(), bf, stream)));
}

void MlaOutput(const OpArgs& a) {
  Tensor o = a.tensor(1, "o"), ol = a.tensor(2, "oLat"), w = a.tensor(3, "wkvb");
  const Device d = ol.device();
  int64_t T, nh, dl;
  a.dims(ol, "oLat", {DType::F32}, d, &T, &nh, &dl);
  a.expect(o, "o", {DType::F32}, d, {T, nh, -1});
  const int64_t dv = o.dim(2), per_head = expect_wkvb(a, w, d, nh, dl);
  const cpu::MlaDims md{/*nh*/ nh, /*dn*/ per_head - dv, /*dr*/ 0, /*dv*/ dv, /*dl*/ dl};
  if (dv < 1 || md.dn < 0)
    fail(Code::E_SHAPE, "mlaOutput: v_head_dim %lld (from o) does not fit wkvb's %lld rows per head", ll(dv), ll(per_head));
  const bool bf = w.dtype == DType::BF16;
  a.launch(
      d, [=] { cpu::mla_output(md, T, o.ptr<float>(), ol.ptr<float>(), w.data(), bf); },
      LC_GPU(gpu::mla_output(md, T, o.ptr<float>(), ol.ptr<float>(), w.data(), bf, stream)));
}

void MlaDecodeAbsorbed(const OpArgs& a) {
  Tensor ol = a.tensor(1, "oLat"), ql = a.tensor(2, "qLat"), q = a.tensor(3, "q"), cache = a.tensor(4, "cache");
  Tensor bt = a.tensor(5, "blockTable"), lens = a.tensor(6, "seqLens");
  const double scale = a.number(7, "softmaxScale");
  const Device d = q.device();
  int64_t B, nh, dl, nb, bs, row;
  a.dims(ql, "qLat", {DType::F32}, d, &B, &nh, &dl);
  a.expect(q, "q", {DType::F32}, d, {B, nh, -1});
  a.expect(ol, "oLat", {DType::F32}, d, {B, nh, dl});
  expect_cache(a, cache, d, &nb, &bs, &row);
  a.expect(bt, "blockTable", {DType::I32}, d, {B, -1});
  a.expect(lens, "seqLens", {DType::I32}, d, {B});
  const int64_t dr = cache_rope_dim(a, cache, row, dl), dk = q.dim(2), mb = bt.dim(1);
  if (dr < 0 || dr > dk)
    fail(Code::E_SHAPE,
         "mlaDecodeAbsorbed: cache rows of %lld values do not split into the latent %lld (from qLat) + a rope key that fits q's "
         "head dim %lld",
         ll(row), ll(dl), ll(dk));
  expect_finite(a.op(), "softmaxScale", scale);
  const cpu::MlaDims md{/*nh*/ nh, /*dn*/ dk - dr, /*dr*/ dr, /*dv*/ 0, /*dl*/ dl};
  const cpu::MlaCache cf = cache_format(cache);
  if (cf == cpu::MlaCache::FP8 && d.is_cpu() && dl + dr > cpu::kMlaFp8DecodeRow)
    fail(Code::E_SHAPE, "mlaDecodeAbsorbed: the CPU decode over an fp8 cache takes rows of at most %lld values, got %lld + %lld",
         ll(cpu::kMlaFp8DecodeRow), ll(dl), ll(dr));
  const int64_t units = 2 * static_cast<int64_t>(cpu::ThreadPool::current().threads());
  Tensor ws = empty_tensor(d, DType::F32, {d.is_cpu() ? cpu::mla_decode_workspace_floats(md, B, units) : 1});
  const float sc = static_cast<float>(scale);
  a.launch(
      d,
      [=] {
        const int32_t* lp = lens.ptr<int32_t>();
        const int32_t* bp = bt.ptr<int32_t>();
        for (int64_t b = 0; b < B; ++b) {
          if (lp[b] < 0 || lp[b] > mb * bs)
            fail(Code::E_ARGUMENT, "mlaDecodeAbsorbed: seqLens[%lld] = %d is beyond the block table (%lld blocks x %lld rows)",
                 ll(b), lp[b], ll(mb), ll(bs));
          check_blocks("mlaDecodeAbsorbed", bp + b * mb, b, 0, (lp[b] + bs - 1) / bs, nb);
        }
        cpu::mla_decode_absorbed(md, B, ol.ptr<float>(), ql.ptr<float>(), q.ptr<float>(), cache.data(), cf, bs, bp, mb, lp, sc,
                                 ws.ptr<float>(), units);
      },
      // seqLens / block ids are clamped on the device (see cuda/mla.h)
      LC_GPU(const int64_t splits = gpu::mla_decode_splits(md, B, mb * bs, cf, cache.data());
             const int64_t wsf = gpu::mla_decode_workspace_floats(md, B, splits);
             Tensor gws = empty_tensor(d, DType::F32, {wsf > 0 ? wsf : 1});
             gpu::mla_decode_absorbed(md, B, ol.ptr<float>(), ql.ptr<float>(), q.ptr<float>(), cache.data(), cf, nb, bs,
                                      bt.ptr<int32_t>(), mb, lens.ptr<int32_t>(), sc, gws.ptr<float>(), splits, stream)));
}

}  // namespace

LC_REGISTER_OP("mlaPrefill", MlaPrefill);
LC_REGISTER_OP("mlaCacheWrite", MlaCacheWrite);
LC_REGISTER_OP("mlaCacheGather", MlaCacheGather);
LC_REGISTER_OP("mlaAbsorbQ", MlaAbsorbQ);
LC_REGISTER_OP("mlaDecodeAbsorbed", MlaDecodeAbsorbed);
LC_REGISTER_OP("mlaOutput", MlaOutput);

}  // namespace lc

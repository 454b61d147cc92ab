// MLA attention and RoPE ops (kernels: cpu/attention.cc, cpu/rope.cc).
//   rope(stream, x, positions, ropeOffset, invFreq, attentionFactor?)
//   mlaPrefill(stream, o, q, kvb, kpe, qStart, kvStart, softmaxScale)
//   mlaCacheWrite(stream, cache, ckv, kpe, slots)
//   mlaCacheGather(stream, ckv, kpe, cache, blockTable, start, length)
//   mlaAbsorbQ(stream, qLat, q, wkvb, nopeDim)
//   mlaDecodeAbsorbed(stream, oLat, qLat, q, cache, blockTable, seqLens, softmaxScale)
//   mlaOutput(stream, o, oLat, wkvb)
// Index tensors (positions, starts, slots, block tables, lengths) are read when the op runs on its
// stream, so their bad values surface as typed errors at the stream's synchronize().
#include <cmath>

#include "../binding.h"
#include "../cpu/attention.h"
#include "../cpu/rope.h"
#include "../cpu/threadpool.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/mla.h"
#endif
#ifdef LONGCAT_WITH_CUDA  // rope / latent-cache kernels
#include "../../cuda/cache.h"
#include "../../cuda/rope.h"
#endif

namespace lc {

namespace {

long long ll(int64_t v) { return static_cast<long long>(v); }

void expect_finite(const char* op, const char* name, double v) {
  if (!std::isfinite(v)) fail(Code::E_ARGUMENT, "%s: '%s' must be a finite number, got %g", op, name, v);
}

void same_device(const char* op, Device d, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  for (auto& [name, t] : ts) expect_device(op, name, *t, d);
}

// Checks block ids blockTable[row, 0 .. ceil(len / bs)) against the cache (run time).
void check_blocks(const char* op, const int32_t* bt, int64_t row, int64_t first, int64_t last, int64_t num_blocks) {
  for (int64_t i = first; i < last; ++i)
    if (bt[i] < 0 || bt[i] >= num_blocks)
      fail(Code::E_ARGUMENT, "%s: blockTable[%lld][%lld] = %d is not a block of the cache (%lld blocks)", op, ll(row), ll(i),
           bt[i], ll(num_blocks));
}

}  // namespace

static Napi::Value Rope(const Napi::CallbackInfo& info) {
  const char* op = "rope";
  OpArgs a(info, op);
  Tensor x = a.tensor(1, "x"), pos = a.tensor(2, "positions");
  int64_t offset = a.integer(3, "ropeOffset");
  Tensor inv = a.tensor(4, "invFreq");
  double factor = a.present(5) ? a.number(5, "attentionFactor") : 1.0;
  Device d = x.device();
  same_device(op, d, {{"positions", &pos}, {"invFreq", &inv}});
  expect_dtype(op, "x", x, {DType::F32});
  expect_dtype(op, "positions", pos, {DType::I32});
  expect_dtype(op, "invFreq", inv, {DType::F32});
  expect_ndim(op, "x", x, 3);
  expect_ndim(op, "invFreq", inv, 1);
  const int64_t t = x.dim(0), heads = x.dim(1), hd = x.dim(2), rd = 2 * inv.dim(0);
  expect_shape(op, "positions", pos, {t});
  if (offset < 0 || offset + rd > hd)
    fail(Code::E_ARGUMENT, "rope: channels [%lld, %lld) (ropeOffset %lld, 2 x invFreq length %lld) exceed the head dim %lld", ll(offset),
         ll(offset + rd), ll(offset), ll(rd), ll(hd));
  expect_finite(op, "attentionFactor", factor);
  Stream& s = a.stream(0, d);
  const float af = static_cast<float>(factor);
  launch(op, s, [=] { cpu::rope(t, heads, hd, x.ptr<float>(), pos.ptr<int32_t>(), offset, rd, inv.ptr<float>(), af); },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) { gpu::rope(t, heads, hd, x.ptr<float>(), pos.ptr<int32_t>(), offset, rd, inv.ptr<float>(), af, st); }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

static Napi::Value MlaPrefill(const Napi::CallbackInfo& info) {
  const char* op = "mlaPrefill";
  OpArgs a(info, op);
  Tensor o = a.tensor(1, "o"), q = a.tensor(2, "q"), kvb = a.tensor(3, "kvb"), kpe = a.tensor(4, "kpe");
  Tensor qs = a.tensor(5, "qStart"), ks = a.tensor(6, "kvStart");
  double scale = a.number(7, "softmaxScale");
  Device d = q.device();
  same_device(op, d, {{"o", &o}, {"kvb", &kvb}, {"kpe", &kpe}, {"qStart", &qs}, {"kvStart", &ks}});
  for (auto [name, t] : {std::pair{"o", &o}, {"q", &q}, {"kvb", &kvb}, {"kpe", &kpe}}) expect_dtype(op, name, *t, {DType::F32});
  expect_dtype(op, "qStart", qs, {DType::I32});
  expect_dtype(op, "kvStart", ks, {DType::I32});
  expect_ndim(op, "q", q, 3);
  expect_ndim(op, "kvb", kvb, 3);
  expect_ndim(op, "kpe", kpe, 2);
  expect_ndim(op, "qStart", qs, 1);
  const int64_t T = q.dim(0), nh = q.dim(1), dk = q.dim(2), S = kvb.dim(0), dr = kpe.dim(1);
  if (dr > dk) fail(Code::E_SHAPE, "mlaPrefill: kpe's rope dim %lld exceeds q's head dim %lld", ll(dr), ll(dk));
  cpu::MlaDims md;
  md.nh = nh;
  md.dr = dr;
  md.dn = dk - dr;
  md.dv = kvb.dim(2) - md.dn;
  if (kvb.dim(1) != nh || md.dv < 1)
    fail(Code::E_SHAPE, "mlaPrefill: 'kvb' has shape %s, expected [S, %lld, %lld + v_head_dim] (nope dim %lld from q %s and kpe %s)",
         shape_str(kvb.shape).c_str(), ll(nh), ll(md.dn), ll(md.dn), shape_str(q.shape).c_str(), shape_str(kpe.shape).c_str());
  expect_shape(op, "kpe", kpe, {S, dr});
  expect_shape(op, "o", o, {T, nh, md.dv});
  const int64_t B = qs.dim(0) - 1;
  if (B < 0) fail(Code::E_SHAPE, "mlaPrefill: 'qStart' must have B + 1 >= 1 entries");
  expect_shape(op, "kvStart", ks, {B + 1});
  expect_finite(op, "softmaxScale", scale);
  Stream& s = a.stream(0, d);
  const float sc = static_cast<float>(scale);
  launch(op, s, [=] {
    const int32_t* qp = qs.ptr<int32_t>();
    const int32_t* kp = ks.ptr<int32_t>();
    if (qp[0] < 0 || kp[0] < 0) fail(Code::E_ARGUMENT, "mlaPrefill: qStart[0] = %d and kvStart[0] = %d must be >= 0", qp[0], kp[0]);
    for (int64_t b = 0; b < B; ++b) {
      if (qp[b + 1] < qp[b] || kp[b + 1] < kp[b])
        fail(Code::E_ARGUMENT, "mlaPrefill: qStart / kvStart must be non-decreasing (sequence %lld)", ll(b));
      if (kp[b + 1] - kp[b] < qp[b + 1] - qp[b])
        fail(Code::E_ARGUMENT, "mlaPrefill: sequence %lld has %d queries but only %d keys (keys = cached prefix + new tokens)", ll(b),
             qp[b + 1] - qp[b], kp[b + 1] - kp[b]);
    }
    if (qp[B] > T || kp[B] > S)
      fail(Code::E_ARGUMENT, "mlaPrefill: qStart[B] = %d / kvStart[B] = %d exceed the %lld queries / %lld keys", qp[B], kp[B], ll(T), ll(S));
    cpu::mla_prefill(md, B, o.ptr<float>(), q.ptr<float>(), kvb.ptr<float>(), kpe.ptr<float>(), qp, kp, sc);
  },
#ifdef LONGCAT_WITH_CUDA
  [=](void* st) {  // qStart / kvStart are validated on the device (invalid: o untouched)
    Tensor ws = empty_tensor(d, DType::I32, {gpu::mla_prefill_workspace_ints(md, T, S, B)});
    gpu::mla_prefill(md, B, T, S, o.ptr<float>(), q.ptr<float>(), kvb.ptr<float>(), kpe.ptr<float>(), qs.ptr<int32_t>(),
                     ks.ptr<int32_t>(), sc, ws.ptr<int32_t>(), st);
  }
#else
  nullptr
#endif
  );
  return info.Env().Undefined();
}

static void expect_cache(const char* op, const Tensor& cache) {
  expect_dtype(op, "cache", cache, {DType::F32, DType::BF16});
  expect_ndim(op, "cache", cache, 3);
  if (cache.dim(1) < 1) fail(Code::E_SHAPE, "%s: the cache block size (dim 1 of %s) must be >= 1", op, shape_str(cache.shape).c_str());
}

static Napi::Value MlaCacheWrite(const Napi::CallbackInfo& info) {
  const char* op = "mlaCacheWrite";
  OpArgs a(info, op);
  Tensor cache = a.tensor(1, "cache"), ckv = a.tensor(2, "ckv"), kpe = a.tensor(3, "kpe"), slots = a.tensor(4, "slots");
  Device d = cache.device();
  same_device(op, d, {{"ckv", &ckv}, {"kpe", &kpe}, {"slots", &slots}});
  expect_cache(op, cache);
  expect_dtype(op, "ckv", ckv, {DType::F32});
  expect_dtype(op, "kpe", kpe, {DType::F32});
  expect_dtype(op, "slots", slots, {DType::I32});
  expect_ndim(op, "ckv", ckv, 2);
  const int64_t T = ckv.dim(0), dl = ckv.dim(1), dr = cache.dim(2) - dl;
  if (dr < 0) fail(Code::E_SHAPE, "mlaCacheWrite: cache rows of %lld values cannot hold a latent of %lld", ll(cache.dim(2)), ll(dl));
  expect_shape(op, "kpe", kpe, {T, dr});
  expect_shape(op, "slots", slots, {T});
  cpu::MlaDims md;
  md.dl = dl;
  md.dr = dr;
  const int64_t nb = cache.dim(0), bs = cache.dim(1), nslots = nb * bs;
  const bool bf = cache.dtype == DType::BF16;
  Stream& s = a.stream(0, d);
  launch(op, s, [=] {
    const int32_t* sp = slots.ptr<int32_t>();
    for (int64_t i = 0; i < T; ++i)
      if (sp[i] < 0 || sp[i] >= nslots)
        fail(Code::E_ARGUMENT, "mlaCacheWrite: slots[%lld] = %d is outside the cache (%lld blocks x %lld = %lld slots)", ll(i), sp[i],
             ll(nb), ll(bs), ll(nslots));
    cpu::mla_cache_write(md, T, cache.data(), bf, bs, ckv.ptr<float>(), kpe.ptr<float>(), sp);
  },
#ifdef LONGCAT_WITH_CUDA  // out-of-range slots are skipped on the GPU (no error from a kernel)
  [=](void* st) { gpu::mla_cache_write(T, dl, dr, cache.data(), bf, nslots, ckv.ptr<float>(), kpe.ptr<float>(), slots.ptr<int32_t>(), st); }
#else
  nullptr
#endif
  );
  return info.Env().Undefined();
}

static Napi::Value MlaCacheGather(const Napi::CallbackInfo& info) {
  const char* op = "mlaCacheGather";
  OpArgs a(info, op);
  Tensor ckv = a.tensor(1, "ckv"), kpe = a.tensor(2, "kpe"), cache = a.tensor(3, "cache"), bt = a.tensor(4, "blockTable");
  int64_t start = a.integer(5, "start"), length = a.integer(6, "length");
  Device d = cache.device();
  same_device(op, d, {{"ckv", &ckv}, {"kpe", &kpe}, {"blockTable", &bt}});
  expect_cache(op, cache);
  expect_dtype(op, "ckv", ckv, {DType::F32});
  expect_dtype(op, "kpe", kpe, {DType::F32});
  expect_dtype(op, "blockTable", bt, {DType::I32});
  expect_ndim(op, "ckv", ckv, 2);
  expect_ndim(op, "blockTable", bt, 1);
  const int64_t dl = ckv.dim(1), dr = cache.dim(2) - dl, nb = cache.dim(0), bs = cache.dim(1), mb = bt.dim(0);
  if (dr < 0) fail(Code::E_SHAPE, "mlaCacheGather: cache rows of %lld values cannot hold a latent of %lld", ll(cache.dim(2)), ll(dl));
  if (start < 0 || length < 0 || start + length > mb * bs)
    fail(Code::E_ARGUMENT, "mlaCacheGather: rows [%lld, %lld) are outside the block table (%lld blocks x %lld rows)", ll(start),
         ll(start + length), ll(mb), ll(bs));
  expect_shape(op, "ckv", ckv, {length, dl});
  expect_shape(op, "kpe", kpe, {length, dr});
  cpu::MlaDims md;
  md.dl = dl;
  md.dr = dr;
  const bool bf = cache.dtype == DType::BF16;
  Stream& s = a.stream(0, d);
  launch(op, s, [=] {
    const int32_t* bp = bt.ptr<int32_t>();
    if (length > 0) check_blocks(op, bp, 0, start / bs, (start + length - 1) / bs + 1, nb);
    cpu::mla_cache_gather(md, ckv.ptr<float>(), kpe.ptr<float>(), cache.data(), bf, bs, bp, start, length);
  },
#ifdef LONGCAT_WITH_CUDA  // rows of out-of-range block ids are zero-filled on the GPU
  [=](void* st) { gpu::mla_cache_gather(dl, dr, ckv.ptr<float>(), kpe.ptr<float>(), cache.data(), bf, bs, nb, bt.ptr<int32_t>(), start, length, st); }
#else
  nullptr
#endif
  );
  return info.Env().Undefined();
}

static void expect_wkvb(const char* op, const Tensor& w, int64_t nh, int64_t dl) {
  expect_dtype(op, "wkvb", w, {DType::F32, DType::BF16});
  expect_ndim(op, "wkvb", w, 2);
  if (w.dim(1) != dl || nh < 1 || w.dim(0) % nh != 0)
    fail(Code::E_SHAPE, "%s: 'wkvb' has shape %s, expected [%lld x (nope + v), %lld]", op, shape_str(w.shape).c_str(), ll(nh), ll(dl));
}

static Napi::Value MlaAbsorbQ(const Napi::CallbackInfo& info) {
  const char* op = "mlaAbsorbQ";
  OpArgs a(info, op);
  Tensor ql = a.tensor(1, "qLat"), q = a.tensor(2, "q"), w = a.tensor(3, "wkvb");
  int64_t dn = a.integer(4, "nopeDim");
  Device d = q.device();
  same_device(op, d, {{"qLat", &ql}, {"wkvb", &w}});
  expect_dtype(op, "qLat", ql, {DType::F32});
  expect_dtype(op, "q", q, {DType::F32});
  expect_ndim(op, "q", q, 3);
  expect_ndim(op, "qLat", ql, 3);
  const int64_t T = q.dim(0), nh = q.dim(1), dk = q.dim(2), dl = ql.dim(2);
  expect_shape(op, "qLat", ql, {T, nh, dl});
  expect_wkvb(op, w, nh, dl);
  cpu::MlaDims md;
  md.nh = nh;
  md.dn = dn;
  md.dr = dk - dn;
  md.dv = w.dim(0) / nh - dn;
  md.dl = dl;
  if (dn < 1 || md.dr < 0 || md.dv < 0)
    fail(Code::E_SHAPE, "mlaAbsorbQ: nopeDim %lld does not fit q's head dim %lld and wkvb's %lld rows per head", ll(dn), ll(dk),
         ll(w.dim(0) / nh));
  const bool bf = w.dtype == DType::BF16;
  Stream& s = a.stream(0, d);
  launch(op, s, [=] { cpu::mla_absorb_q(md, T, ql.ptr<float>(), q.ptr<float>(), w.data(), bf); },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) { gpu::mla_absorb_q(md, T, ql.ptr<float>(), q.ptr<float>(), w.data(), bf, st); }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

static Napi::Value MlaOutput(const Napi::CallbackInfo& info) {
  const char* op = "mlaOutput";
  OpArgs a(info, op);
  Tensor o = a.tensor(1, "o"), ol = a.tensor(2, "oLat"), w = a.tensor(3, "wkvb");
  Device d = ol.device();
  same_device(op, d, {{"o", &o}, {"wkvb", &w}});
  expect_dtype(op, "o", o, {DType::F32});
  expect_dtype(op, "oLat", ol, {DType::F32});
  expect_ndim(op, "oLat", ol, 3);
  expect_ndim(op, "o", o, 3);
  const int64_t T = ol.dim(0), nh = ol.dim(1), dl = ol.dim(2), dv = o.dim(2);
  expect_shape(op, "o", o, {T, nh, dv});
  expect_wkvb(op, w, nh, dl);
  cpu::MlaDims md;
  md.nh = nh;
  md.dv = dv;
  md.dl = dl;
  md.dn = w.dim(0) / nh - dv;
  if (dv < 1 || md.dn < 0)
    fail(Code::E_SHAPE, "mlaOutput: v_head_dim %lld (from o) does not fit wkvb's %lld rows per head", ll(dv), ll(w.dim(0) / nh));
  const bool bf = w.dtype == DType::BF16;
  Stream& s = a.stream(0, d);
  launch(op, s, [=] { cpu::mla_output(md, T, o.ptr<float>(), ol.ptr<float>(), w.data(), bf); },
#ifdef LONGCAT_WITH_CUDA
         [=](void* st) { gpu::mla_output(md, T, o.ptr<float>(), ol.ptr<float>(), w.data(), bf, st); }
#else
         nullptr
#endif
  );
  return info.Env().Undefined();
}

static Napi::Value MlaDecodeAbsorbed(const Napi::CallbackInfo& info) {
  const char* op = "mlaDecodeAbsorbed";
  OpArgs a(info, op);
  Tensor ol = a.tensor(1, "oLat"), ql = a.tensor(2, "qLat"), q = a.tensor(3, "q"), cache = a.tensor(4, "cache");
  Tensor bt = a.tensor(5, "blockTable"), lens = a.tensor(6, "seqLens");
  double scale = a.number(7, "softmaxScale");
  Device d = q.device();
  same_device(op, d, {{"oLat", &ol}, {"qLat", &ql}, {"cache", &cache}, {"blockTable", &bt}, {"seqLens", &lens}});
  expect_dtype(op, "oLat", ol, {DType::F32});
  expect_dtype(op, "qLat", ql, {DType::F32});
  expect_dtype(op, "q", q, {DType::F32});
  expect_cache(op, cache);
  expect_dtype(op, "blockTable", bt, {DType::I32});
  expect_dtype(op, "seqLens", lens, {DType::I32});
  expect_ndim(op, "qLat", ql, 3);
  expect_ndim(op, "q", q, 3);
  expect_ndim(op, "blockTable", bt, 2);
  const int64_t B = ql.dim(0), nh = ql.dim(1), dl = ql.dim(2), dr = cache.dim(2) - dl, dk = q.dim(2);
  if (dr < 0 || dr > dk)
    fail(Code::E_SHAPE, "mlaDecodeAbsorbed: cache rows of %lld values do not split into the latent %lld (from qLat) + a rope key that fits q's head dim %lld",
         ll(cache.dim(2)), ll(dl), ll(dk));
  expect_shape(op, "q", q, {B, nh, dk});
  expect_shape(op, "oLat", ol, {B, nh, dl});
  if (bt.dim(0) != B) fail(Code::E_SHAPE, "mlaDecodeAbsorbed: 'blockTable' has shape %s, expected [%lld, maxBlocks]", shape_str(bt.shape).c_str(), ll(B));
  expect_shape(op, "seqLens", lens, {B});
  expect_finite(op, "softmaxScale", scale);
  cpu::MlaDims md;
  md.nh = nh;
  md.dl = dl;
  md.dr = dr;
  md.dn = dk - dr;
  const int64_t nb = cache.dim(0), bs = cache.dim(1), mb = bt.dim(1);
  const bool bf = cache.dtype == DType::BF16;
  const int64_t units = 2 * static_cast<int64_t>(cpu::ThreadPool::global().threads());
  Tensor ws = empty_tensor(d, DType::F32, {d.is_cpu() ? cpu::mla_decode_workspace_floats(md, B, units) : 1});
  const float sc = static_cast<float>(scale);
  Stream& s = a.stream(0, d);
  launch(op, s, [=] {
    const int32_t* lp = lens.ptr<int32_t>();
    const int32_t* bp = bt.ptr<int32_t>();
    for (int64_t b = 0; b < B; ++b) {
      if (lp[b] < 0 || lp[b] > mb * bs)
        fail(Code::E_ARGUMENT, "mlaDecodeAbsorbed: seqLens[%lld] = %d is beyond the block table (%lld blocks x %lld rows)", ll(b), lp[b],
             ll(mb), ll(bs));
      check_blocks(op, bp + b * mb, b, 0, (lp[b] + bs - 1) / bs, nb);
    }
    cpu::mla_decode_absorbed(md, B, ol.ptr<float>(), ql.ptr<float>(), q.ptr<float>(), cache.data(), bf, bs, bp, mb, lp, sc,
                             ws.ptr<float>(), units);
  },
#ifdef LONGCAT_WITH_CUDA
  [=](void* st) {  // seqLens / block ids are clamped on the device (see cuda/mla.h)
    const int64_t splits = gpu::mla_decode_splits(md, B, mb * bs, bf, cache.data());
    const int64_t wsf = gpu::mla_decode_workspace_floats(md, B, splits);
    Tensor gws = empty_tensor(d, DType::F32, {wsf > 0 ? wsf : 1});
    gpu::mla_decode_absorbed(md, B, ol.ptr<float>(), ql.ptr<float>(), q.ptr<float>(), cache.data(), bf, nb, bs, bt.ptr<int32_t>(), mb,
                             lens.ptr<int32_t>(), sc, gws.ptr<float>(), splits, st);
  }
#else
  nullptr
#endif
  );
  return info.Env().Undefined();
}

LC_REGISTER_OP("rope", Rope);
LC_REGISTER_OP("mlaPrefill", MlaPrefill);
LC_REGISTER_OP("mlaCacheWrite", MlaCacheWrite);
LC_REGISTER_OP("mlaCacheGather", MlaCacheGather);
LC_REGISTER_OP("mlaAbsorbQ", MlaAbsorbQ);
LC_REGISTER_OP("mlaDecodeAbsorbed", MlaDecodeAbsorbed);
LC_REGISTER_OP("mlaOutput", MlaOutput);

}  // namespace lc

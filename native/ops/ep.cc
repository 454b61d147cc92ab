// The expert-parallel ops (kernels: cpu/ep.cc, cuda/ep.cu; slot and flag protocol in cpu/ep.h):
//   epDispatch(stream, u, idx, weights, nRouted, nExperts, expertsPerRank, rowOf, counts[], xs[], idxs[], ws[], abort?,
//              failForTest?, ready[]?, wait?, blocks?, xScales[]?)   (xScales: the FP8 payload's)
//   epCombine(stream, out, u, idx, weights, nRouted, nExperts, rowOf, partials[], abort?, signal[]?, wait?, blocks?)
//   epWait(stream, wait, abort)            a rank's wait alone (a rank without tokens; the emulator's split form)
//   epSignal(stream, flags[])              the combine's signal alone
//   enablePeerAccess(devices[])            peer access between every pair of the CUDA devices of a group
// wait: { flags: int32 [n] (this rank's), peers: number[n], rank, kind: 1 | 2, timeoutMs,
//         counter?: int32 [1] (a CUDA combine's block count), pad?: { counts, idx, w, expertsPerRank },
//         decode?: { q, scales, x } (an FP8 payload: the rows decoded to f32 once every flag is up) }
// On the CPU every tensor is on the CPU and one queued function does what the CUDA kernel does.
// On CUDA the kernel runs on the stream's device and each tensor may live on any CUDA device that
// device reaches: its own, or one it enabled peer access to (the kernel then reads / writes that
// device's memory through the peer pointer).
#include <algorithm>

#include "../binding.h"
#include "../cpu/ep.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/ep.h"
#endif

namespace lc {

namespace {

// Ranks, local experts per rank: nRouted = ranks x expertsPerRank, nExperts >= nRouted.
void expect_split(const char* op, int64_t n_routed, int64_t n_experts, int64_t per_rank, int64_t ranks) {
  if (ranks < 1) fail(Code::E_ARGUMENT, "%s: needs at least one rank", op);
  if (per_rank < 1 || per_rank * ranks != n_routed)
    fail(Code::E_ARGUMENT, "%s: %lld ranks x expertsPerRank = %lld do not hold the nRouted = %lld routed experts", op, ll(ranks),
         ll(per_rank), ll(n_routed));
  if (n_experts < n_routed || n_experts > INT32_MAX)
    fail(Code::E_ARGUMENT, "%s: nExperts = %lld must be in %lld..%d (routed + zero experts)", op, ll(n_experts), ll(n_routed),
         INT32_MAX);
}

// The device whose kernel runs the op: the stream's (the default stream of `fallback` when none
// is given).
Device stream_device(const Napi::CallbackInfo& info, Device fallback) {
  if (info.Length() > 0 && StreamWrap::IsStream(info.Env(), info[0]))
    return StreamWrap::Unwrap(info[0].As<Napi::Object>())->get().device();
  return fallback;
}

// Where a tensor of the op may live for a kernel on `run`: `run` itself (so a CPU / CUDA mismatch
// is the usual device error), or on CUDA a device `run` reaches through peer access; another
// CUDA device is E_DEVICE naming both.
Device reach(const char* op, const char* name, const Tensor& t, Device run) {
  if (run.is_cpu() || t.device().is_cpu()) return run;
  if (peer_access_enabled(run, t.device())) return t.device();
  fail(Code::E_DEVICE,
       "%s: '%s' is on %s, which kernels on %s cannot reach: peer access between them is not enabled (enablePeerAccess)", op,
       name, t.device().str().c_str(), run.str().c_str());
}

// The optional abort flag (int32 [1], cuda/ep.h): a failed dispatch raises it, and a dispatch or
// combine that finds it raised does nothing more (combine writes zeros).
std::optional<Tensor> abort_flag(const OpArgs& a, size_t i, Device run) {
  std::optional<Tensor> f = a.opt_tensor(i, "abort");
  if (f) a.expect(*f, "abort", {DType::I32}, reach(a.op(), "abort", *f, run), {1});
  return f;
}
bool raised(const std::optional<Tensor>& f) { return f && __atomic_load_n(f->ptr<int32_t>(), __ATOMIC_ACQUIRE) != 0; }

// Flags the op releases: int32 [1] each, on a device the kernel reaches.
std::vector<Tensor> flag_list(const OpArgs& a, size_t i, const char* name, Device run) {
  std::vector<Tensor> flags = a.tensor_list(i, name);
  for (size_t r = 0; r < flags.size(); ++r) {
    const std::string at = std::string(name) + "[" + std::to_string(r) + "]";
    a.expect(flags[r], at.c_str(), {DType::I32}, reach(a.op(), at.c_str(), flags[r], run), {1});
  }
  return flags;
}

// A device launch addresses its ranks' buffers through kernel parameters.
void expect_device_ranks(const char* op, Device d, int64_t ranks) {
  if (!d.is_cpu() && ranks > LC_IF_CUDA(gpu::kEpMaxRanks, INT64_MAX))
    fail(Code::E_ARGUMENT, "%s: %lld ranks; a CUDA launch addresses at most %lld", op, ll(ranks),
         ll(LC_IF_CUDA(gpu::kEpMaxRanks, 0)));
}

// A rank's wait for its own flags (the `wait` argument; see the header).
struct WaitSpec {
  Tensor flags;
  std::vector<int32_t> peers;
  int32_t rank = 0, kind = 0;
  int64_t timeout_ns = 0;
  std::optional<Tensor> counter, counts, idx, w;
  int64_t rows = 0, k = 0, per_rank = 0;
  std::optional<Tensor> dq, dscale, dx;  // decode: the FP8 rows, their scales, the f32 rows
  int64_t drows = 0, dh = 0;
};

Napi::Value field(const OpArgs& a, const Napi::Object& o, const char* arg, const char* name) {
  if (!o.Has(name)) fail(Code::E_ARGUMENT, "%s: '%s.%s' is missing", a.op(), arg, name);
  return o.Get(name);
}
Tensor field_tensor(const OpArgs& a, const Napi::Object& o, const char* arg, const char* name) {
  const Napi::Value v = field(a, o, arg, name);
  if (!TensorWrap::IsTensor(a.env(), v)) fail(Code::E_ARGUMENT, "%s: '%s.%s' is not a Tensor", a.op(), arg, name);
  return TensorWrap::Unwrap(v.As<Napi::Object>())->get(a.op());
}
double field_number(const OpArgs& a, const Napi::Object& o, const char* arg, const char* name) {
  const Napi::Value v = field(a, o, arg, name);
  if (!v.IsNumber()) fail(Code::E_ARGUMENT, "%s: '%s.%s' is not a number", a.op(), arg, name);
  return v.As<Napi::Number>().DoubleValue();
}

// The wait at argument i (kind: the kind the op allows, 0: either), checked against device d.
WaitSpec wait_spec(const OpArgs& a, size_t i, Device d, int32_t kind) {
  const char* op = a.op();
  if (!a.present(i) || !a.info()[i].IsObject()) fail(Code::E_ARGUMENT, "%s: 'wait' must be an object", op);
  const Napi::Object o = a.info()[i].As<Napi::Object>();
  WaitSpec w;
  w.flags = field_tensor(a, o, "wait", "flags");
  int64_t n;
  a.dims(w.flags, "wait.flags", {DType::I32}, d, &n);
  expect_device_ranks(op, d, n);
  const Napi::Value pv = field(a, o, "wait", "peers");
  if (!pv.IsArray()) fail(Code::E_ARGUMENT, "%s: 'wait.peers' must be an array of rank numbers", op);
  const Napi::Array list = pv.As<Napi::Array>();
  if (static_cast<int64_t>(list.Length()) != n)
    fail(Code::E_ARGUMENT, "%s: %u peers for %lld flags (one peer rank per flag)", op, list.Length(), ll(n));
  for (int64_t j = 0; j < n; ++j) {
    const Napi::Value v = list.Get(static_cast<uint32_t>(j));
    if (!v.IsNumber() || v.As<Napi::Number>().DoubleValue() < 0 || v.As<Napi::Number>().DoubleValue() > 255)
      fail(Code::E_ARGUMENT, "%s: wait.peers[%lld] is not a rank number in 0..255", op, ll(j));
    w.peers.push_back(v.As<Napi::Number>().Int32Value());
  }
  const double rank = field_number(a, o, "wait", "rank"), k = field_number(a, o, "wait", "kind"),
               ms = field_number(a, o, "wait", "timeoutMs");
  if (!(rank >= 0 && rank <= 255 && rank == static_cast<int32_t>(rank)))
    fail(Code::E_ARGUMENT, "%s: wait.rank %g is not a rank number in 0..255", op, rank);
  if (!((k == 1 || k == 2) && (kind == 0 || k == kind)))
    fail(Code::E_ARGUMENT, "%s: wait.kind must be %s, got %g", op,
         kind == 1   ? "1 (dispatch)"
         : kind == 2 ? "2 (combine)"
                     : "1 or 2",
         k);
  if (!(ms > 0 && ms <= 3.6e6)) fail(Code::E_ARGUMENT, "%s: wait.timeoutMs must be in (0, 3600000], got %g", op, ms);
  w.rank = static_cast<int32_t>(rank);
  w.kind = static_cast<int32_t>(k);
  w.timeout_ns = static_cast<int64_t>(ms * 1e6);
  if (o.Has("counter") && !o.Get("counter").IsUndefined() && !o.Get("counter").IsNull()) {
    w.counter = field_tensor(a, o, "wait", "counter");
    a.expect(*w.counter, "wait.counter", {DType::I32}, d, {1});
  }
  if (o.Has("pad") && !o.Get("pad").IsUndefined() && !o.Get("pad").IsNull()) {
    if (!o.Get("pad").IsObject()) fail(Code::E_ARGUMENT, "%s: 'wait.pad' must be an object", op);
    const Napi::Object p = o.Get("pad").As<Napi::Object>();
    w.counts = field_tensor(a, p, "wait.pad", "counts");
    w.idx = field_tensor(a, p, "wait.pad", "idx");
    w.w = field_tensor(a, p, "wait.pad", "w");
    const double per = field_number(a, p, "wait.pad", "expertsPerRank");
    if (!(per >= 1 && per <= INT32_MAX)) fail(Code::E_ARGUMENT, "%s: wait.pad.expertsPerRank must be >= 1", op);
    w.per_rank = static_cast<int64_t>(per);
    a.dims(*w.idx, "wait.pad.idx", {DType::I32}, d, &w.rows, &w.k);
    a.expect(*w.w, "wait.pad.w", {DType::F32}, d, {w.rows, w.k});
    a.expect(*w.counts, "wait.pad.counts", {DType::I32}, d, {-1});
  }
  if (o.Has("decode") && !o.Get("decode").IsUndefined() && !o.Get("decode").IsNull()) {
    if (!o.Get("decode").IsObject()) fail(Code::E_ARGUMENT, "%s: 'wait.decode' must be an object", op);
    const Napi::Object p = o.Get("decode").As<Napi::Object>();
    w.dq = field_tensor(a, p, "wait.decode", "q");
    w.dscale = field_tensor(a, p, "wait.decode", "scales");
    w.dx = field_tensor(a, p, "wait.decode", "x");
    a.dims(*w.dq, "wait.decode.q", {DType::FP8_E4M3}, d, &w.drows, &w.dh);
    a.expect(*w.dscale, "wait.decode.scales", {DType::F32}, d, {w.drows, (w.dh + 127) / 128});
    a.expect(*w.dx, "wait.decode.x", {DType::F32}, d, {w.drows, w.dh});
  }
  return w;
}

// The CPU side of a wait: cpu::ep_wait, and on failure the reason into the abort word and the
// receive rows padded. Whether every flag was seen.
bool run_wait(const WaitSpec& w, int32_t* abort) {
  const int64_t i = cpu::ep_wait(w.flags.ptr<int32_t>(), w.flags.numel(), abort, w.timeout_ns);
  if (i < 0) {
    if (w.dq) cpu::ep_decode_fp8(w.drows, w.dh, w.dq->ptr<uint8_t>(), w.dscale->ptr<float>(), w.dx->ptr<float>());
    return true;
  }
  cpu::ep_raise(abort, cpu::ep_wait_failure(w.kind, w.rank, w.peers[i]));  // a no-op when another reason came first
  if (w.counts)
    cpu::ep_pad_rows(w.rows, w.k, w.per_rank, w.idx->ptr<int32_t>(), w.w->ptr<float>(), w.counts->numel(),
                     w.counts->ptr<int32_t>());
  return false;
}

#ifdef LONGCAT_WITH_CUDA
gpu::EpWait device_wait(const WaitSpec& w, Device d) {
  gpu::EpWait g{};
  if (d.is_cpu()) return g;
  g.flags = w.flags.ptr<int32_t>();
  g.n = w.flags.numel();
  for (size_t i = 0; i < w.peers.size(); ++i) g.peer[i] = w.peers[i];
  g.rank = w.rank;
  g.kind = w.kind;
  g.timeout_ns = w.timeout_ns;
  g.pad_rows = w.rows;
  g.k = w.k;
  g.per_rank = w.per_rank;
  g.pad_idx = opt_ptr<int32_t>(w.idx);
  g.pad_w = opt_ptr<float>(w.w);
  g.pad_counts = w.counts ? w.counts->numel() : 0;
  g.counts = opt_ptr<int32_t>(w.counts);
  g.counter = opt_ptr<int32_t>(w.counter);
  g.dq = opt_ptr<uint8_t>(w.dq);
  g.dscale = opt_ptr<float>(w.dscale);
  g.dx = opt_ptr<float>(w.dx);
  g.drows = w.drows;
  g.dh = w.dh;
  return g;
}
gpu::EpFlags device_flags(const std::vector<int32_t*>& ptrs, Device d) {
  gpu::EpFlags g{};
  for (size_t r = 0; r < ptrs.size() && !d.is_cpu(); ++r) g.f[r] = ptrs[r];
  return g;
}
#endif

// The block budget of a launch (argument i; default: unbounded).
int64_t block_budget(const OpArgs& a, size_t i) {
  if (!a.present(i)) return INT32_MAX;
  const int64_t b = a.integer(i, "blocks");
  if (b < 1) fail(Code::E_ARGUMENT, "%s: blocks must be >= 1, got %lld", a.op(), ll(b));
  return b;
}

void EpDispatch(const OpArgs& a) {
  const char* op = a.op();
  Tensor u = a.tensor(1, "u"), idx = a.tensor(2, "idx"), w = a.tensor(3, "weights");
  const int64_t n_routed = a.integer(4, "nRouted"), n_experts = a.integer(5, "nExperts"),
                per_rank = a.integer(6, "expertsPerRank");
  Tensor row_of = a.tensor(7, "rowOf");
  std::vector<Tensor> counts = a.tensor_list(8, "counts"), xs = a.tensor_list(9, "xs"), idxs = a.tensor_list(10, "idxs"),
                      ws = a.tensor_list(11, "ws");
  const Device d = stream_device(a.info(), u.device());
  int64_t t, h;
  a.dims(u, "u", {DType::F32}, reach(op, "u", u, d), &t, &h);
  a.expect(idx, "idx", {DType::I32}, reach(op, "idx", idx, d), {t, -1});
  const int64_t k = idx.dim(1);
  a.expect(w, "weights", {DType::F32}, reach(op, "weights", w, d), {t, k});
  const int64_t ranks = static_cast<int64_t>(counts.size());
  expect_split(op, n_routed, n_experts, per_rank, ranks);
  expect_device_ranks(op, d, ranks);
  a.expect(row_of, "rowOf", {DType::I32}, reach(op, "rowOf", row_of, d), {t, ranks});
  if (xs.size() != counts.size() || idxs.size() != counts.size() || ws.size() != counts.size())
    fail(Code::E_ARGUMENT, "%s: counts, xs, idxs and ws need one slot per rank; got %zu, %zu, %zu, %zu", op, counts.size(),
         xs.size(), idxs.size(), ws.size());
  if (xs[0].ndim() != 2) expect_ndim(op, "xs[0]", xs[0], 2);
  const int64_t capacity = xs[0].dim(0);
  // The FP8 payload: xs e4m3 [capacity, H] and xScales f32 [capacity, ceil(H / 128)] per rank.
  const bool fp8 = xs[0].dtype == DType::FP8_E4M3;
  const std::vector<Tensor> scales = a.present(17) ? a.tensor_list(17, "xScales") : std::vector<Tensor>{};
  if (fp8 != !scales.empty())
    fail(Code::E_ARGUMENT, "%s: an FP8 payload needs xs of fp8_e4m3 and xScales (one per rank), an f32 one neither", op);
  if (fp8 && scales.size() != counts.size())
    fail(Code::E_ARGUMENT, "%s: xScales needs one tensor per rank; got %zu for %lld ranks", op, scales.size(), ll(ranks));
  const int64_t groups = (h + 127) / 128;
  std::vector<cpu::EpSlot> slots(static_cast<size_t>(ranks));
  for (int64_t r = 0; r < ranks; ++r) {
    const std::string at = "[" + std::to_string(r) + "]";
    const std::string nc = "counts" + at, nx = "xs" + at, ni = "idxs" + at, nw = "ws" + at;
    a.expect(counts[r], nc.c_str(), {DType::I32}, reach(op, nc.c_str(), counts[r], d), {1});
    a.expect(xs[r], nx.c_str(), {fp8 ? DType::FP8_E4M3 : DType::F32}, reach(op, nx.c_str(), xs[r], d), {capacity, h});
    if (fp8) {
      const std::string ns = "xScales" + at;
      a.expect(scales[r], ns.c_str(), {DType::F32}, reach(op, ns.c_str(), scales[r], d), {capacity, groups});
    }
    a.expect(idxs[r], ni.c_str(), {DType::I32}, reach(op, ni.c_str(), idxs[r], d), {capacity, k});
    a.expect(ws[r], nw.c_str(), {DType::F32}, reach(op, nw.c_str(), ws[r], d), {capacity, k});
    slots[r] = cpu::EpSlot{counts[r].ptr<int32_t>(), xs[r].ptr<void>(), idxs[r].ptr<int32_t>(), ws[r].ptr<float>(),
                           fp8 ? scales[r].ptr<float>() : nullptr};
  }
  const std::optional<Tensor> abort = abort_flag(a, 12, d);
  // Test hook: this dispatch fails as a rank's kernel would (raises the flag, sends nothing).
  const bool fail_for_test = a.present(13) && a.boolean(13, "failForTest");
  const std::vector<Tensor> ready = a.present(14) ? flag_list(a, 14, "ready", d) : std::vector<Tensor>{};
  if (!ready.empty() && static_cast<int64_t>(ready.size()) != ranks)
    fail(Code::E_ARGUMENT, "%s: ready needs one flag per rank; got %zu for %lld ranks", op, ready.size(), ll(ranks));
  std::vector<int32_t*> ready_ptrs;
  for (const Tensor& f : ready) ready_ptrs.push_back(f.ptr<int32_t>());
  // The single-kernel form: this rank's own wait for its flags, in the same launch.
  std::optional<WaitSpec> wait;
  if (a.present(15)) {
    if (!abort) fail(Code::E_ARGUMENT, "%s: a wait needs the abort flag", op);
    wait = wait_spec(a, 15, d, 1);
  }
  const int64_t blocks = block_budget(a, 16);
#ifdef LONGCAT_WITH_CUDA
  const gpu::EpFlags dev_ready = device_flags(ready_ptrs, d);
  const gpu::EpWait dev_wait = wait ? device_wait(*wait, d) : gpu::EpWait{};
  gpu::EpSlots dev{};
  for (int64_t r = 0; r < ranks && !d.is_cpu(); ++r) {
    dev.count[r] = slots[r].count;
    dev.x[r] = slots[r].x;
    dev.idx[r] = slots[r].idx;
    dev.w[r] = slots[r].w;
    dev.scale[r] = slots[r].scale;
  }
#endif
  a.launch(
      d,
      [=] {
        hold(counts, xs, idxs, ws, ready, scales);
        // Whatever happens, the receivers' flags go up after the slots were written (payload or
        // padding), so a failed dispatch does not make its receivers wait out their budget, and
        // this rank's own wait runs: an error is thrown only after both.
        cpu::EpRouteCheck r;
        if (raised(abort) || fail_for_test) {  // a failed step sends nothing
          cpu::ep_dispatch_nothing(t, k, h, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
          if (fail_for_test && abort) cpu::ep_raise(abort->ptr<int32_t>(), cpu::kEpAbortFailed);
        } else {
          r = cpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, n_experts, per_rank, ranks,
                               capacity, slots.data(), row_of.ptr<int32_t>());
          if (r.bad_index >= 0 || r.full_rank >= 0) {
            cpu::ep_dispatch_nothing(t, k, h, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
            if (abort) cpu::ep_raise(abort->ptr<int32_t>(), cpu::kEpAbortFailed);
          }
        }
        for (int32_t* f : ready_ptrs) cpu::ep_signal(f);
        if (wait) run_wait(*wait, abort->ptr<int32_t>());
        if (fail_for_test) fail(Code::E_INTERNAL, "%s: this rank's dispatch failed (injected by a test)", op);
        if (r.bad_index >= 0)
          fail(Code::E_ARGUMENT, "%s: idx[%lld, %lld] = %d is outside [0, nExperts)", op, ll(r.bad_index / k),
               ll(r.bad_index % k), idx.ptr<int32_t>()[r.bad_index]);
        if (r.full_rank >= 0)
          fail(Code::E_ARGUMENT, "%s: capacity exceeded: %lld tokens go to rank %lld, its slot holds %lld rows", op, ll(r.needed),
               ll(r.full_rank), ll(capacity));
      },
      LC_GPU(hold(counts, xs, idxs, ws, ready, wait, scales);
             gpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, per_rank, ranks, capacity,
                              dev, row_of.ptr<int32_t>(), abort ? abort->ptr<int32_t>() : nullptr, fail_for_test, dev_ready,
                              dev_wait, blocks, stream)),
      wait.has_value());
}

void EpWait(const OpArgs& a) {
  const char* op = a.op();
  if (!(a.info().Length() > 0 && StreamWrap::IsStream(a.env(), a.info()[0])))
    fail(Code::E_ARGUMENT, "%s: needs the stream of the rank that waits", op);
  const Device d = StreamWrap::Unwrap(a.info()[0].As<Napi::Object>())->get().device();
  const std::optional<Tensor> abort = abort_flag(a, 2, d);
  if (!abort) fail(Code::E_ARGUMENT, "%s: needs the abort flag", op);
  const WaitSpec wait = wait_spec(a, 1, d, 0);
#ifdef LONGCAT_WITH_CUDA
  const gpu::EpWait dev = device_wait(wait, d);
#endif
  a.launch(
      d, [=] { run_wait(wait, abort->ptr<int32_t>()); },
      LC_GPU(hold(wait.flags); gpu::ep_dispatch(0, 0, 0, nullptr, nullptr, nullptr, 0, 1, 0, 0, gpu::EpSlots{}, nullptr,
                                                abort->ptr<int32_t>(), false, gpu::EpFlags{}, dev, 1, stream)),
      true);
}

void EpSignal(const OpArgs& a) {
  const char* op = a.op();
  if (!(a.info().Length() > 0 && StreamWrap::IsStream(a.env(), a.info()[0])))
    fail(Code::E_ARGUMENT, "%s: needs the stream of the rank that signals", op);
  const Device d = StreamWrap::Unwrap(a.info()[0].As<Napi::Object>())->get().device();
  const std::vector<Tensor> flags = flag_list(a, 1, "flags", d);
  expect_device_ranks(op, d, static_cast<int64_t>(flags.size()));
  std::vector<int32_t*> ptrs;
  for (const Tensor& f : flags) ptrs.push_back(f.ptr<int32_t>());
#ifdef LONGCAT_WITH_CUDA
  const gpu::EpFlags dev = device_flags(ptrs, d);
#endif
  const int64_t n = static_cast<int64_t>(ptrs.size());
  a.launch(
      d,
      [=] {
        hold(flags);
        for (int32_t* f : ptrs) cpu::ep_signal(f);
      },
      LC_GPU(hold(flags); gpu::ep_combine(0, 0, 0, nullptr, nullptr, nullptr, 0, 0, nullptr, 0, 0, gpu::EpPartials{}, nullptr,
                                          nullptr, dev, n, gpu::EpWait{}, 1, stream)));
}

void EpCombine(const OpArgs& a) {
  const char* op = a.op();
  Tensor out = a.tensor(1, "out"), u = a.tensor(2, "u"), idx = a.tensor(3, "idx"), w = a.tensor(4, "weights");
  const int64_t n_routed = a.integer(5, "nRouted"), n_experts = a.integer(6, "nExperts");
  Tensor row_of = a.tensor(7, "rowOf");
  std::vector<Tensor> partials = a.tensor_list(8, "partials");
  const Device d = stream_device(a.info(), u.device());
  int64_t t, h;
  a.dims(u, "u", {DType::F32}, reach(op, "u", u, d), &t, &h);
  a.expect(out, "out", {DType::F32}, reach(op, "out", out, d), {t, h});
  a.expect(idx, "idx", {DType::I32}, reach(op, "idx", idx, d), {t, -1});
  const int64_t k = idx.dim(1);
  a.expect(w, "weights", {DType::F32}, reach(op, "weights", w, d), {t, k});
  const int64_t ranks = static_cast<int64_t>(partials.size());
  if (ranks < 1) fail(Code::E_ARGUMENT, "%s: needs at least one rank", op);
  if (n_routed < 0 || n_experts < n_routed || n_experts > INT32_MAX)
    fail(Code::E_ARGUMENT, "%s: need 0 <= nRouted = %lld <= nExperts = %lld <= %d", op, ll(n_routed), ll(n_experts), INT32_MAX);
  expect_device_ranks(op, d, ranks);
  a.expect(row_of, "rowOf", {DType::I32}, reach(op, "rowOf", row_of, d), {t, ranks});
  if (partials[0].ndim() != 2) expect_ndim(op, "partials[0]", partials[0], 2);
  const int64_t capacity = partials[0].dim(0);
  if (overlaps(out, u)) fail(Code::E_ARGUMENT, "%s: 'out' overlaps 'u'", op);
  std::vector<const float*> parts(static_cast<size_t>(ranks));
  for (int64_t r = 0; r < ranks; ++r) {
    const std::string name = "partials[" + std::to_string(r) + "]";
    a.expect(partials[r], name.c_str(), {DType::F32}, reach(op, name.c_str(), partials[r], d), {capacity, h});
    if (overlaps(out, partials[r])) fail(Code::E_ARGUMENT, "%s: 'out' overlaps '%s'", op, name.c_str());
    parts[r] = partials[r].ptr<float>();
  }
  const std::optional<Tensor> abort = abort_flag(a, 9, d);
  // The single-kernel form: first this rank's "partials ready" flags to the homes, then the home's
  // wait for every rank's, then the sum.
  const std::vector<Tensor> signal = a.present(10) ? flag_list(a, 10, "signal", d) : std::vector<Tensor>{};
  expect_device_ranks(op, d, static_cast<int64_t>(signal.size()));
  std::vector<int32_t*> signal_ptrs;
  for (const Tensor& f : signal) signal_ptrs.push_back(f.ptr<int32_t>());
  std::optional<WaitSpec> wait;
  if (a.present(11)) {
    if (!abort) fail(Code::E_ARGUMENT, "%s: a wait needs the abort flag", op);
    wait = wait_spec(a, 11, d, 2);
    if (!d.is_cpu() && !wait->counter) fail(Code::E_ARGUMENT, "%s: a CUDA combine's wait needs wait.counter", op);
  }
  const int64_t blocks = block_budget(a, 12);
#ifdef LONGCAT_WITH_CUDA
  gpu::EpPartials dev{};
  for (int64_t r = 0; r < ranks && !d.is_cpu(); ++r) dev.rows[r] = parts[r];
  const gpu::EpFlags dev_signal = device_flags(signal_ptrs, d);
  const gpu::EpWait dev_wait = wait ? device_wait(*wait, d) : gpu::EpWait{};
  const int64_t n_signal = static_cast<int64_t>(signal_ptrs.size());
#endif
  a.launch(
      d,
      [=] {
        hold(partials, signal);
        for (int32_t* f : signal_ptrs) cpu::ep_signal(f);
        if (wait) run_wait(*wait, abort->ptr<int32_t>());
        if (raised(abort)) {  // the step failed: the partials may be garbage
          std::fill_n(out.ptr<float>(), t * h, 0.0f);
          return;
        }
        const cpu::EpCombineCheck r =
            cpu::ep_combine(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, n_experts,
                            row_of.ptr<int32_t>(), ranks, capacity, parts.data(), out.ptr<float>());
        if (r.bad_row >= 0)
          fail(Code::E_ARGUMENT, "%s: rowOf[%lld, %lld] = %d is outside [-1, %lld) (the partials' rows)", op,
               ll(r.bad_row / ranks), ll(r.bad_row % ranks), row_of.ptr<int32_t>()[r.bad_row], ll(capacity));
        if (r.bad_index >= 0)
          fail(Code::E_ARGUMENT, "%s: idx[%lld, %lld] = %d is outside [0, nExperts)", op, ll(r.bad_index / k),
               ll(r.bad_index % k), idx.ptr<int32_t>()[r.bad_index]);
      },
      LC_GPU(hold(partials, signal, wait);
             gpu::ep_combine(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, n_experts,
                             row_of.ptr<int32_t>(), ranks, capacity, dev, out.ptr<float>(),
                             abort ? abort->ptr<int32_t>() : nullptr, dev_signal, n_signal, dev_wait, blocks, stream)),
      wait.has_value());
}

Napi::Value EnablePeerAccess(const Napi::CallbackInfo& info) {
  const char* op = "enablePeerAccess";
  if (info.Length() < 1 || !info[0].IsArray()) fail(Code::E_ARGUMENT, "%s: expected an array of device names", op);
  const Napi::Array list = info[0].As<Napi::Array>();
  std::vector<Device> devs;
  for (uint32_t i = 0; i < list.Length(); ++i) {
    const Napi::Value v = list.Get(i);
    if (!v.IsString()) fail(Code::E_ARGUMENT, "%s: devices[%u] is not a device name", op, i);
    const Device dev = Device::parse(v.As<Napi::String>().Utf8Value());
    if (dev.is_cpu()) fail(Code::E_DEVICE, "%s: devices[%u] is the CPU; peer access is between CUDA devices", op, i);
    devs.push_back(dev);
  }
  for (Device from : devs)
    for (Device to : devs) enable_peer_access(from, to);
  return info.Env().Undefined();
}

}  // namespace

LC_REGISTER_OP("enablePeerAccess", EnablePeerAccess);
LC_REGISTER_OP("epDispatch", EpDispatch);
LC_REGISTER_OP("epCombine", EpCombine);
LC_REGISTER_OP("epWait", EpWait);
LC_REGISTER_OP("epSignal", EpSignal);

}  // namespace lc

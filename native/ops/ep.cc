// The expert-parallel ops (kernels: cpu/ep.cc, cuda/ep.cu; slot and flag protocol in cpu/ep.h):
//   epDispatch(stream, u, idx, weights, nRouted, nExperts, expertsPerRank, rowOf, counts[], xs[], idxs[], ws[], abort?,
//              failForTest?, ready[]?)      ready[d]: rank d's flag for this home, released after the payload
//   epWait(stream, flags, peers[], rank, kind, abort, timeoutMs, counts?, idx?, w?, expertsPerRank?)
//                                         bounded acquire wait on this rank's flags (int32 [n]), lowered
//                                         after; on a timeout it raises `abort` with the reason, and
//                                         pads the given receive rows
//   epSignal(stream, flags[])             release store of 1 into each flag (int32 [1], any reachable device)
//   epCombine(stream, out, u, idx, weights, nRouted, nExperts, rowOf, partials[], abort?)
//   enablePeerAccess(devices[])   peer access between every pair of the CUDA devices of a group
// On the CPU every tensor is on the CPU. On CUDA the kernel runs on the stream's device and each
// tensor may live on any CUDA device that device reaches: its own, or one it enabled peer access
// to (the kernel then reads / writes that device's memory through the peer pointer).
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
  std::vector<cpu::EpSlot> slots(static_cast<size_t>(ranks));
  for (int64_t r = 0; r < ranks; ++r) {
    const std::string at = "[" + std::to_string(r) + "]";
    const std::string nc = "counts" + at, nx = "xs" + at, ni = "idxs" + at, nw = "ws" + at;
    a.expect(counts[r], nc.c_str(), {DType::I32}, reach(op, nc.c_str(), counts[r], d), {1});
    a.expect(xs[r], nx.c_str(), {DType::F32}, reach(op, nx.c_str(), xs[r], d), {capacity, h});
    a.expect(idxs[r], ni.c_str(), {DType::I32}, reach(op, ni.c_str(), idxs[r], d), {capacity, k});
    a.expect(ws[r], nw.c_str(), {DType::F32}, reach(op, nw.c_str(), ws[r], d), {capacity, k});
    slots[r] = cpu::EpSlot{counts[r].ptr<int32_t>(), xs[r].ptr<float>(), idxs[r].ptr<int32_t>(), ws[r].ptr<float>()};
  }
  const std::optional<Tensor> abort = abort_flag(a, 12, d);
  // Test hook: this dispatch fails as a rank's kernel would (raises the flag, sends nothing).
  const bool fail_for_test = a.present(13) && a.boolean(13, "failForTest");
  const std::vector<Tensor> ready = a.present(14) ? flag_list(a, 14, "ready", d) : std::vector<Tensor>{};
  if (!ready.empty() && static_cast<int64_t>(ready.size()) != ranks)
    fail(Code::E_ARGUMENT, "%s: ready needs one flag per rank; got %zu for %lld ranks", op, ready.size(), ll(ranks));
  std::vector<int32_t*> ready_ptrs;
  for (const Tensor& f : ready) ready_ptrs.push_back(f.ptr<int32_t>());
#ifdef LONGCAT_WITH_CUDA
  gpu::EpFlags dev_ready{};
  for (size_t r = 0; r < ready_ptrs.size() && !d.is_cpu(); ++r) dev_ready.f[r] = ready_ptrs[r];
  gpu::EpSlots dev{};
  for (int64_t r = 0; r < ranks && !d.is_cpu(); ++r) {
    dev.count[r] = slots[r].count;
    dev.x[r] = slots[r].x;
    dev.idx[r] = slots[r].idx;
    dev.w[r] = slots[r].w;
  }
#endif
  a.launch(
      d,
      [=] {
        hold(counts, xs, idxs, ws, ready);
        // Whatever happens, the receivers' flags go up after the slots were written (payload or
        // padding): a failed dispatch does not make its receivers wait out their time budget.
        auto release = [&] {
          for (int32_t* f : ready_ptrs) cpu::ep_signal(f);
        };
        if (raised(abort) || fail_for_test) {  // a failed step sends nothing
          cpu::ep_dispatch_nothing(t, k, h, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
          if (fail_for_test && abort) cpu::ep_raise(abort->ptr<int32_t>(), cpu::kEpAbortFailed);
          release();
          if (!fail_for_test) return;
          fail(Code::E_INTERNAL, "%s: this rank's dispatch failed (injected by a test)", op);
        }
        const cpu::EpRouteCheck r = cpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed,
                                                     n_experts, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
        if (r.bad_index >= 0 || r.full_rank >= 0) {
          cpu::ep_dispatch_nothing(t, k, h, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
          if (abort) cpu::ep_raise(abort->ptr<int32_t>(), cpu::kEpAbortFailed);
        }
        release();
        if (r.bad_index >= 0)
          fail(Code::E_ARGUMENT, "%s: idx[%lld, %lld] = %d is outside [0, nExperts)", op, ll(r.bad_index / k),
               ll(r.bad_index % k), idx.ptr<int32_t>()[r.bad_index]);
        if (r.full_rank >= 0)
          fail(Code::E_ARGUMENT, "%s: capacity exceeded: %lld tokens go to rank %lld, its slot holds %lld rows", op, ll(r.needed),
               ll(r.full_rank), ll(capacity));
      },
      LC_GPU(hold(counts, xs, idxs, ws);
             gpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, per_rank, ranks, capacity,
                              dev, row_of.ptr<int32_t>(), abort ? abort->ptr<int32_t>() : nullptr, fail_for_test, dev_ready,
                              stream)));
}

void EpWait(const OpArgs& a) {
  const char* op = a.op();
  Tensor flags = a.tensor(1, "flags");
  const Device d = stream_device(a.info(), flags.device());
  int64_t n;
  a.dims(flags, "flags", {DType::I32}, d, &n);
  if (!a.info()[2].IsArray()) fail(Code::E_ARGUMENT, "%s: 'peers' must be an array of rank numbers", op);
  const Napi::Array list = a.info()[2].As<Napi::Array>();
  if (static_cast<int64_t>(list.Length()) != n)
    fail(Code::E_ARGUMENT, "%s: %u peers for %lld flags (one peer rank per flag)", op, list.Length(), ll(n));
  expect_device_ranks(op, d, n);
  std::vector<int32_t> peers(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Napi::Value v = list.Get(static_cast<uint32_t>(i));
    if (!v.IsNumber() || v.As<Napi::Number>().Int64Value() < 0 || v.As<Napi::Number>().Int64Value() > 255)
      fail(Code::E_ARGUMENT, "%s: peers[%lld] is not a rank number in 0..255", op, ll(i));
    peers[i] = v.As<Napi::Number>().Int32Value();
  }
  const int64_t rank = a.integer(3, "rank"), kind = a.integer(4, "kind");
  if (rank < 0 || rank > 255) fail(Code::E_ARGUMENT, "%s: rank %lld is not in 0..255", op, ll(rank));
  if (kind != 1 && kind != 2) fail(Code::E_ARGUMENT, "%s: kind must be 1 (dispatch) or 2 (combine), got %lld", op, ll(kind));
  const std::optional<Tensor> abort = abort_flag(a, 5, d);
  if (!abort) fail(Code::E_ARGUMENT, "%s: needs the abort flag", op);
  const double ms = a.number(6, "timeoutMs");
  if (!(ms > 0 && ms <= 3.6e6)) fail(Code::E_ARGUMENT, "%s: timeoutMs must be in (0, 3600000], got %g", op, ms);
  const int64_t timeout_ns = static_cast<int64_t>(ms * 1e6);
  // The receive rows to pad when the wait fails (all or none).
  std::optional<Tensor> counts = a.opt_tensor(7, "counts"), idx = a.opt_tensor(8, "idx"), w = a.opt_tensor(9, "w");
  int64_t rows = 0, k = 0, per_rank = 0;
  if (counts || idx || w) {
    if (!(counts && idx && w)) fail(Code::E_ARGUMENT, "%s: counts, idx and w pad the receive rows together", op);
    per_rank = a.integer(10, "expertsPerRank");
    if (per_rank < 1) fail(Code::E_ARGUMENT, "%s: expertsPerRank must be >= 1", op);
    a.dims(*idx, "idx", {DType::I32}, d, &rows, &k);
    a.expect(*w, "w", {DType::F32}, d, {rows, k});
    a.expect(*counts, "counts", {DType::I32}, d, {-1});
  }
  const int32_t rk = static_cast<int32_t>(rank), kd = static_cast<int32_t>(kind);
#ifdef LONGCAT_WITH_CUDA
  gpu::EpPeers dev_peers{};
  for (int64_t i = 0; i < n && !d.is_cpu(); ++i) dev_peers.rank[i] = peers[i];
#endif
  a.launch(
      d,
      [=] {
        int32_t* ab = abort->ptr<int32_t>();
        const int64_t i = cpu::ep_wait(flags.ptr<int32_t>(), n, ab, timeout_ns);
        if (i < 0) return;
        cpu::ep_raise(ab, cpu::ep_wait_failure(kd, rk, peers[i]));  // a no-op when another reason came first
        if (counts)
          cpu::ep_pad_rows(rows, k, per_rank, idx->ptr<int32_t>(), w->ptr<float>(), counts->numel(), counts->ptr<int32_t>());
      },
      LC_GPU(gpu::ep_wait(flags.ptr<int32_t>(), n, dev_peers, rk, kd, abort->ptr<int32_t>(), timeout_ns, rows, k, per_rank,
                          opt_ptr<int32_t>(idx), opt_ptr<float>(w), counts ? counts->numel() : 0, opt_ptr<int32_t>(counts),
                          stream)));
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
  gpu::EpFlags dev{};
  for (size_t r = 0; r < ptrs.size() && !d.is_cpu(); ++r) dev.f[r] = ptrs[r];
#endif
  const int64_t n = static_cast<int64_t>(ptrs.size());
  a.launch(
      d,
      [=] {
        hold(flags);
        for (int32_t* f : ptrs) cpu::ep_signal(f);
      },
      LC_GPU(hold(flags); gpu::ep_signal(dev, n, stream)));
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
#ifdef LONGCAT_WITH_CUDA
  gpu::EpPartials dev{};
  for (int64_t r = 0; r < ranks && !d.is_cpu(); ++r) dev.rows[r] = parts[r];
#endif
  a.launch(
      d,
      [=] {
        hold(partials);
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
      LC_GPU(hold(partials); gpu::ep_combine(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed, n_experts,
                                             row_of.ptr<int32_t>(), ranks, capacity, dev, out.ptr<float>(),
                                             abort ? abort->ptr<int32_t>() : nullptr, stream)));
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

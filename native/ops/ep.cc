// The expert-parallel ops (kernels: cpu/ep.cc, cuda/ep.cu; slot protocol in cpu/ep.h):
//   epDispatch(stream, u, idx, weights, nRouted, nExperts, expertsPerRank, rowOf, counts[], xs[], idxs[], ws[])
//   epCombine(stream, out, u, idx, weights, nRouted, nExperts, rowOf, partials[])
// Every tensor on the stream's device: on CUDA the slots of the other ranks are not yet reached
// through peer pointers on other devices (ranks of one device only).
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
  const Device d = u.device();
  int64_t t, h, k;
  a.routed_tokens(u, idx, w, &t, &h, &k);
  const int64_t ranks = static_cast<int64_t>(counts.size());
  expect_split(op, n_routed, n_experts, per_rank, ranks);
  expect_device_ranks(op, d, ranks);
  a.expect(row_of, "rowOf", {DType::I32}, d, {t, ranks});
  if (xs.size() != counts.size() || idxs.size() != counts.size() || ws.size() != counts.size())
    fail(Code::E_ARGUMENT, "%s: counts, xs, idxs and ws need one slot per rank; got %zu, %zu, %zu, %zu", op, counts.size(),
         xs.size(), idxs.size(), ws.size());
  if (xs[0].ndim() != 2) expect_ndim(op, "xs[0]", xs[0], 2);
  const int64_t capacity = xs[0].dim(0);
  std::vector<cpu::EpSlot> slots(static_cast<size_t>(ranks));
  for (int64_t r = 0; r < ranks; ++r) {
    const std::string at = "[" + std::to_string(r) + "]";
    a.expect(counts[r], ("counts" + at).c_str(), {DType::I32}, d, {1});
    a.expect(xs[r], ("xs" + at).c_str(), {DType::F32}, d, {capacity, h});
    a.expect(idxs[r], ("idxs" + at).c_str(), {DType::I32}, d, {capacity, k});
    a.expect(ws[r], ("ws" + at).c_str(), {DType::F32}, d, {capacity, k});
    slots[r] = cpu::EpSlot{counts[r].ptr<int32_t>(), xs[r].ptr<float>(), idxs[r].ptr<int32_t>(), ws[r].ptr<float>()};
  }
#ifdef LONGCAT_WITH_CUDA
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
        hold(counts, xs, idxs, ws);
        const cpu::EpRouteCheck r = cpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed,
                                                     n_experts, per_rank, ranks, capacity, slots.data(), row_of.ptr<int32_t>());
        if (r.bad_index >= 0)
          fail(Code::E_ARGUMENT, "%s: idx[%lld, %lld] = %d is outside [0, nExperts)", op, ll(r.bad_index / k),
               ll(r.bad_index % k), idx.ptr<int32_t>()[r.bad_index]);
        if (r.full_rank >= 0)
          fail(Code::E_ARGUMENT, "%s: capacity exceeded: %lld tokens go to rank %lld, its slot holds %lld rows", op, ll(r.needed),
               ll(r.full_rank), ll(capacity));
      },
      LC_GPU(hold(counts, xs, idxs, ws); gpu::ep_dispatch(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), n_routed,
                                                          per_rank, ranks, capacity, dev, row_of.ptr<int32_t>(), stream)));
}

void EpCombine(const OpArgs& a) {
  const char* op = a.op();
  Tensor out = a.tensor(1, "out"), u = a.tensor(2, "u"), idx = a.tensor(3, "idx"), w = a.tensor(4, "weights");
  const int64_t n_routed = a.integer(5, "nRouted"), n_experts = a.integer(6, "nExperts");
  Tensor row_of = a.tensor(7, "rowOf");
  std::vector<Tensor> partials = a.tensor_list(8, "partials");
  const Device d = u.device();
  int64_t t, h, k;
  a.routed_tokens(u, idx, w, &t, &h, &k);
  a.expect(out, "out", {DType::F32}, d, {t, h});
  const int64_t ranks = static_cast<int64_t>(partials.size());
  if (ranks < 1) fail(Code::E_ARGUMENT, "%s: needs at least one rank", op);
  if (n_routed < 0 || n_experts < n_routed || n_experts > INT32_MAX)
    fail(Code::E_ARGUMENT, "%s: need 0 <= nRouted = %lld <= nExperts = %lld <= %d", op, ll(n_routed), ll(n_experts), INT32_MAX);
  expect_device_ranks(op, d, ranks);
  a.expect(row_of, "rowOf", {DType::I32}, d, {t, ranks});
  if (partials[0].ndim() != 2) expect_ndim(op, "partials[0]", partials[0], 2);
  const int64_t capacity = partials[0].dim(0);
  if (overlaps(out, u)) fail(Code::E_ARGUMENT, "%s: 'out' overlaps 'u'", op);
  std::vector<const float*> parts(static_cast<size_t>(ranks));
  for (int64_t r = 0; r < ranks; ++r) {
    const std::string name = "partials[" + std::to_string(r) + "]";
    a.expect(partials[r], name.c_str(), {DType::F32}, d, {capacity, h});
    if (overlaps(out, partials[r])) fail(Code::E_ARGUMENT, "%s: 'out' overlaps '%s'", op, name.c_str());
    parts[r] = partials[r].ptr<float>();
  }
#ifdef LONGCAT_WITH_CUDA
  gpu::EpPartials dev{};
  for (int64_t r = 0; r < ranks && !d.is_cpu(); ++r) dev.rows[r] = parts[r];
#endif
  a.launch(
      d,
      [=] {
        hold(partials);
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
                                             row_of.ptr<int32_t>(), ranks, capacity, dev, out.ptr<float>(), stream)));
}

}  // namespace

LC_REGISTER_OP("epDispatch", EpDispatch);
LC_REGISTER_OP("epCombine", EpCombine);

}  // namespace lc

// routerTopk(stream, idx, weights, nFfn, logits, bias, nRouted, scale)
// moe(stream, out, u, idx, weights, nRouted, gate[], up[], down[], gateScale[]?, upScale[]?, downScale[]?, nExperts?)
#include <cmath>
#include <limits>

#include "../binding.h"
#include "../cpu/moe.h"

namespace lc {

static Napi::Value RouterTopk(const Napi::CallbackInfo& info) {
  const char* op = "routerTopk";
  OpArgs a(info, op);
  Tensor idx = a.tensor(1, "idx"), w = a.tensor(2, "weights");
  std::optional<Tensor> nffn = a.opt_tensor(3, "nFfn");
  Tensor logits = a.tensor(4, "logits"), bias = a.tensor(5, "bias");
  int64_t n_routed = a.integer(6, "nRouted");
  double scale = a.number(7, "scale");
  Device d = logits.device();
  expect_dtype(op, "logits", logits, {DType::F32});
  expect_ndim(op, "logits", logits, 2);
  const int64_t t = logits.dim(0), e = logits.dim(1);
  expect_dtype(op, "bias", bias, {DType::F32});
  expect_shape(op, "bias", bias, {e});
  expect_dtype(op, "idx", idx, {DType::I32});
  expect_ndim(op, "idx", idx, 2);
  const int64_t k = idx.dim(1);
  expect_shape(op, "idx", idx, {t, k});
  expect_dtype(op, "weights", w, {DType::F32});
  expect_shape(op, "weights", w, {t, k});
  if (nffn) {
    expect_dtype(op, "nFfn", *nffn, {DType::I32});
    expect_shape(op, "nFfn", *nffn, {t});
    expect_device(op, "nFfn", *nffn, d);
  }
  expect_device(op, "idx", idx, d);
  expect_device(op, "weights", w, d);
  expect_device(op, "bias", bias, d);
  if (k < 1 || k > e)
    fail(Code::E_SHAPE, "routerTopk: k = %lld (idx.shape[1]) must be in 1..%lld (the number of experts, logits.shape[1])",
         static_cast<long long>(k), static_cast<long long>(e));
  if (e > std::numeric_limits<int32_t>::max()) fail(Code::E_SHAPE, "routerTopk: too many experts (%lld)", static_cast<long long>(e));
  if (n_routed < 0 || n_routed > e)
    fail(Code::E_ARGUMENT, "routerTopk: nRouted must be in 0..%lld (the number of experts), got %lld", static_cast<long long>(e),
         static_cast<long long>(n_routed));
  if (!std::isfinite(scale)) fail(Code::E_ARGUMENT, "routerTopk: scale must be finite, got %g", scale);
  Stream& s = a.stream(0, d);
  const float sc = static_cast<float>(scale);
  int32_t* nffnp = nffn ? nffn->ptr<int32_t>() : nullptr;
  std::optional<Tensor> keep = nffn;
  launch(op, s,
         [=] {
           cpu::router_topk(t, e, k, logits.ptr<float>(), bias.ptr<float>(), n_routed, sc, idx.ptr<int32_t>(), w.ptr<float>(), nffnp);
           (void)keep;
         },
         nullptr);
  return info.Env().Undefined();
}

namespace {

bool needs_scale(DType t) { return t == DType::FP8_E4M3 || t == DType::I8; }

// Checks one expert weight list (and its optional scale list) and describes it as WeightRefs.
std::vector<cpu::WeightRef> expert_refs(const char* op, const char* name, const std::vector<Tensor>& ws,
                                        const std::vector<Tensor>* scales, const char* scale_name, int64_t rows,
                                        int64_t cols, Device d) {
  std::vector<cpu::WeightRef> refs;
  refs.reserve(ws.size());
  for (size_t e = 0; e < ws.size(); ++e) {
    const Tensor& w = ws[e];
    const std::string wn = std::string(name) + "[" + std::to_string(e) + "]";
    const std::string sn = std::string(scale_name) + "[" + std::to_string(e) + "]";
    expect_dtype(op, wn.c_str(), w, {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8});
    expect_device(op, wn.c_str(), w, d);
    if (w.ndim() != 2 || w.dim(0) != rows || w.dim(1) != cols)
      fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected [%lld, %lld] (every expert's %s must have the same shape)", op, wn.c_str(),
           shape_str(w.shape).c_str(), static_cast<long long>(rows), static_cast<long long>(cols), name);
    cpu::WeightRef r;
    r.dtype = w.dtype;
    r.data = w.data();
    r.n = rows;
    r.k = cols;
    if (needs_scale(w.dtype)) {
      if (!scales)
        fail(Code::E_ARGUMENT, "%s: '%s' is %s and needs its scale, but '%s' is null", op, wn.c_str(), dtype_name(w.dtype), scale_name);
      const Tensor& sc = (*scales)[e];
      expect_dtype(op, sn.c_str(), sc, {DType::F32});
      expect_device(op, sn.c_str(), sc, d);
      if (w.dtype == DType::FP8_E4M3)
        expect_shape(op, (sn + " (weight_scale_inv)").c_str(), sc, {(rows + 127) / 128, (cols + 127) / 128});
      else
        expect_shape(op, sn.c_str(), sc, {rows});
      r.scale = sc.ptr<float>();
    } else if (scales) {
      fail(Code::E_ARGUMENT, "%s: '%s' is %s and takes no scale; pass null for '%s'", op, wn.c_str(), dtype_name(w.dtype), scale_name);
    }
    refs.push_back(r);
  }
  return refs;
}

}  // namespace

static Napi::Value Moe(const Napi::CallbackInfo& info) {
  const char* op = "moe";
  OpArgs a(info, op);
  Tensor out = a.tensor(1, "out"), u = a.tensor(2, "u"), idx = a.tensor(3, "idx"), w = a.tensor(4, "weights");
  const int64_t n_routed = a.integer(5, "nRouted");
  std::vector<Tensor> gate = a.tensor_list(6, "gate"), up = a.tensor_list(7, "up"), down = a.tensor_list(8, "down");
  std::optional<std::vector<Tensor>> gs, us, ds;
  if (a.present(9)) gs = a.tensor_list(9, "gateScale");
  if (a.present(10)) us = a.tensor_list(10, "upScale");
  if (a.present(11)) ds = a.tensor_list(11, "downScale");
  int64_t n_experts = std::numeric_limits<int64_t>::max();
  if (a.present(12)) n_experts = a.integer(12, "nExperts");

  Device d = u.device();
  expect_dtype(op, "u", u, {DType::F32});
  expect_ndim(op, "u", u, 2);
  const int64_t t = u.dim(0), h = u.dim(1);
  expect_dtype(op, "out", out, {DType::F32});
  expect_shape(op, "out", out, {t, h});
  expect_dtype(op, "idx", idx, {DType::I32});
  expect_ndim(op, "idx", idx, 2);
  const int64_t k = idx.dim(1);
  expect_shape(op, "idx", idx, {t, k});
  expect_dtype(op, "weights", w, {DType::F32});
  expect_shape(op, "weights", w, {t, k});
  expect_device(op, "out", out, d);
  if (out.storage == u.storage && out.offset < u.offset + u.nbytes() && u.offset < out.offset + out.nbytes())
    fail(Code::E_ARGUMENT, "moe: 'out' overlaps 'u' (the zero experts read u after out is written)");
  expect_device(op, "idx", idx, d);
  expect_device(op, "weights", w, d);
  if (k < 1) fail(Code::E_SHAPE, "moe: 'idx' has shape %s, k (its last dimension) must be >= 1", shape_str(idx.shape).c_str());
  if (n_routed < 0) fail(Code::E_ARGUMENT, "moe: nRouted must be >= 0, got %lld", static_cast<long long>(n_routed));
  if (a.present(12) && (n_experts < n_routed || n_experts > std::numeric_limits<int32_t>::max()))
    fail(Code::E_ARGUMENT, "moe: nExperts must be in nRouted (%lld)..2^31-1, got %lld", static_cast<long long>(n_routed),
         static_cast<long long>(n_experts));
  const struct {
    const char* name;
    const std::vector<Tensor>* list;
  } lists[] = {{"gate", &gate}, {"up", &up}, {"down", &down}, {"gateScale", gs ? &*gs : nullptr},
               {"upScale", us ? &*us : nullptr}, {"downScale", ds ? &*ds : nullptr}};
  for (const auto& l : lists)
    if (l.list && static_cast<int64_t>(l.list->size()) != n_routed)
      fail(Code::E_ARGUMENT, "moe: '%s' has %zu tensors, expected nRouted = %lld (one per routed expert)", l.name, l.list->size(),
           static_cast<long long>(n_routed));
  int64_t inter = 0;
  if (n_routed > 0) {
    if (gate[0].ndim() != 2 || gate[0].dim(1) != h)
      fail(Code::E_SHAPE, "moe: 'gate[0]' has shape %s, expected [I, %lld] (H = u.shape[1])", shape_str(gate[0].shape).c_str(),
           static_cast<long long>(h));
    inter = gate[0].dim(0);
    if (inter < 1) fail(Code::E_SHAPE, "moe: 'gate[0]' has shape %s, the intermediate size must be >= 1", shape_str(gate[0].shape).c_str());
  }
  std::vector<cpu::WeightRef> gr = expert_refs(op, "gate", gate, gs ? &*gs : nullptr, "gateScale", inter, h, d);
  std::vector<cpu::WeightRef> ur = expert_refs(op, "up", up, us ? &*us : nullptr, "upScale", inter, h, d);
  std::vector<cpu::WeightRef> dr = expert_refs(op, "down", down, ds ? &*ds : nullptr, "downScale", h, inter, d);

  Stream& s = a.stream(0, d);
  if (!d.is_cpu()) fail(Code::E_DEVICE, "moe has no CUDA kernel in this build");
  const size_t ws_bytes = cpu::moe_workspace_bytes(t, k, h, inter, n_routed);
  Tensor ws = empty_tensor(d, DType::I8, {static_cast<int64_t>(ws_bytes)});
  // The lambda owns every tensor it touches (weights and scales included) until it has run.
  std::vector<Tensor> keep;
  for (const auto& l : lists)
    if (l.list) keep.insert(keep.end(), l.list->begin(), l.list->end());
  const bool has_n_experts = a.present(12);
  launch(op, s,
         [=] {
           cpu::MoeExperts ex;
           ex.gate = gr.data();
           ex.up = ur.data();
           ex.down = dr.data();
           ex.n_routed = n_routed;
           ex.inter = inter;
           int64_t bad = cpu::moe(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), ex, n_experts, out.ptr<float>(),
                                  ws.data(), ws_bytes);
           (void)keep;
           if (bad == -2) fail(Code::E_INTERNAL, "moe: workspace too small");
           if (bad >= 0) {
             const int v = idx.ptr<int32_t>()[bad];
             if (has_n_experts)
               fail(Code::E_ARGUMENT, "moe: idx[%lld][%lld] = %d is out of range 0..%lld (nExperts = %lld)", static_cast<long long>(bad / k),
                    static_cast<long long>(bad % k), v, static_cast<long long>(n_experts - 1), static_cast<long long>(n_experts));
             fail(Code::E_ARGUMENT, "moe: idx[%lld][%lld] = %d is negative (expert ids are >= 0; ids >= nRouted = %lld are zero experts)",
                  static_cast<long long>(bad / k), static_cast<long long>(bad % k), v, static_cast<long long>(n_routed));
           }
         },
         nullptr);
  return info.Env().Undefined();
}

LC_REGISTER_OP("routerTopk", RouterTopk);
LC_REGISTER_OP("moe", Moe);

}  // namespace lc

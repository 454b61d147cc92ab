// The MoE ops (kernels: cpu/moe.cc, cuda/moe.cu, cuda/moe_router.cu):
//   routerTopk(stream, idx, weights, nFfn, logits, bias, nRouted, scale)
//   moeExperts(gate[], up[], down[], gateScale[]?, upScale[]?, downScale[]?, perm[]?) -> MoeExpertSet
//   moe(stream, out, u, idx, weights, nRouted, gate[] | MoeExpertSet, up[], down[], gateScale[]?, upScale[]?,
//       downScale[]?, nExperts?)
#include <cmath>
#include <limits>

#include "../binding.h"
#include "../cpu/moe.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#include "../../cuda/moe.h"
#include "../../cuda/moe_router.h"
#include "../cuda_api.h"
#endif

namespace lc {

cpu::WeightRef int4_weight_ref(const char* op, const char* name, const Tensor& w, const char* scale_name, const Tensor* scale,
                               int64_t k);  // ops/linear.cc

static void RouterTopk(const OpArgs& a) {
  Tensor idx = a.tensor(1, "idx"), w = a.tensor(2, "weights");
  std::optional<Tensor> nffn = a.opt_tensor(3, "nFfn");
  Tensor logits = a.tensor(4, "logits"), bias = a.tensor(5, "bias");
  const int64_t n_routed = a.integer(6, "nRouted");
  const double scale = a.number(7, "scale");
  const Device d = logits.device();
  int64_t t, e;
  a.dims(logits, "logits", {DType::F32}, d, &t, &e);
  a.expect(bias, "bias", {DType::F32}, d, {e});
  a.expect(idx, "idx", {DType::I32}, d, {t, -1});
  const int64_t k = idx.dim(1);
  a.expect(w, "weights", {DType::F32}, d, {t, k});
  a.expect(nffn, "nFfn", {DType::I32}, d, {t});
  if (k < 1 || k > e)
    fail(Code::E_SHAPE, "routerTopk: k = %lld (idx.shape[1]) must be in 1..%lld (the number of experts, logits.shape[1])",
         static_cast<long long>(k), static_cast<long long>(e));
  if (e > std::numeric_limits<int32_t>::max())
    fail(Code::E_SHAPE, "routerTopk: too many experts (%lld)", static_cast<long long>(e));
  if (n_routed < 0 || n_routed > e)
    fail(Code::E_ARGUMENT, "routerTopk: nRouted must be in 0..%lld (the number of experts), got %lld", static_cast<long long>(e),
         static_cast<long long>(n_routed));
  expect_finite(a.op(), "scale", scale);
  const float sc = static_cast<float>(scale);
  a.launch(
      d,
      [=] {
        cpu::router_topk(t, e, k, logits.ptr<float>(), bias.ptr<float>(), n_routed, sc, idx.ptr<int32_t>(), w.ptr<float>(),
                         opt_ptr<int32_t>(nffn));
      },
      LC_GPU(gpu::router_topk(t, e, k, logits.ptr<float>(), bias.ptr<float>(), n_routed, sc, idx.ptr<int32_t>(), w.ptr<float>(),
                              opt_ptr<int32_t>(nffn), stream)));
}

namespace {

bool needs_scale(DType t) { return t == DType::FP8_E4M3 || t == DType::I8; }

// A JS array of Tensors, as pointers to the wrapped tensors (alive for the duration of the call).
// Unlike OpArgs::tensor_list nothing is copied and error text is only built on failure: with 512
// experts x 3 lists this runs ~1,500 times per MoE layer call.
std::vector<const Tensor*> list_arg(const Napi::CallbackInfo& info, size_t i, const char* op, const char* name) {
  if (i >= info.Length() || !info[i].IsArray()) fail(Code::E_ARGUMENT, "%s: argument '%s' must be an array of Tensors", op, name);
  Napi::Array arr = info[i].As<Napi::Array>();
  const uint32_t n = arr.Length();
  std::vector<const Tensor*> r(n);
  for (uint32_t j = 0; j < n; ++j) {
    Napi::Value v = arr.Get(j);
    if (!TensorWrap::IsTensor(info.Env(), v)) fail(Code::E_ARGUMENT, "%s argument '%s[%u]' is not a Tensor", op, name, j);
    const TensorWrap* w = TensorWrap::Unwrap(v.As<Napi::Object>());
    try {
      r[j] = &w->get(name);
    } catch (const Error&) {
      fail(Code::E_DISPOSED, "%s argument '%s[%u]': tensor was disposed", op, name, j);
    }
  }
  return r;
}

// The routed experts of one MoE layer, checked once: what a queued moe call reads (WeightRefs)
// and owns (every storage they point into). Built per call from Tensor arrays, or once by
// moeExperts() and reused (with 512 experts that saves ~1,500 tensor unwraps per call).
struct ExpertSet {
  int64_t n_routed = 0, h = 0, inter = 0;
  Device device;
  std::vector<cpu::WeightRef> gate, up, down;
  std::vector<const int32_t*> perm;  // empty, or [n_routed]: act-order gate/up input permutations (null: none)
  std::vector<std::shared_ptr<Storage>> keep;
  std::shared_ptr<Storage> dev_table;  // CUDA: gpu::MoeWeight [3 * n_routed] (gate, up, down), uploaded once
};

struct ExpertSetHandle {
  std::shared_ptr<const ExpertSet> set;  // reset by dispose()
};

const napi_type_tag kExpertSetTag = {0x6c6f6e6763617466ULL, 0x6d6f652d73657431ULL};

// The handle inside a MoeExpertSet object, or null when `v` is not one.
ExpertSetHandle* expert_set_of(Napi::Value v) { return handle_in<ExpertSetHandle>(v, kExpertSetTag); }

// Checks one expert weight list (and its optional scale list) and appends WeightRefs to `refs`.
void expert_refs(const char* op, const char* name, const std::vector<const Tensor*>& ws, const std::vector<const Tensor*>* scales,
                 const char* scale_name, int64_t rows, int64_t cols, Device d, std::vector<cpu::WeightRef>& refs,
                 std::vector<std::shared_ptr<Storage>>& keep) {
  refs.reserve(ws.size());
  for (size_t e = 0; e < ws.size(); ++e) {
    const Tensor& w = *ws[e];
    auto wn = [&] { return std::string(name) + "[" + std::to_string(e) + "]"; };
    auto sn = [&] { return std::string(scale_name) + "[" + std::to_string(e) + "]"; };
    if (w.dtype != DType::F32 && w.dtype != DType::BF16 && !needs_scale(w.dtype))
      expect_dtype(op, wn().c_str(), w, {DType::F32, DType::BF16, DType::FP8_E4M3, DType::I8});
    if (w.device() != d) expect_device(op, wn().c_str(), w, d);
    if (w.dtype == DType::I8 && w.ndim() == 3) {  // int4 (cpu/linear.h's format)
      if (w.dim(0) != rows)
        fail(Code::E_SHAPE, "%s: int4 '%s' has shape %s, expected %lld rows (every expert's %s must have the same shape)", op,
             wn().c_str(), shape_str(w.shape).c_str(), ll(rows), name);
      const Tensor* sc = scales ? (*scales)[e] : nullptr;
      refs.push_back(int4_weight_ref(op, wn().c_str(), w, sn().c_str(), sc, cols));
      keep.push_back(w.storage);
      if (sc) keep.push_back(sc->storage);
      continue;
    }
    if (w.ndim() != 2 || w.dim(0) != rows || w.dim(1) != cols)
      fail(Code::E_SHAPE, "%s: '%s' has shape %s, expected [%lld, %lld] (every expert's %s must have the same shape)", op,
           wn().c_str(), shape_str(w.shape).c_str(), static_cast<long long>(rows), static_cast<long long>(cols), name);
    cpu::WeightRef r;
    r.dtype = w.dtype;
    r.data = w.data();
    r.n = rows;
    r.k = cols;
    keep.push_back(w.storage);
    if (needs_scale(w.dtype)) {
      if (!scales)
        fail(Code::E_ARGUMENT, "%s: '%s' is %s and needs its scale, but '%s' is null", op, wn().c_str(), dtype_name(w.dtype),
             scale_name);
      const Tensor& sc = *(*scales)[e];
      if (sc.dtype != DType::F32) expect_dtype(op, sn().c_str(), sc, {DType::F32});
      if (sc.device() != d) expect_device(op, sn().c_str(), sc, d);
      if (w.dtype == DType::FP8_E4M3) {
        const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
        if (sc.ndim() != 2 || sc.dim(0) != br || sc.dim(1) != bc)
          expect_shape(op, (sn() + " (weight_scale_inv)").c_str(), sc, {br, bc});
      } else if (sc.ndim() != 1 || sc.dim(0) != rows) {
        expect_shape(op, sn().c_str(), sc, {rows});
      }
      r.scale = sc.ptr<float>();
      keep.push_back(sc.storage);
    } else if (scales) {
      fail(Code::E_ARGUMENT, "%s: '%s' is %s and takes no scale; pass null for '%s'", op, wn().c_str(), dtype_name(w.dtype),
           scale_name);
    }
    refs.push_back(r);
  }
}

// Reads the optional perm list (moeExperts' 7th argument): per expert null or int32 [h] on the set's
// device, every value in [0, h) (checked here, on a host copy for a device tensor).
void read_perms(const Napi::CallbackInfo& info, size_t i, const char* op, ExpertSet& set) {
  if (i >= info.Length() || info[i].IsNull() || info[i].IsUndefined()) return;
  if (!info[i].IsArray()) fail(Code::E_ARGUMENT, "%s: argument 'perm' must be an array of Tensors or nulls", op);
  Napi::Array arr = info[i].As<Napi::Array>();
  if (static_cast<int64_t>(arr.Length()) != set.n_routed)
    fail(Code::E_ARGUMENT, "%s: 'perm' has %u entries, expected nRouted = %lld (one per routed expert)", op, arr.Length(),
         ll(set.n_routed));
  set.perm.assign(static_cast<size_t>(set.n_routed), nullptr);
  std::vector<int32_t> host;
  for (uint32_t e = 0; e < arr.Length(); ++e) {
    Napi::Value v = arr.Get(e);
    if (v.IsNull() || v.IsUndefined()) continue;
    const std::string name = "perm[" + std::to_string(e) + "]";
    if (!TensorWrap::IsTensor(info.Env(), v)) fail(Code::E_ARGUMENT, "%s: '%s' is not a Tensor or null", op, name.c_str());
    const Tensor* p = nullptr;
    try {
      p = &TensorWrap::Unwrap(v.As<Napi::Object>())->get(name.c_str());
    } catch (const Error&) {
      fail(Code::E_DISPOSED, "%s: '%s': tensor was disposed", op, name.c_str());
    }
    if (p->dtype != DType::I32) expect_dtype(op, name.c_str(), *p, {DType::I32});
    if (p->device() != set.device) expect_device(op, name.c_str(), *p, set.device);
    if (p->ndim() != 1 || p->dim(0) != set.h) expect_shape(op, name.c_str(), *p, {set.h});
    const int32_t* vals = p->ptr<int32_t>();
#ifdef LONGCAT_WITH_CUDA
    if (!set.device.is_cpu()) {
      host.resize(static_cast<size_t>(set.h));
      cuda::memcpy_d2h(set.device.index, host.data(), vals, sizeof(int32_t) * host.size());
      vals = host.data();
    }
#endif
    for (int64_t c = 0; c < set.h; ++c)
      if (vals[c] < 0 || vals[c] >= set.h)
        fail(Code::E_ARGUMENT, "%s: %s[%lld] = %d is out of range for H = %lld columns", op, name.c_str(), ll(c), vals[c],
             ll(set.h));
    set.perm[e] = p->ptr<int32_t>();
    set.keep.push_back(p->storage);
  }
}

// Reads gate/up/down (+ scale) lists at info[i0 .. i0+5] (and with `perms`, moeExperts' perm list at
// i0+6) into an ExpertSet. `h` < 0: take H from gate[0]; else gate[0] must have H columns.
// `n_routed` < 0: any count (the gate list's length).
std::shared_ptr<ExpertSet> read_experts(const Napi::CallbackInfo& info, size_t i0, const char* op, int64_t n_routed, int64_t h,
                                        Device d, bool perms = false) {
  auto present = [&](size_t i) { return i < info.Length() && !info[i].IsNull() && !info[i].IsUndefined(); };
  std::vector<const Tensor*> gate = list_arg(info, i0, op, "gate"), up = list_arg(info, i0 + 1, op, "up"),
                             down = list_arg(info, i0 + 2, op, "down");
  std::optional<std::vector<const Tensor*>> gs, us, ds;
  if (present(i0 + 3)) gs = list_arg(info, i0 + 3, op, "gateScale");
  if (present(i0 + 4)) us = list_arg(info, i0 + 4, op, "upScale");
  if (present(i0 + 5)) ds = list_arg(info, i0 + 5, op, "downScale");
  if (n_routed < 0) n_routed = static_cast<int64_t>(gate.size());
  const struct {
    const char* name;
    const std::vector<const Tensor*>* list;
  } lists[] = {{"gate", &gate},
               {"up", &up},
               {"down", &down},
               {"gateScale", gs ? &*gs : nullptr},
               {"upScale", us ? &*us : nullptr},
               {"downScale", ds ? &*ds : nullptr}};
  for (const auto& l : lists)
    if (l.list && static_cast<int64_t>(l.list->size()) != n_routed)
      fail(Code::E_ARGUMENT, "%s: '%s' has %zu tensors, expected nRouted = %lld (one per routed expert)", op, l.name,
           l.list->size(), static_cast<long long>(n_routed));
  auto set = std::make_shared<ExpertSet>();
  set->n_routed = n_routed;
  set->device = d;
  if (n_routed > 0) {
    const Tensor& g0 = *gate[0];
    if (h < 0) {
      if (g0.ndim() != 2 && !(g0.dtype == DType::I8 && g0.ndim() == 3))
        fail(Code::E_SHAPE, "%s: 'gate[0]' has shape %s, expected [I, H]", op, shape_str(g0.shape).c_str());
      // An int4 gate holds whole groups of columns; H is then down[0]'s row count.
      h = g0.dtype == DType::I8 && g0.ndim() == 3 && !down.empty() && down[0]->ndim() >= 1 ? down[0]->dim(0) : g0.dim(1);
      set->device = d = g0.device();
    }
    if (!(g0.dtype == DType::I8 && g0.ndim() == 3) && (g0.ndim() != 2 || g0.dim(1) != h))  // int4: expert_refs checks
      fail(Code::E_SHAPE, "%s: 'gate[0]' has shape %s, expected [I, %lld] (H = u.shape[1])", op, shape_str(g0.shape).c_str(),
           static_cast<long long>(h));
    set->inter = g0.dim(0);
    if (set->inter < 1 || h < 1)
      fail(Code::E_SHAPE, "%s: 'gate[0]' has shape %s, H and I must be >= 1", op, shape_str(g0.shape).c_str());
  }
  set->h = h;
  set->keep.reserve(6 * static_cast<size_t>(n_routed));
  expert_refs(op, "gate", gate, gs ? &*gs : nullptr, "gateScale", set->inter, h, d, set->gate, set->keep);
  expert_refs(op, "up", up, us ? &*us : nullptr, "upScale", set->inter, h, d, set->up, set->keep);
  expert_refs(op, "down", down, ds ? &*ds : nullptr, "downScale", h, set->inter, d, set->down, set->keep);
  if (perms) read_perms(info, i0 + 6, op, *set);
#ifdef LONGCAT_WITH_CUDA
  if (!set->device.is_cpu() && n_routed > 0) {  // the device-side pointer table the moe kernels read (synchronous copy)
    std::vector<gpu::MoeWeight> tab(3 * static_cast<size_t>(n_routed));
    for (int64_t e = 0; e < n_routed; ++e) {
      const cpu::WeightRef* src[3] = {&set->gate[e], &set->up[e], &set->down[e]};
      for (int64_t m = 0; m < 3; ++m) {
        const cpu::WeightRef& r = *src[m];
        tab[m * n_routed + e] = gpu::MoeWeight{r.data, r.scale, r.dtype, r.group_scale, r.group, r.group_scale_f16, r.group_zero};
      }
      if (!set->perm.empty()) tab[e].perm = set->perm[e];  // on the gate entry
    }
    const size_t bytes = sizeof(gpu::MoeWeight) * tab.size();
    set->dev_table = device_pool(set->device).alloc(bytes);
    cuda::device_synchronize(set->device.index);  // the pool block may still be read by queued kernels
    cuda::memcpy_h2d(set->device.index, set->dev_table->ptr, tab.data(), bytes);
  }
#endif
  return set;
}

Napi::Value ExpertSetDispose(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (ExpertSetHandle* hd = expert_set_of(info.This())) hd->set.reset();
    return info.Env().Undefined();
  });
}

}  // namespace

// moeExperts(gate[], up[], down[], gateScale[]?, upScale[]?, downScale[]?) -> MoeExpertSet
static Napi::Value MoeExperts(const Napi::CallbackInfo& info) {
  const char* op = "moeExperts";
  std::shared_ptr<ExpertSet> set = read_experts(info, 0, op, -1, -1, Device{}, true);
  Napi::Env env = info.Env();
  Napi::Object obj = handle_object(env, new ExpertSetHandle{set}, kExpertSetTag);
  obj.DefineProperties({
      Napi::PropertyDescriptor::Value("nRouted", Napi::Number::New(env, static_cast<double>(set->n_routed)), napi_enumerable),
      Napi::PropertyDescriptor::Value("hidden", Napi::Number::New(env, static_cast<double>(set->h)), napi_enumerable),
      Napi::PropertyDescriptor::Value("intermediate", Napi::Number::New(env, static_cast<double>(set->inter)), napi_enumerable),
      Napi::PropertyDescriptor::Value("device", Napi::String::New(env, set->device.str()), napi_enumerable),
      Napi::PropertyDescriptor::Function(env, obj, "dispose", ExpertSetDispose, napi_default),
  });
  return obj;
}

// The storages a MoeExpertSet holds (ops/populate.cc faults the mapped ones in); false when `v` is
// not one (a disposed set holds none).
bool expert_set_storages(Napi::Value v, std::vector<std::shared_ptr<Storage>>* out) {
  const ExpertSetHandle* h = expert_set_of(v);
  if (!h) return false;
  if (h->set) out->insert(out->end(), h->set->keep.begin(), h->set->keep.end());
  return true;
}

static void Moe(const OpArgs& a) {
  Tensor out = a.tensor(1, "out"), u = a.tensor(2, "u"), idx = a.tensor(3, "idx"), w = a.tensor(4, "weights");
  const int64_t n_routed = a.integer(5, "nRouted");
  const bool has_n_experts = a.present(12);
  int64_t n_experts = std::numeric_limits<int64_t>::max();
  if (has_n_experts) n_experts = a.integer(12, "nExperts");

  const Device d = u.device();
  int64_t t, h, k;
  a.routed_tokens(u, idx, w, &t, &h, &k);
  a.expect(out, "out", {DType::F32}, d, {t, h});
  if (overlaps(out, u)) fail(Code::E_ARGUMENT, "moe: 'out' overlaps 'u' (the zero experts read u after out is written)");
  if (k < 1) fail(Code::E_SHAPE, "moe: 'idx' has shape %s, k (its last dimension) must be >= 1", shape_str(idx.shape).c_str());
  if (t * k > std::numeric_limits<int32_t>::max())
    fail(Code::E_SHAPE, "moe: 'idx' has shape %s, T * k must be < 2^31", shape_str(idx.shape).c_str());
  if (n_routed < 0) fail(Code::E_ARGUMENT, "moe: nRouted must be >= 0, got %lld", static_cast<long long>(n_routed));
  if (has_n_experts && (n_experts < n_routed || n_experts > std::numeric_limits<int32_t>::max()))
    fail(Code::E_ARGUMENT, "moe: nExperts must be in nRouted (%lld)..2^31-1, got %lld", static_cast<long long>(n_routed),
         static_cast<long long>(n_experts));

  std::shared_ptr<const ExpertSet> set;
  if (ExpertSetHandle* hd = a.present(6) ? expert_set_of(a.info()[6]) : nullptr) {
    for (size_t i = 7; i <= 11; ++i)
      if (a.present(i))
        fail(Code::E_ARGUMENT, "moe: with a MoeExpertSet in place of 'gate', arguments 7..11 (up .. downScale) must be null");
    if (!hd->set) fail(Code::E_DISPOSED, "moe: the MoeExpertSet was disposed");
    set = hd->set;
    if (set->n_routed != n_routed)
      fail(Code::E_ARGUMENT, "moe: the MoeExpertSet holds %lld experts, expected nRouted = %lld",
           static_cast<long long>(set->n_routed), static_cast<long long>(n_routed));
    if (n_routed > 0 && set->h != h)
      fail(Code::E_SHAPE, "moe: the MoeExpertSet's experts take H = %lld, but u has shape %s", static_cast<long long>(set->h),
           shape_str(u.shape).c_str());
    if (n_routed > 0 && set->device != d)
      fail(Code::E_DEVICE, "moe: the MoeExpertSet is on %s but u is on %s", set->device.str().c_str(), d.str().c_str());
  } else {
    set = read_experts(a.info(), 6, a.op(), n_routed, h, d);
  }

  const int64_t inter = set->inter;
  // fp8 experts on the e4m3 tensor cores (an sm_89+ kernel image) at precision 'fp8' when every expert is fp8
  bool fp8 = !d.is_cpu() && n_routed > 0 && cpu::matmul_precision() == cpu::MatmulPrecision::FP8;
  for (int64_t e = 0; fp8 && e < n_routed; ++e)
    fp8 = set->gate[e].dtype == DType::FP8_E4M3 && set->up[e].dtype == DType::FP8_E4M3 && set->down[e].dtype == DType::FP8_E4M3;
  fp8 = fp8 && LC_IF_CUDA(gpu::kernel_image(d.index).fp8_mma(), false);
  const bool permuted = !set->perm.empty();
  fp8 = fp8 && !permuted;  // (act-order experts are int4)
  const size_t ws_bytes = d.is_cpu() ? cpu::moe_workspace_bytes(t, k, h, inter, n_routed)
                                     : LC_IF_CUDA(gpu::moe_workspace_bytes(t, k, h, inter, n_routed, fp8, permuted), 0);
  Tensor ws = empty_tensor(d, DType::I8, {static_cast<int64_t>(ws_bytes)});
  // The lambda owns every tensor it touches (out, u, idx, w, ws by value; weights and scales
  // through the expert set) until it has run.
  a.launch(
      d,
      [=] {
        cpu::MoeExperts ex;
        ex.gate = set->gate.data();
        ex.up = set->up.data();
        ex.down = set->down.data();
        ex.perm = permuted ? set->perm.data() : nullptr;
        ex.n_routed = n_routed;
        ex.inter = inter;
        int64_t bad = cpu::moe(t, k, h, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), ex, n_experts, out.ptr<float>(),
                               ws.data(), ws_bytes);
        if (bad == -2) fail(Code::E_INTERNAL, "moe: workspace too small");
        if (bad >= 0) {
          const int v = idx.ptr<int32_t>()[bad];
          if (has_n_experts)
            fail(Code::E_ARGUMENT, "moe: idx[%lld][%lld] = %d is out of range 0..%lld (nExperts = %lld)",
                 static_cast<long long>(bad / k), static_cast<long long>(bad % k), v, static_cast<long long>(n_experts - 1),
                 static_cast<long long>(n_experts));
          fail(Code::E_ARGUMENT,
               "moe: idx[%lld][%lld] = %d is negative (expert ids are >= 0; ids >= nRouted = %lld are zero experts)",
               static_cast<long long>(bad / k), static_cast<long long>(bad % k), v, static_cast<long long>(n_routed));
        }
      },
      // a bad idx makes the call a no-op on the GPU (out untouched, no error: see cuda/moe.h)
      LC_GPU(const auto* table = set->dev_table ? static_cast<const gpu::MoeWeight*>(set->dev_table->ptr) : nullptr;
             gpu::moe(t, k, h, inter, u.ptr<float>(), idx.ptr<int32_t>(), w.ptr<float>(), table, n_routed, n_experts,
                      out.ptr<float>(), fp8, permuted, ws.data(), ws_bytes, stream)));
}

LC_REGISTER_OP("moeExperts", MoeExperts);
LC_REGISTER_OP("routerTopk", RouterTopk);
LC_REGISTER_OP("moe", Moe);

}  // namespace lc

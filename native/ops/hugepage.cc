// hugePageCopy(tensors[]) -> { tensors: Tensor[], bytes, hugeBytes }
//   Copies CPU tensors into one new anonymous mapping advised for transparent huge pages
//   (cpu/hugepage.h), packed 64-byte aligned, filled in parallel by the pool's threads; returns the
//   copies (same dtypes and shapes, in order), the mapping's size, and the bytes of it the kernel
//   backs with huge pages (AnonHugePages; 0 where THP is off). The mapping lives while any copy does.
//   For weights a CPU decode streams every step (lib/model's `hugePages` load option).
#include <cstring>

#include "../binding.h"
#include "../cpu/hugepage.h"

namespace lc {

static Napi::Value HugePageCopy(const Napi::CallbackInfo& info) {
  const char* op = "hugePageCopy";
  OpArgs a(info, op);
  std::vector<Tensor> ts = a.tensor_list(0, "tensors");
  std::vector<const void*> src;
  std::vector<size_t> sizes;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!ts[i].device().is_cpu())
      fail(Code::E_DEVICE, "%s: tensors[%zu] is on %s, only CPU tensors can be copied", op, i, ts[i].device().str().c_str());
    src.push_back(ts[i].data());
    sizes.push_back(static_cast<size_t>(ts[i].nbytes()));
  }
  Napi::Object r = Napi::Object::New(info.Env());
  Napi::Array out = Napi::Array::New(info.Env(), ts.size());
  if (ts.empty()) {
    r.Set("tensors", out);
    r.Set("bytes", 0);
    r.Set("hugeBytes", 0);
    return r;
  }
  device_synchronize(Device{});  // the sources' producers (if any) have finished
  std::vector<size_t> off;
  std::shared_ptr<cpu::HugePageBlock> block = cpu::hugepage_copy(src, sizes, &off);
  if (!block) fail(Code::E_OOM, "%s: could not map %zu bytes of anonymous memory", op, off.back() + sizes.back());
  for (size_t i = 0; i < ts.size(); ++i) {
    Tensor t;
    t.dtype = ts[i].dtype;
    t.shape = ts[i].shape;
    t.storage = external_storage(Device{}, block->data() + off[i], sizes[i] ? sizes[i] : 1, [block]() {});
    out.Set(static_cast<uint32_t>(i), TensorWrap::Wrap(info.Env(), t));
  }
  r.Set("tensors", out);
  r.Set("bytes", static_cast<double>(block->size()));
  r.Set("hugeBytes", static_cast<double>(block->huge_bytes()));
  return r;
}

LC_REGISTER_OP("hugePageCopy", HugePageCopy);

}  // namespace lc

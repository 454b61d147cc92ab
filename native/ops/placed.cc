// Tensors copied into memory placed on a CPU pool's NUMA node (native/placed.h), and the node query.
//
//   placeTensors(stream, tensors, node, hugepage, releaseSource) -> {tensors, bytes, hugepage, hugeBytes,
//       bound, bindError, released, releaseHow}
// copies the CPU tensors into one new allocation (each at a 256-byte aligned offset), the copy run
// as a job of the CPU `stream`, so on its pool's threads (first touch: their node); node >= 0 asks
// mbind(MPOL_BIND) to it first (null: first touch only; a refusal is kept in bindError, not thrown);
// releaseSource gives back the source pages of tensors over a file mapping (release_mapped_pages,
// evicted from the page cache where no one else maps them): their bytes in `released`. The new tensors are views of the allocation, freed with the last one.
//
//   placeTensorsAsync(tensors, hugepage, releaseSource) -> Promise<the same>: no node, the copy run
// on a libuv worker over the global pool (off the JS thread; loadModel's hugePages on one device);
// releaseSource unmaps the sources' pages only (MADV_DONTNEED): the page cache keeps them for the next load.
// A source page the file no longer has rejects with E_CHECKPOINT (placed_copy), nothing given back.
//
//   pageNodes(tensor, maxPages) -> {nodes, error}: the NUMA node of each of the tensor's first
// maxPages pages (move_pages(2) query; < 0: -errno for that page), or nodes [] and the error.
#include "../binding.h"
#include "../placed.h"

namespace lc {
namespace {

constexpr size_t kAlign = 256;

// The sources laid out in one allocation (each at a kAlign-aligned offset) and what came of the copy.
struct Placement {
  std::vector<Tensor> src;
  std::vector<PlacedRange> ranges;
  size_t total = 0;
  std::shared_ptr<PlacedMemory> mem;
  int64_t huge_bytes = 0;
  double released = 0;
  std::string release_how;
};

Placement layout(const OpArgs& a, int arg) {
  Placement p;
  p.src = a.tensor_list(arg, "tensors");
  for (const Tensor& t : p.src) {
    expect_device(a.op(), "tensors[i]", t, Device{});
    p.total = (p.total + kAlign - 1) / kAlign * kAlign;
    p.ranges.push_back({t.data(), p.total, static_cast<size_t>(t.nbytes()), t.storage && t.storage->file_mapped});
    p.total += static_cast<size_t>(t.nbytes());
  }
  return p;
}

// On the thread whose pool copies: the copy, then the sources' mapped pages given back (releaseSource)
// and the huge pages counted. A failed copy (E_CHECKPOINT, E_OOM) throws before anything is given back.
void copy_and_release(Placement& p, bool release, bool evict) {
  if (!p.mem) return;
  placed_copy(p.mem->data(), p.mem->size(), p.ranges);
  p.huge_bytes = p.mem->huge_bytes();
  if (!release) return;
  for (size_t i = 0; i < p.src.size(); ++i)
    if (p.ranges[i].file_mapped && p.ranges[i].bytes) {
      std::string h;
      p.released += static_cast<double>(release_mapped_pages(p.src[i].data(), p.ranges[i].bytes, evict, &h));
      if (p.release_how.empty() || h.rfind("madvise", 0) == 0) p.release_how = h;  // an error wins
    }
}

// On the JS thread, once copied: the copies as tensors (views of the allocation) and the report.
Napi::Object placed_result(Napi::Env env, const Placement& p) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Array tensors = Napi::Array::New(env, p.src.size());
  const std::shared_ptr<PlacedMemory> mem = p.mem;
  for (size_t i = 0; i < p.src.size(); ++i) {
    Tensor t;
    t.dtype = p.src[i].dtype;
    t.shape = p.src[i].shape;
    if (mem)
      t.storage = external_storage(Device{}, mem->data() + p.ranges[i].dst_offset, p.ranges[i].bytes, [mem]() {});
    else
      t.storage = external_storage(Device{}, nullptr, 0, [] {});
    tensors.Set(static_cast<uint32_t>(i), TensorWrap::Wrap(env, t));
  }
  out.Set("tensors", tensors);
  out.Set("bytes", static_cast<double>(p.total));
  out.Set("hugepage", mem && mem->hugepage());
  out.Set("hugeBytes", static_cast<double>(p.huge_bytes));
  out.Set("bound", mem && mem->bound());
  if (mem && !mem->bind_error().empty())
    out.Set("bindError", mem->bind_error());
  else
    out.Set("bindError", env.Null());
  out.Set("released", p.released);
  out.Set("releaseHow", p.release_how.empty() ? env.Null() : Napi::Value(Napi::String::New(env, p.release_how)));
  return out;
}

Napi::Value PlaceTensors(const Napi::CallbackInfo& info) {
  OpArgs a(info, "placeTensors");
  if (!a.present(0)) fail(Code::E_ARGUMENT, "placeTensors: 'stream' must be a CPU stream (its pool copies)");
  Stream& s = a.stream(0, Device{});
  if (s.capturing()) fail(Code::E_ARGUMENT, "placeTensors: the stream is capturing a graph");
  auto p = std::make_shared<Placement>(layout(a, 1));
  int node = -1;
  if (a.present(2)) {
    int64_t n = a.integer(2, "node");
    if (n < 0 || n > 1023)
      fail(Code::E_ARGUMENT, "placeTensors: 'node' must be null or in 0..1023, got %lld", static_cast<long long>(n));
    node = static_cast<int>(n);
  }
  const bool hugepage = a.boolean(3, "hugepage"), release = a.boolean(4, "releaseSource");
  if (p->total > 0) {
    p->mem = PlacedMemory::allocate(p->total, {node, hugepage});
    // the stream's worker runs the copy under its pool (and is bound to its CPUs, like the pool's workers)
    s.enqueue([p, release] { copy_and_release(*p, release, true); }, "placed_copy");
    s.synchronize();
  }
  return placed_result(info.Env(), *p);
}

// placeTensorsAsync: the copy on a libuv worker, over the global pool (as populateMapped faults in).
class PlaceWorker : public PromiseWorker {
 public:
  PlaceWorker(Napi::Env env, Placement p, bool release)
      : PromiseWorker(env, "longcat:placeTensorsAsync"), p_(std::move(p)), release_(release) {}

 private:
  void run() override { copy_and_release(p_, release_, false); }  // the page cache kept for the next load
  Napi::Value value(Napi::Env env) override {
    Napi::Value r = placed_result(env, p_);
    p_ = Placement();
    return r;
  }
  Placement p_;  // its sources' storages stay alive (and mapped) until the copy is done
  bool release_;
};

Napi::Value PlaceTensorsAsync(const Napi::CallbackInfo& info) {
  OpArgs a(info, "placeTensorsAsync");
  Placement p = layout(a, 0);
  const bool hugepage = a.boolean(1, "hugepage"), release = a.boolean(2, "releaseSource");
  if (p.total > 0) p.mem = PlacedMemory::allocate(p.total, {-1, hugepage});
  return (new PlaceWorker(info.Env(), std::move(p), release))->queue();
}

Napi::Value PageNodes(const Napi::CallbackInfo& info) {
  OpArgs a(info, "pageNodes");
  Tensor t = a.tensor(0, "tensor");
  expect_device(a.op(), "tensor", t, Device{});
  int64_t max = a.integer(1, "maxPages");
  if (max < 0) fail(Code::E_ARGUMENT, "pageNodes: 'maxPages' must be >= 0, got %lld", static_cast<long long>(max));
  std::string error;
  std::vector<int> nodes = page_nodes(t.data(), static_cast<size_t>(t.nbytes()), static_cast<size_t>(max), &error);
  Napi::Object out = Napi::Object::New(info.Env());
  Napi::Array arr = Napi::Array::New(info.Env(), nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) arr.Set(static_cast<uint32_t>(i), nodes[i]);
  out.Set("nodes", arr);
  out.Set("error", error.empty() ? info.Env().Null() : Napi::Value(Napi::String::New(info.Env(), error)));
  return out;
}

}  // namespace

LC_REGISTER_OP("placeTensors", PlaceTensors);
LC_REGISTER_OP("placeTensorsAsync", PlaceTensorsAsync);
LC_REGISTER_OP("pageNodes", PageNodes);

}  // namespace lc

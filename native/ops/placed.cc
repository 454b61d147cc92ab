// Tensors copied into memory placed on a CPU pool's NUMA node (native/placed.h), and the node query.
//
//   placeTensors(stream, tensors, node, hugepage, releaseSource) -> {tensors, bytes, hugepage, hugeBytes,
//       bound, bindError, released, releaseHow}
// copies the CPU tensors into one new allocation (each at a 256-byte aligned offset), the copy run
// as a job of the CPU `stream`, so on its pool's threads (first touch: their node); node >= 0 asks
// mbind(MPOL_BIND) to it first (null: first touch only; a refusal is kept in bindError, not thrown);
// releaseSource gives back the source pages of tensors over a file mapping (release_mapped_pages):
// their bytes in `released`. The new tensors are views of the allocation, freed with the last one.
//
//   pageNodes(tensor, maxPages) -> {nodes, error}: the NUMA node of each of the tensor's first
// maxPages pages (move_pages(2) query; < 0: -errno for that page), or nodes [] and the error.
#include "../binding.h"
#include "../placed.h"

namespace lc {
namespace {

constexpr size_t kAlign = 256;

Napi::Value PlaceTensors(const Napi::CallbackInfo& info) {
  OpArgs a(info, "placeTensors");
  if (!a.present(0)) fail(Code::E_ARGUMENT, "placeTensors: 'stream' must be a CPU stream (its pool copies)");
  Stream& s = a.stream(0, Device{});
  if (s.capturing()) fail(Code::E_ARGUMENT, "placeTensors: the stream is capturing a graph");
  std::vector<Tensor> src = a.tensor_list(1, "tensors");
  int node = -1;
  if (a.present(2)) {
    int64_t n = a.integer(2, "node");
    if (n < 0 || n > 1023)
      fail(Code::E_ARGUMENT, "placeTensors: 'node' must be null or in 0..1023, got %lld", static_cast<long long>(n));
    node = static_cast<int>(n);
  }
  const bool hugepage = a.boolean(3, "hugepage"), release = a.boolean(4, "releaseSource");
  std::vector<PlacedRange> ranges;
  size_t total = 0;
  for (size_t i = 0; i < src.size(); ++i) {
    expect_device(a.op(), "tensors[i]", src[i], Device{});
    total = (total + kAlign - 1) / kAlign * kAlign;
    ranges.push_back({src[i].data(), total, static_cast<size_t>(src[i].nbytes())});
    total += static_cast<size_t>(src[i].nbytes());
  }
  Napi::Object out = Napi::Object::New(info.Env());
  Napi::Array tensors = Napi::Array::New(info.Env(), src.size());
  std::shared_ptr<PlacedMemory> mem;
  if (total > 0) {
    mem = PlacedMemory::allocate(total, {node, hugepage});
    // the stream's worker runs the copy under its pool (and is bound to its CPUs, like the pool's workers)
    s.enqueue([mem, ranges, src] { placed_copy(mem->data(), mem->size(), ranges); }, "placed_copy");
    s.synchronize();
  }
  double released = 0;
  std::string how;
  for (size_t i = 0; i < src.size(); ++i) {
    Tensor t;
    t.dtype = src[i].dtype;
    t.shape = src[i].shape;
    if (mem)
      t.storage = external_storage(Device{}, mem->data() + ranges[i].dst_offset, ranges[i].bytes, [mem]() {});
    else
      t.storage = external_storage(Device{}, nullptr, 0, [] {});
    tensors.Set(static_cast<uint32_t>(i), TensorWrap::Wrap(info.Env(), t));
    if (release && src[i].storage->file_mapped && ranges[i].bytes) {
      std::string h;
      released += static_cast<double>(release_mapped_pages(src[i].data(), ranges[i].bytes, &h));
      if (how.empty() || h.rfind("madvise", 0) == 0) how = h;  // an error wins
    }
  }
  out.Set("tensors", tensors);
  out.Set("bytes", static_cast<double>(total));
  out.Set("hugepage", mem && mem->hugepage());
  out.Set("hugeBytes", mem ? static_cast<double>(mem->huge_bytes()) : 0.0);
  out.Set("bound", mem && mem->bound());
  if (mem && !mem->bind_error().empty())
    out.Set("bindError", mem->bind_error());
  else
    out.Set("bindError", info.Env().Null());
  out.Set("released", released);
  out.Set("releaseHow", how.empty() ? info.Env().Null() : Napi::Value(Napi::String::New(info.Env(), how)));
  return out;
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
LC_REGISTER_OP("pageNodes", PageNodes);

}  // namespace lc

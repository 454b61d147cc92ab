// Faulting memory in before the first step reads it, off the JS thread (issue 19):
//   populateZeros(stream, tensor)  a CPU tensor's pages faulted in for writing and its bytes set to
//       zero, as a job of the stream: in parallel over the stream's pool, so that its pages are first
//       touched by the threads that use them (a CPU rank's pool: its NUMA node), and ordered before
//       every later op of the stream. The KV caches at model construction.
//   populateMapped(items, maxBytes?) -> Promise<{ bytes, populated }>  the file-mapped pages (mapFile)
//       that the tensors and MoeExpertSets of `items` read faulted in for reading, on a libuv worker
//       (spread over the global pool); `bytes`: those pages' bytes (whole pages, shared ones once).
//       Memory that is not a file mapping (copies, made tensors) is skipped; nothing at all
//       (populated false) when `bytes` exceeds maxBytes. The weights at load.
// The faulting itself is mmap.h's populate_pages (MADV_POPULATE_*, else a touch per page).

#include <algorithm>
#include <cstring>

#include "../binding.h"
#include "../cpu/threadpool.h"
#include "../mmap.h"

namespace lc {

bool expert_set_storages(Napi::Value v, std::vector<std::shared_ptr<Storage>>* out);  // ops/moe.cc

namespace {

constexpr size_t kChunk = size_t{2} << 20;  // a job's unit of work: 2 MiB (also a huge page)

// [bytes of memory, of which `done` so far) in kChunk pieces over the calling thread's pool.
template <typename F>
void over_chunks(size_t bytes, F&& fn) {
  const int64_t n = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  cpu::parallel_for(n, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const size_t b = static_cast<size_t>(c) * kChunk;
      fn(b, std::min(kChunk, bytes - b));
    }
  });
}

[[noreturn]] void populate_failed(const char* op, int err, size_t bytes, Code otherwise) {
  fail(err == ENOMEM ? Code::E_OOM : otherwise, "%s: faulting in %zu bytes failed: %s (%s)", op, bytes, std::strerror(err),
       errno_name(err));
}

void PopulateZeros(const OpArgs& a) {
  const Tensor t = a.tensor(1, "tensor");
  if (!t.device().is_cpu())
    fail(Code::E_DEVICE, "populateZeros: 'tensor' is on %s; only host memory is faulted in", t.device().str().c_str());
  const size_t bytes = static_cast<size_t>(t.nbytes());
  a.launch(
      t.device(),
      [=] {
        uint8_t* p = static_cast<uint8_t*>(t.data());
        // Faulted in first, then zeroed (the memory may be recycled, not fresh from the OS): a 2 MiB
        // piece at a time, so that the zeroing finds it in cache.
        over_chunks(bytes, [&](size_t b, size_t n) {
          if (int err = populate_pages(p + b, n, true)) populate_failed("populateZeros", err, bytes, Code::E_INTERNAL);
          std::memset(p + b, 0, n);
        });
      },
      nullptr);
}

class PopulateWorker : public PromiseWorker {
 public:
  PopulateWorker(Napi::Env env, std::vector<std::shared_ptr<Storage>> keep, std::vector<PageSpan> spans, size_t bytes,
                 bool populate)
      : PromiseWorker(env, "longcat:populateMapped"),
        keep_(std::move(keep)),
        spans_(std::move(spans)),
        bytes_(bytes),
        populate_(populate) {}

 private:
  void run() override {
    if (!populate_) return;
    for (const PageSpan& s : spans_)
      over_chunks(s.end - s.begin, [&](size_t b, size_t n) {
        if (int err = populate_pages(reinterpret_cast<void*>(s.begin + b), n, false))
          populate_failed("populateMapped", err, s.end - s.begin, Code::E_CHECKPOINT);
      });
  }
  Napi::Value value(Napi::Env env) override {
    keep_.clear();
    Napi::Object r = Napi::Object::New(env);
    r.Set("bytes", static_cast<double>(bytes_));
    r.Set("populated", populate_);
    return r;
  }
  std::vector<std::shared_ptr<Storage>> keep_;  // the mappings stay mapped while they are faulted in
  std::vector<PageSpan> spans_;
  size_t bytes_;
  bool populate_;
};

Napi::Value PopulateMapped(const Napi::CallbackInfo& info) {
  const char* op = "populateMapped";
  if (info.Length() < 1 || !info[0].IsArray())
    fail(Code::E_ARGUMENT, "%s: 'items' must be an array of Tensors and MoeExpertSets", op);
  const Napi::Array items = info[0].As<Napi::Array>();
  double max_bytes = -1;  // none
  if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) {
    max_bytes = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(max_bytes >= 0)) fail(Code::E_ARGUMENT, "%s: 'maxBytes' must be a non-negative number", op);
  }
  std::vector<std::shared_ptr<Storage>> storages;
  for (uint32_t i = 0; i < items.Length(); ++i) {
    const Napi::Value v = items.Get(i);
    if (TensorWrap::IsTensor(info.Env(), v)) {
      storages.push_back(TensorWrap::Unwrap(v.As<Napi::Object>())->get(op).storage);
    } else if (!expert_set_storages(v, &storages)) {
      fail(Code::E_ARGUMENT, "%s: items[%u] is neither a Tensor nor a MoeExpertSet", op, i);
    }
  }
  // the mapped storages' pages, merged (tensors packed back to back share pages)
  std::vector<std::pair<const void*, size_t>> ranges;
  std::vector<std::shared_ptr<Storage>> keep;
  for (const auto& s : storages) {
    if (!s || !s->file_mapped || !s->ptr || s->bytes == 0) continue;
    ranges.push_back({s->ptr, static_cast<size_t>(s->bytes)});
    keep.push_back(s);
  }
  std::vector<PageSpan> merged = merged_pages(std::move(ranges));
  size_t bytes = 0;
  for (const PageSpan& s : merged) bytes += s.end - s.begin;
  const bool run = max_bytes < 0 || static_cast<double>(bytes) <= max_bytes;
  return (new PopulateWorker(info.Env(), std::move(keep), std::move(merged), bytes, run))->queue();
}

}  // namespace

LC_REGISTER_OP("populateZeros", PopulateZeros);
LC_REGISTER_OP("populateMapped", PopulateMapped);

}  // namespace lc

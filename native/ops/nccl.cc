// NCCL communicators for JS (lib/parallel/nccl.ts): the loader and calls of native/nccl.h behind
// checked arguments. Module functions:
//   ncclVersion(libraryPath) -> number                       (major * 10000 + minor * 100 + patch)
//   ncclUniqueId(libraryPath) -> string                      (256 hex digits, made by rank 0)
//   ncclInit(libraryPath, idHex, rank, worldSize, device) -> Promise<comm handle>
//   ncclExchange(comm, stream, [{ send, tensor, peer }, ...])   one NCCL group of sends and receives
//   ncclAbort(comm), ncclDestroy(comm)
// An empty libraryPath means "libnccl.so.2" on the loader's search path. ncclInit runs NCCL's
// bootstrap (which waits for every rank) on a thread of its own, so the event loop keeps running and
// one process can bring up several ranks at once. An exchange is queued on the stream: on the CPU it
// runs on the stream's worker thread (where a blocking host-memory implementation may wait for its
// peers), on CUDA NCCL enqueues it on the cudaStream_t.
#include <thread>

#include "../binding.h"
#include "../cuda_api.h"
#include "../nccl.h"

namespace lc {

namespace {

struct CommHandle {
  std::shared_ptr<nccl::Communicator> comm;  // reset by ncclDestroy; queued exchanges hold their own reference
  Device device;
};

// Marks the External that carries a CommHandle, so a forged object is rejected.
const napi_type_tag kCommTag = {0x6c6f6e6763617466ULL, 0x6e63636c2d763031ULL};

std::string library_path(const Napi::CallbackInfo& info, const char* op) {
  if (info.Length() < 1 || info[0].IsUndefined() || info[0].IsNull()) return "";
  if (!info[0].IsString()) fail(Code::E_ARGUMENT, "%s: 'libraryPath' must be a string", op);
  return info[0].As<Napi::String>().Utf8Value();
}

CommHandle& comm_of(Napi::Value v, const char* op) {
  CommHandle* h = handle_in<CommHandle>(v, kCommTag);
  if (!h) fail(Code::E_ARGUMENT, "%s: 'comm' must be a communicator from ncclInit()", op);
  if (!h->comm) fail(Code::E_DISPOSED, "%s: the NCCL communicator was disposed", op);
  if (h->comm->aborted()) fail(Code::E_DISPOSED, "%s: the NCCL communicator was aborted", op);
  return *h;
}

int int_in_range(const OpArgs& a, size_t i, const char* name) {
  int64_t v = a.integer(i, name);
  if (v < INT32_MIN || v > INT32_MAX) fail(Code::E_ARGUMENT, "%s: '%s' = %lld does not fit an int", a.op(), name, ll(v));
  return static_cast<int>(v);
}

Napi::Value Version(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), nccl::version(nccl::load(library_path(info, "ncclVersion"))));
  });
}

Napi::Value UniqueId(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::String::New(info.Env(), nccl::unique_id_hex(nccl::load(library_path(info, "ncclUniqueId"))));
  });
}

// The outcome of one bootstrap thread, handed back to the JS thread.
struct InitJob {
  InitJob(Napi::Promise::Deferred d, Device dev) : deferred(d), device(dev) {}
  Napi::Promise::Deferred deferred;
  Device device;
  std::shared_ptr<nccl::Communicator> comm;
  Code code = Code::E_INTERNAL;
  std::string error;  // empty on success
};

Napi::Value Init(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const char* op = "ncclInit";
    OpArgs a(info, op);
    const nccl::Api& api = nccl::load(library_path(info, op));
    const nccl::UniqueId id = nccl::parse_unique_id(a.string(1, "id"));
    const int rank = int_in_range(a, 2, "rank"), world_size = int_in_range(a, 3, "worldSize");
    nccl::Communicator::check_rank(rank, world_size);  // here, rather than on the bootstrap thread
    auto* job = new InitJob(Napi::Promise::Deferred::New(info.Env()), device_arg(info, 4));
    Napi::Promise promise = job->deferred.Promise();
    auto done =
        Napi::ThreadSafeFunction::New(info.Env(), Napi::Function::New(info.Env(), [](const Napi::CallbackInfo&) {}), op, 0, 1);
    std::thread([job, done, &api, id, rank, world_size]() mutable {
      try {
        if (!job->device.is_cpu()) cuda::set_device(job->device.index);  // NCCL binds the current device
        job->comm = std::make_shared<nccl::Communicator>(api, id, rank, world_size);
      } catch (const Error& e) {
        job->code = e.code;
        job->error = e.what();
      } catch (const std::exception& e) {
        job->error = e.what();
      }
      done.BlockingCall([job](Napi::Env env, Napi::Function) {
        std::unique_ptr<InitJob> own(job);
        try {
          if (!job->error.empty()) throw Error(job->code, job->error);
          Napi::Object obj = handle_object(env, new CommHandle{job->comm, job->device}, kCommTag);
          job->deferred.Resolve(obj);
        } catch (...) {
          try {
            rethrow_as_js(env);
          } catch (const Napi::Error& e) {
            job->deferred.Reject(e.Value());
          }
        }
      });
      done.Release();
    }).detach();
    return promise;
  });
}

Napi::Value Exchange(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const char* op = "ncclExchange";
    OpArgs a(info, op);
    CommHandle& h = comm_of(info[0], op);
    Stream& s = a.stream(1, h.device);
    if (info.Length() < 3 || !info[2].IsArray()) fail(Code::E_ARGUMENT, "%s: 'transfers' must be an array", op);
    Napi::Array list = info[2].As<Napi::Array>();
    std::vector<nccl::Communicator::Transfer> transfers;
    std::vector<Tensor> tensors;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      Napi::Value item = list.Get(i);
      if (!item.IsObject()) fail(Code::E_ARGUMENT, "%s: transfer %u is not an object", op, i);
      Napi::Object t = item.As<Napi::Object>();
      Napi::Value tv = t.Get("tensor"), pv = t.Get("peer");
      if (!TensorWrap::IsTensor(info.Env(), tv)) fail(Code::E_ARGUMENT, "%s: transfer %u has no tensor", op, i);
      if (!pv.IsNumber()) fail(Code::E_ARGUMENT, "%s: transfer %u has no peer rank", op, i);
      const double peer = pv.As<Napi::Number>().DoubleValue();
      if (peer != static_cast<double>(static_cast<int>(peer)))
        fail(Code::E_ARGUMENT, "%s: transfer %u: peer must be an integer rank", op, i);
      const Tensor& x = TensorWrap::Unwrap(tv.As<Napi::Object>())->get(op);
      expect_device(op, "tensor", x, h.device);
      tensors.push_back(x);
      transfers.push_back({t.Get("send").ToBoolean().Value(), x.data(), static_cast<size_t>(x.nbytes()), static_cast<int>(peer)});
    }
    std::shared_ptr<nccl::Communicator> comm = h.comm;
    for (const auto& t : transfers) comm->check_peer(t.peer);
    launch(
        op, s,
        [=] {
          hold(tensors);
          comm->exchange(transfers.data(), transfers.size(), nullptr);
        },
        [=](void* stream) {
          hold(tensors);
          comm->exchange(transfers.data(), transfers.size(), stream);
        });
    return info.Env().Undefined();
  });
}

Napi::Value Abort(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    CommHandle* h = handle_in<CommHandle>(info[0], kCommTag);
    if (!h) fail(Code::E_ARGUMENT, "ncclAbort: 'comm' must be a communicator from ncclInit()");
    if (h->comm) h->comm->abort();
    return info.Env().Undefined();
  });
}

Napi::Value Destroy(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    CommHandle* h = handle_in<CommHandle>(info[0], kCommTag);
    if (!h) fail(Code::E_ARGUMENT, "ncclDestroy: 'comm' must be a communicator from ncclInit()");
    h->comm.reset();
    return info.Env().Undefined();
  });
}

}  // namespace

LC_REGISTER_OP("ncclVersion", Version);
LC_REGISTER_OP("ncclUniqueId", UniqueId);
LC_REGISTER_OP("ncclInit", Init);
LC_REGISTER_OP("ncclExchange", Exchange);
LC_REGISTER_OP("ncclAbort", Abort);
LC_REGISTER_OP("ncclDestroy", Destroy);

}  // namespace lc

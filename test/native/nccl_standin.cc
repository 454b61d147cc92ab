// A stand-in for libnccl.so.2, built by test/nccl.test.ts and loaded through LONGCAT_NCCL_PATH: the
// NCCL C symbols the addon binds (native/nccl.h), implemented between threads of one process over
// host memory, so the run-time loader, the rank/world/unique-id bootstrap and the grouped
// send/recv call sequence are exercised for real without NCCL or a GPU.
//   ncclCommInitRank blocks until every rank of the unique id has joined, and fails on all of them
//   when two ranks disagree on the world size or a rank joins twice.
//   ncclSend copies the bytes into the (sender, receiver) mailbox and returns; ncclRecv waits for
//   the oldest message of that mailbox, so messages between two ranks match in order. Inside a
//   group, ncclGroupEnd posts the group's sends before it waits for its receives (no deadlock for
//   rings or all-to-all). The stream argument is ignored: the bytes have moved when a call returns.
//   ncclCommAbort marks the whole world aborted (a peer went away): pending and later receives fail
//   with ncclRemoteError. ncclGetLastError says what went wrong on the calling thread.
// Communicators are freed by ncclCommDestroy only; an aborted one is kept (a receive may still be
// waiting on it), which a test library can afford.
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

extern "C" {
typedef struct {
  char internal[128];
} ncclUniqueId;
typedef struct ncclComm* ncclComm_t;
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
} ncclResult_t;
typedef int ncclDataType_t;
}

namespace {

struct World {
  int nranks;
  std::mutex m;
  std::condition_variable cv;
  std::map<std::pair<int, int>, std::deque<std::vector<char>>> mailbox;  // (from, to) -> messages in order
  bool aborted = false;
};

struct Rendezvous {
  int nranks;
  std::set<int> joined;
  int left = 0;
  std::string failure;  // non-empty: every waiting rank fails with it
  std::shared_ptr<World> world;
};

std::mutex g_m;
std::condition_variable g_cv;
std::map<std::string, Rendezvous> g_rendezvous;  // by unique id bytes

thread_local std::string t_last_error;
thread_local int t_group_depth = 0;

struct Op {
  bool send;
  void* data;
  size_t bytes;
  int peer;
  ncclComm_t comm;
};
thread_local std::vector<Op> t_group;

ncclResult_t error(ncclResult_t r, const std::string& msg) {
  t_last_error = msg;
  return r;
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case 0:
    case 1: return 1;  // int8, uint8
    case 2:
    case 3:
    case 7: return 4;  // int32, uint32, float32
    case 4:
    case 5:
    case 8: return 8;  // int64, uint64, float64
    case 6:
    case 9: return 2;  // float16, bfloat16
    default: return 0;
  }
}

}  // namespace

struct ncclComm {
  std::shared_ptr<World> world;
  int rank;
};

namespace {

ncclResult_t post(const Op& op) {
  World& w = *op.comm->world;
  std::lock_guard<std::mutex> lock(w.m);
  if (w.aborted) return error(ncclRemoteError, "stand-in: the communicator was aborted");
  const char* p = static_cast<const char*>(op.data);
  w.mailbox[{op.comm->rank, op.peer}].emplace_back(p, p + op.bytes);
  w.cv.notify_all();
  return ncclSuccess;
}

ncclResult_t take(const Op& op) {
  World& w = *op.comm->world;
  std::unique_lock<std::mutex> lock(w.m);
  auto& box = w.mailbox[{op.peer, op.comm->rank}];
  w.cv.wait(lock, [&] { return w.aborted || !box.empty(); });
  if (w.aborted)
    return error(ncclRemoteError, "stand-in: the communicator was aborted while rank " + std::to_string(op.comm->rank) +
                                      " waited for rank " + std::to_string(op.peer));
  std::vector<char> msg = std::move(box.front());
  box.pop_front();
  if (msg.size() != op.bytes)
    return error(ncclInvalidUsage, "stand-in: rank " + std::to_string(op.comm->rank) + " receives " + std::to_string(op.bytes) +
                                       " bytes from rank " + std::to_string(op.peer) + ", which sent " +
                                       std::to_string(msg.size()));
  if (op.bytes) std::memcpy(op.data, msg.data(), op.bytes);
  return ncclSuccess;
}

ncclResult_t point_to_point(bool send, void* data, size_t count, ncclDataType_t type, int peer, ncclComm_t comm) {
  if (!comm) return error(ncclInvalidArgument, "stand-in: null communicator");
  const size_t size = type_size(type);
  if (!size) return error(ncclInvalidArgument, "stand-in: unknown data type " + std::to_string(type));
  if (peer < 0 || peer >= comm->world->nranks)
    return error(ncclInvalidArgument, "stand-in: peer " + std::to_string(peer) + " is not a rank");
  Op op{send, data, count * size, peer, comm};
  if (t_group_depth > 0) {
    t_group.push_back(op);
    return ncclSuccess;
  }
  return send ? post(op) : take(op);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ncclResult_t ncclGetVersion(int* version) {
  *version = 21900;  // the stand-in answers as NCCL 2.19.0
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static std::mutex m;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(m);
  for (size_t i = 0; i < sizeof(id->internal); i += 8) {
    uint64_t v = rng();
    std::memcpy(id->internal + i, &v, 8);
  }
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return error(ncclInvalidArgument, "stand-in: rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  const std::string key(id.internal, sizeof(id.internal));
  std::unique_lock<std::mutex> lock(g_m);
  Rendezvous& r = g_rendezvous.emplace(key, Rendezvous{nranks, {}, 0, "", nullptr}).first->second;
  if (r.failure.empty() && r.nranks != nranks)
    r.failure = "stand-in: rank " + std::to_string(rank) + " says the world has " + std::to_string(nranks) +
                " ranks, an earlier rank said " + std::to_string(r.nranks);
  else if (r.failure.empty() && !r.joined.insert(rank).second)
    r.failure = "stand-in: rank " + std::to_string(rank) + " joined twice";
  g_cv.notify_all();
  g_cv.wait(lock, [&] { return !r.failure.empty() || static_cast<int>(r.joined.size()) == r.nranks; });
  std::string failure = r.failure;
  if (failure.empty() && !r.world) {
    r.world = std::make_shared<World>();
    r.world->nranks = nranks;
  }
  std::shared_ptr<World> world = r.world;
  // The last rank out forgets the id; a failed id stays failed for ranks that arrive later.
  if (failure.empty() && ++r.left == r.nranks) g_rendezvous.erase(key);
  if (!failure.empty()) return error(ncclInvalidUsage, failure);
  *comm = new ncclComm{world, rank};
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  std::lock_guard<std::mutex> lock(comm->world->m);
  comm->world->aborted = true;
  comm->world->cv.notify_all();
  return ncclSuccess;
}

__attribute__((visibility("default"))) const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}

__attribute__((visibility("default"))) const char* ncclGetLastError(ncclComm_t) { return t_last_error.c_str(); }

__attribute__((visibility("default"))) ncclResult_t ncclGroupStart() {
  ++t_group_depth;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return error(ncclInvalidUsage, "stand-in: ncclGroupEnd without ncclGroupStart");
  if (--t_group_depth > 0) return ncclSuccess;
  std::vector<Op> ops = std::move(t_group);
  t_group.clear();
  ncclResult_t first = ncclSuccess;
  for (const Op& op : ops)
    if (op.send && first == ncclSuccess) first = post(op);
  for (const Op& op : ops)
    if (!op.send && first == ncclSuccess) first = take(op);
  return first;
}

__attribute__((visibility("default"))) ncclResult_t ncclSend(const void* data, size_t count, ncclDataType_t type, int peer,
                                                             ncclComm_t comm, void*) {
  return point_to_point(true, const_cast<void*>(data), count, type, peer, comm);
}

__attribute__((visibility("default"))) ncclResult_t ncclRecv(void* data, size_t count, ncclDataType_t type, int peer,
                                                             ncclComm_t comm, void*) {
  return point_to_point(false, data, count, type, peer, comm);
}

}  // extern "C"

// NCCL, loaded at run time: the communicator calls the cross-host path needs, bound by name with
// dlsym from libnccl.so.2 (or the file LONGCAT_NCCL_PATH names), never linked. The NCCL C ABI types
// are declared here, so the addon builds and loads without NCCL installed; every failure is an
// lc::Error (E_NCCL_UNAVAILABLE when the library or a symbol is missing, E_NCCL naming the call and
// NCCL's message when a call fails, E_ARGUMENT for bad input), never an abort. No N-API here.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lc::nccl {

// NCCL's ABI (nccl.h): a 128-byte unique id passed by value, an opaque communicator, and int enums.
struct UniqueId {
  char internal[128];
};
using Comm = struct ncclComm*;
enum Result : int {
  kSuccess = 0,
  kUnhandledCudaError = 1,
  kSystemError = 2,
  kInternalError = 3,
  kInvalidArgument = 4,
  kInvalidUsage = 5,
  kRemoteError = 6,
  kInProgress = 7,
};
// ncclDataType_t; send/recv move bytes, so only kUint8 is used (counts are byte counts).
enum DataType : int {
  kInt8 = 0,
  kUint8 = 1,
  kInt32 = 2,
  kUint32 = 3,
  kInt64 = 4,
  kUint64 = 5,
  kFloat16 = 6,
  kFloat32 = 7,
  kFloat64 = 8,
  kBfloat16 = 9
};

// The bound entry points of one loaded library (a library is loaded once per path and never unloaded:
// communicators made from it may outlive any one caller).
struct Api {
  std::string path;
  Result (*GetVersion)(int*);
  Result (*GetUniqueId)(UniqueId*);
  Result (*CommInitRank)(Comm*, int, UniqueId, int);
  Result (*CommDestroy)(Comm);
  Result (*CommAbort)(Comm);
  const char* (*GetErrorString)(Result);
  const char* (*GetLastError)(Comm);  // NCCL >= 2.13; null when the library lacks it
  Result (*GroupStart)();
  Result (*GroupEnd)();
  Result (*Send)(const void*, size_t, DataType, int, Comm, void*);
  Result (*Recv)(void*, size_t, DataType, int, Comm, void*);
};

// The library at `path`, or "libnccl.so.2" through the loader's search path when `path` is empty.
// Throws E_NCCL_UNAVAILABLE naming the path, the loader's reason and how to install NCCL.
const Api& load(const std::string& path);

// Throws E_NCCL "<call>: <NCCL's string> (<code>)[: <ncclGetLastError>]" unless r is kSuccess.
void check(const Api& api, Result r, const char* call, Comm comm = nullptr);

// NCCL's version as major * 10000 + minor * 100 + patch (the NCCL_VERSION_CODE encoding of >= 2.9).
int version(const Api& api);

// A fresh unique id from rank 0, as 256 lowercase hex digits, and back (E_ARGUMENT on bad text).
std::string unique_id_hex(const Api& api);
UniqueId parse_unique_id(const std::string& hex);

// One rank's communicator. Destroyed with ncclCommDestroy when the last owner lets go, unless it
// was aborted. The CUDA device (when dev >= 0) is made current on the calling thread before init.
class Communicator {
 public:
  // Blocks until all world_size ranks with this id have joined (NCCL's bootstrap).
  Communicator(const Api& api, const UniqueId& id, int rank, int world_size);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool aborted() const { return aborted_; }
  // Throws E_ARGUMENT unless world_size >= 1 and 0 <= rank < world_size (checked before the bootstrap).
  static void check_rank(int rank, int world_size);
  // Throws E_ARGUMENT unless 0 <= peer < world_size.
  void check_peer(int peer) const;
  // ncclCommAbort: frees the communicator and unblocks its pending operations (idempotent).
  void abort();

  struct Transfer {
    bool send;
    void* data;
    size_t bytes;
    int peer;
  };
  // ncclGroupStart, one ncclSend/ncclRecv per transfer on `stream` (a cudaStream_t, null on the
  // CPU), ncclGroupEnd. NCCL returns once the work is enqueued on the stream; a host-memory
  // implementation (the test stand-in) returns once the bytes are moved.
  void exchange(const Transfer* transfers, size_t n, void* stream);

 private:
  const Api& api_;
  Comm comm_ = nullptr;
  int rank_, world_size_;
  std::atomic<bool> aborted_{false};
};

}  // namespace lc::nccl

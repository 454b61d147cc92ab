// The run-time NCCL loader (native/nccl.h): dlopen + dlsym by name, and the communicator calls with
// NCCL's result codes turned into typed errors.
#include "nccl.h"

#include <dlfcn.h>

#include <map>
#include <mutex>

#include "common.h"

namespace lc::nccl {

namespace {

const char* kInstallHint =
    "install NCCL (pip install nvidia-nccl-cu12, or apt install libnccl2) and, when it is not on the "
    "loader's search path, set LONGCAT_NCCL_PATH to its libnccl.so.2 (with pip: "
    "<site-packages>/nvidia/nccl/lib/libnccl.so.2)";

template <typename F>
void bind(void* lib, const std::string& shown, const char* name, F** fn, bool required = true) {
  *fn = reinterpret_cast<F*>(dlsym(lib, name));
  if (!*fn && required)
    fail(Code::E_NCCL_UNAVAILABLE, "NCCL library %s has no symbol %s (not NCCL, or older than 2.7); %s", shown.c_str(), name,
         kInstallHint);
}

}  // namespace

const Api& load(const std::string& path) {
  static std::mutex m;
  static std::map<std::string, std::unique_ptr<Api>> loaded;  // never unloaded (see nccl.h)
  const std::string file = path.empty() ? "libnccl.so.2" : path;
  std::lock_guard<std::mutex> lock(m);
  auto it = loaded.find(file);
  if (it != loaded.end()) return *it->second;
  const std::string shown = path.empty() ? "'libnccl.so.2'" : "'" + path + "' (LONGCAT_NCCL_PATH)";
  dlerror();
  void* lib = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = dlerror();
    fail(Code::E_NCCL_UNAVAILABLE, "NCCL is not available: cannot load %s: %s; %s", shown.c_str(), why ? why : "unknown error",
         kInstallHint);
  }
  auto api = std::make_unique<Api>();
  api->path = file;
  try {
    bind(lib, shown, "ncclGetVersion", &api->GetVersion);
    bind(lib, shown, "ncclGetUniqueId", &api->GetUniqueId);
    bind(lib, shown, "ncclCommInitRank", &api->CommInitRank);
    bind(lib, shown, "ncclCommDestroy", &api->CommDestroy);
    bind(lib, shown, "ncclCommAbort", &api->CommAbort);
    bind(lib, shown, "ncclGetErrorString", &api->GetErrorString);
    bind(lib, shown, "ncclGetLastError", &api->GetLastError, false);
    bind(lib, shown, "ncclGroupStart", &api->GroupStart);
    bind(lib, shown, "ncclGroupEnd", &api->GroupEnd);
    bind(lib, shown, "ncclSend", &api->Send);
    bind(lib, shown, "ncclRecv", &api->Recv);
  } catch (...) {
    dlclose(lib);
    throw;
  }
  return *loaded.emplace(file, std::move(api)).first->second;
}

void check(const Api& api, Result r, const char* call, Comm comm) {
  if (r == kSuccess) return;
  const char* what = api.GetErrorString(r);
  std::string msg = format("%s failed: %s (ncclResult_t %d)", call, what ? what : "unknown error", static_cast<int>(r));
  const char* last = api.GetLastError ? api.GetLastError(comm) : nullptr;
  if (last && *last) msg += std::string(": ") + last;
  throw Error(Code::E_NCCL, msg);
}

int version(const Api& api) {
  int v = 0;
  check(api, api.GetVersion(&v), "ncclGetVersion");
  return v;
}

std::string unique_id_hex(const Api& api) {
  UniqueId id;
  check(api, api.GetUniqueId(&id), "ncclGetUniqueId");
  static const char digits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : id.internal) {
    hex += digits[c >> 4];
    hex += digits[c & 15];
  }
  return hex;
}

UniqueId parse_unique_id(const std::string& hex) {
  UniqueId id;
  if (hex.size() != 2 * sizeof(id.internal))
    fail(Code::E_ARGUMENT, "NCCL unique id must be %d hex digits (from ncclUniqueId() on rank 0), got %d characters",
         static_cast<int>(2 * sizeof(id.internal)), static_cast<int>(hex.size()));
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    fail(Code::E_ARGUMENT, "NCCL unique id must be hex digits, found '%c'", c);
  };
  for (size_t i = 0; i < sizeof(id.internal); ++i)
    id.internal[i] = static_cast<char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return id;
}

Communicator::Communicator(const Api& api, const UniqueId& id, int rank, int world_size)
    : api_(api), rank_(rank), world_size_(world_size) {
  check_rank(rank, world_size);
  check(api_, api_.CommInitRank(&comm_, world_size, id, rank), "ncclCommInitRank");
}

Communicator::~Communicator() {
  if (!aborted_ && comm_) api_.CommDestroy(comm_);  // a destructor cannot report; NCCL frees it either way
}

void Communicator::abort() {
  if (aborted_.exchange(true)) return;
  check(api_, api_.CommAbort(comm_), "ncclCommAbort");
}

void Communicator::check_rank(int rank, int world_size) {
  if (world_size < 1) fail(Code::E_ARGUMENT, "NCCL world size must be at least 1, got %d", world_size);
  if (rank < 0 || rank >= world_size)
    fail(Code::E_ARGUMENT, "NCCL rank %d is outside the world of %d ranks (0..%d)", rank, world_size, world_size - 1);
}

void Communicator::check_peer(int peer) const {
  if (peer < 0 || peer >= world_size_)
    fail(Code::E_ARGUMENT, "NCCL peer %d is outside the world of %d ranks (0..%d)", peer, world_size_, world_size_ - 1);
}

void Communicator::exchange(const Transfer* transfers, size_t n, void* stream) {
  if (aborted_) fail(Code::E_DISPOSED, "NCCL communicator of rank %d was aborted", rank_);
  for (size_t i = 0; i < n; ++i) check_peer(transfers[i].peer);
  check(api_, api_.GroupStart(), "ncclGroupStart");
  // Every call between GroupStart and GroupEnd is made, even after a failure, so the group closes.
  Result first = kSuccess;
  const char* first_call = nullptr;
  for (size_t i = 0; i < n; ++i) {
    const Transfer& t = transfers[i];
    Result r = t.send ? api_.Send(t.data, t.bytes, kUint8, t.peer, comm_, stream)
                      : api_.Recv(t.data, t.bytes, kUint8, t.peer, comm_, stream);
    if (r != kSuccess && first == kSuccess) {
      first = r;
      first_call = t.send ? "ncclSend" : "ncclRecv";
    }
  }
  Result end = api_.GroupEnd();
  if (first != kSuccess) check(api_, first, first_call, comm_);
  check(api_, end, "ncclGroupEnd", comm_);
}

}  // namespace lc::nccl

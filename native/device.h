// Devices, their memory pools, streams and events. A Device is a value ({kind, index});
// its pool lives in a process-wide registry. Streams are shared (a Graph keeps the streams it
// replays on alive); each JS environment (the main thread, every worker) has default streams of its own.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common.h"

namespace lc {
namespace cpu {
class ThreadPool;
}

struct Device {
  enum Kind { CPU = 0, CUDA = 1 } kind = CPU;
  int index = 0;
  bool is_cpu() const { return kind == CPU; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  // "cpu", "cuda" (= cuda:0) or "cuda:N"; throws E_DEVICE for anything else or a missing GPU.
  static Device parse(const std::string& s);
};

class Pool;
class Event;

// A block of device memory. Owned through shared_ptr by tensors and by queued work, so memory
// is returned to the pool only when the last kernel that uses it has run.
struct Storage {
  Device device;
  void* ptr = nullptr;
  size_t bytes = 0;
  Pool* pool = nullptr;           // null for external memory (mmap'd weights)
  std::function<void()> release;  // external memory only
  bool file_mapped = false;       // external memory of a file mapping (ops/mmap.cc): pages the page cache can refill
  // Page-locked host memory: an event after each asynchronous copy queued from or into it on a
  // CUDA stream (outside graph captures). Such a copy holds no reference (it is no queued CPU job),
  // so the release waits for them instead: the copy engine may still be reading or writing it.
  // Touched only by the thread that owns the tensors (a JS environment's), like the tensors.
  std::vector<std::shared_ptr<Event>> pending_copies;
  void wait_copies();  // waits for the pending copies (host reads and writes of the memory do first)
  ~Storage();
};

struct PoolStats {
  int64_t live_bytes = 0, cached_bytes = 0, peak_bytes = 0, live_blocks = 0;
};

// A caching allocator: freed blocks are kept by rounded size and reused. On CUDA an allocation
// that fails empties the cache and retries before throwing E_OOM.
//
// Stream safety on CUDA: a block is freed when its last tensor is dropped, which may happen while
// kernels that use it are still queued, on any stream. With one stream on the device, reuse is
// ordered behind them by that stream. With several, a freed block is fenced: an event is recorded on
// every stream of the device, and the block is reused only once all of them have completed (no
// kernel queued before the free can still touch it), whichever stream the next user runs on.
// Streams may appear and disappear at any time: a new stream starts behind all work queued on the
// device's streams (so blocks cached or handed out unfenced while one stream was alone are safe on
// it), and the streams left continue behind a destroyed stream's queued work (add_stream /
// remove_stream).
//
// The pinned pool (pinned_pool()) holds CPU memory that CUDA copies may use asynchronously:
// page-locked (cudaHostAlloc) when the CUDA backend has a device, plain host memory otherwise.
// It caches nothing: page-locked memory is taken from the OS's pageable memory, so a freed block
// goes straight back (cudaFreeHost) and live_bytes is all the pinned memory there is.
class Pool {
 public:
  explicit Pool(Device d) : device_(d) {}  // pools live as long as the process
  struct PinnedTag {};
  explicit Pool(PinnedTag);
  bool page_locked() const { return page_locked_; }  // blocks come from cuda::host_alloc
  std::shared_ptr<Storage> alloc(size_t bytes);
  void give_back(void* p, size_t rounded);
  void trim();  // frees every cached block (waiting for fenced ones)
  PoolStats stats();
  void add_stream(void* cuda_stream);  // E_ARGUMENT while a graph is being captured
  void remove_stream(void* cuda_stream) noexcept;

  // While a CUDA graph is captured, blocks freed by their last user (the graph's temporaries,
  // whose addresses are baked into the graph) are parked instead of reused; the graph hands them
  // back when it is destroyed. One capture per device at a time: begin_parking (and add_stream)
  // wait while another thread captures, and fail (E_ARGUMENT) on the capturing thread itself.
  using Parked = std::vector<std::pair<void*, size_t>>;
  void begin_parking();
  Parked end_parking();
  void unpark(const Parked& blocks);

 private:
  void* raw_alloc(size_t bytes);
  void raw_free(void* p);
  void reclaim_locked();  // fenced blocks whose events completed -> free_
  void* take_event_locked();
  void follow_locked(void* stream, void* leader);  // `stream` waits for all work queued on `leader` so far
  struct Fenced {
    void* p;
    size_t size;
    std::vector<void*> events;
  };
  Device device_;
  bool pinned_ = false, page_locked_ = false;  // the pinned pool; its blocks page-locked
  std::mutex m_;
  std::multimap<size_t, void*> free_;
  std::vector<void*> streams_;  // CUDA streams of this device
  std::deque<Fenced> fenced_;   // freed, maybe still in use by queued kernels
  std::vector<void*> spare_events_;
  std::vector<void*> orphans_;  // recorded on destroyed streams when no stream was left
  PoolStats stats_;
  bool parking_ = false;
  std::thread::id parking_owner_;
  std::condition_variable capture_done_;
  Parked parked_;
};

// Wraps memory the pool does not own; `release` runs when the last user is gone.
std::shared_ptr<Storage> external_storage(Device d, void* ptr, size_t bytes, std::function<void()> release);

// A CPU kernel that can also run in row ranges (Stream::enqueue's `split`), so that a graph replay
// may run consecutive ones that touch none of each other's outputs as one parallel phase: their
// rows split over the pool's threads together, one join for all (Graph::Plan). run(r0, r1) computes
// rows [r0, r1) of the kernel's result exactly as the whole kernel does (bit for bit, whatever the
// ranges), from any pool thread, with no parallel_for of its own that matters (nested ones run inline).
struct RowSplit {
  int64_t rows = 0;
  int64_t align = 1;    // range bounds are multiples of it (or `rows`)
  double row_cost = 1;  // one row's cost (e.g. its weight bytes): the phase balances the threads by it
  std::function<void(int64_t, int64_t)> run;
  std::vector<std::pair<const void*, size_t>> reads, writes;  // the memory it reads / writes, as byte ranges
  // The weight rows it streams (row r at weights + r * weight_row_bytes; null: none), which a
  // replay prefetches ahead of the node (cpu::ThreadPool::set_lookahead).
  const void* weights = nullptr;
  int64_t weight_row_bytes = 0;
};

// An ordered queue of work. On CPU it is a worker thread of its own, so two streams overlap;
// on CUDA it is a cudaStream_t. Errors thrown by CPU work are kept and rethrown by synchronize().
// A stream belongs to the thread that created it (a JS environment's thread): device_synchronize
// waits only for the streams of the calling thread, so workers never wait for (or touch) each
// other's streams.
class Stream {
 public:
  explicit Stream(Device d);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Device device() const { return device_; }
  std::thread::id owner() const { return owner_; }
  void* cuda_handle() const { return cuda_; }
  // CPU streams only. `op`: the op's name (a string literal), which a graph's profile shows;
  // `split`: the kernel in row ranges, which a graph's replay may fuse with its neighbours.
  void enqueue(std::function<void()> fn, const char* op = nullptr, std::shared_ptr<const RowSplit> split = nullptr);
  // CPU: the pool this stream's kernels run on (a CPU rank's own, see native/cpu/threadpool.h);
  // null (the default): the global one. The stream's thread moves to the pool's CPUs with it. Jobs
  // queued before the call may run on either.
  void set_pool(std::shared_ptr<cpu::ThreadPool> pool);
  std::shared_ptr<cpu::ThreadPool> pool();
  // CPU: `fn` spins on a flag another stream's kernel releases (expert-parallel waits). A graph
  // captured over it replays its streams side by side, one thread each, not as one region: the
  // region's single schedule could run the waiter before the kernel that releases it.
  void enqueue_spinning(std::function<void()> fn, const char* op = nullptr);
  // Work captured from a CPU stream: a kernel, or an event's marker (a record raising a signal, a
  // wait for one), which a replay runs even after a kernel failed so that signals stay paired.
  struct Captured {
    std::function<void()> fn;
    bool marker = false;
    bool spins = false;  // enqueue_spinning
    uint64_t seq = 0;    // capture order across all streams (a valid order to run a graph's ops in)
    const char* op = nullptr;
    std::shared_ptr<const RowSplit> split;
  };
  void synchronize();
  // CPU: wakes the idle thread to spin (up to 200 us) for work about to be queued, so that its
  // wake overlaps the caller's host work instead of following the enqueue (Graph::prewake).
  void prewake();
  // CPU: a replay's hold on an idle stream (Graph::replay). try_hold() succeeds only when nothing is
  // queued or running here and no capture is on; until release_hold(), the stream counts as busy
  // (synchronize() waits) and work queued on it waits, while its thread sleeps on. release_hold()
  // keeps `error` (empty: none) as the stream's error, as a failed job's.
  bool try_hold();
  void release_hold(Code code, const std::string& error);
  // Throws (and clears) the error kept from queued work, without waiting (CPU; CUDA: nothing kept).
  void raise_error();
  // The same, returned: false when none is kept. Any thread (a read's job takes it in stream order).
  bool take_error(Code* code, std::string* message);
  // Keeps `message` as the stream's error, as a failed job's would be (unless one is kept already).
  void keep_error(Code code, const std::string& message);
  bool capturing() const { return captured_ != nullptr; }
  // CUDA: memory a copy captured from this stream addresses outside the device pools (pinned host
  // memory); the graph the capture ends in keeps it until it is destroyed.
  void hold_while_captured(std::shared_ptr<Storage> s);

 private:
  void run();
  Device device_;
  std::thread::id owner_ = std::this_thread::get_id();
  void* cuda_ = nullptr;
  std::thread thread_;
  std::mutex m_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  std::shared_ptr<cpu::ThreadPool> pool_;  // set_pool (under m_)
  bool busy_ = false, stopping_ = false, on_hold_ = false, prewake_ = false;
  std::atomic<uint64_t> enqueued_{0};  // jobs queued so far (a prewoken thread spins until it moves)
  std::string error_;
  Code error_code_ = Code::E_INTERNAL;
  void enqueue_marker(std::function<void()> fn);  // an event's record or wait (Event)
  void queue_or_capture(std::function<void()> fn, bool marker, bool spins, const char* op,
                        std::shared_ptr<const RowSplit> split = nullptr);  // captured while capturing (CPU)
  std::unique_ptr<std::vector<Captured>> captured_;                        // non-null while capturing (CPU)
  std::vector<std::shared_ptr<Storage>> held_;                             // hold_while_captured (CUDA)
  friend struct Capture;
  friend class Event;
};

// A marker in a stream. record() places it, wait_on() makes another stream wait for it.
// On CPU each record() creates a fresh Signal that the recording stream raises when it gets
// there, and a wait waits for the signal of the record() before it. A signal counts how often
// it was raised and each wait counts how often it ran, so a captured record/wait pair stays
// paired when a Graph replays it many times.
class Event {
 public:
  explicit Event(Device d);
  ~Event();
  Device device() const { return device_; }
  void record(Stream& s);
  void wait_on(Stream& s);  // s waits until this event (as last recorded) completes; on CUDA s may be on another device
  void synchronize();
  bool query();
  double elapsed_ms(Event& end);  // time between this and a later event

 private:
  struct Signal {
    std::mutex m;
    std::condition_variable cv;
    uint64_t raised = 0;
    std::chrono::steady_clock::time_point when;
  };
  Device device_;
  void* cuda_ = nullptr;
  std::shared_ptr<Signal> last_;  // of the latest record(); null before the first
};

// Work captured from streams, replayed as one CUDA graph launch, or on CPU as one parallel
// region: each stream gets a job that meets the others', and the last to arrive runs every stream's
// captured work in capture order (which respects every event record / wait between them) on the
// thread pool as the region's master, while the other streams' threads sleep. So a step never has
// more runnable threads than the pool has, and the pool's workers stay inside the step between
// ops. A kernel that throws fails its own stream (its error kept there, as a queued kernel's is);
// the kernels after it in the step are skipped, the events' markers still run.
// Captured work keeps its tensors alive, and the graph keeps its streams alive (a stream disposed or collected by JS still takes the replays): a graph is a fixed memory plan whose
// inputs are updated in place between replays.
class Graph {
 public:
  ~Graph();
  void replay();
  // CPU: Stream::prewake() of the stream that runs the plan; not with LONGCAT_STREAM_PREWAKE=0.
  void prewake();
  struct Plan;  // CPU: the streams' work in capture order (device.cc)

 private:
  friend struct Capture;
  Device device_;
  std::shared_ptr<const Plan> plan_;            // CPU (held by queued replays: it holds no stream)
  std::vector<std::shared_ptr<Stream>> parts_;  // CPU: the streams, as the plan numbers them
  void* exec_ = nullptr;                        // CUDA
  std::shared_ptr<Stream> origin_;
  std::vector<std::pair<Device, Pool::Parked>> parked_;  // CUDA: temporaries the graph's kernels address, per device
  std::vector<std::shared_ptr<Storage>> held_;           // CUDA: pinned host memory its copies address
};

// Captures every op queued on `streams` between begin() and end(). On CUDA the first stream is
// the origin: the others must join it through events recorded inside the capture; they may be on
// other CUDA devices (expert-parallel ranks), whose pools then park the graph's temporaries too.
struct Capture {
  static void begin(const std::vector<std::shared_ptr<Stream>>& streams);
  static std::unique_ptr<Graph> end(const std::vector<std::shared_ptr<Stream>>& streams);
  static void abort(const std::vector<std::shared_ptr<Stream>>& streams) noexcept;
};

// The per-node profile of replayed CPU graphs (bench/step-profile.mjs): while switched on, each
// region replay times every node (op) of its plan and reads the cpu::profile counters around it.
// graph_profile(on) returns what was gathered since the last call (per graph replayed meanwhile,
// the graphs still alive; call it with the streams synchronized) and switches profiling on / off.
struct NodeProfile {
  std::string op;  // the op's name; "event" for a record / wait
  int stream = 0;  // index into the graph's streams
  int phase = 1;   // nodes in its parallel phase (> 1: fused with its neighbours; their time shared by row cost)
  int64_t ns = 0, wait_ns = 0, jobs = 0, weight_bytes = 0;
  int64_t busy_ns = 0;  // thread time inside the node's parallel chunks, summed over the pool's threads
};
struct GraphProfile {
  int64_t replays = 0, ns = 0;  // region runs and their total time
  int64_t start_ns = 0;         // summed over the replays: from replay() to the region's start (the streams' threads meeting)
  std::vector<NodeProfile> nodes;
};
std::vector<GraphProfile> graph_profile(bool on);

// Peer access between CUDA devices (expert parallelism): enable_peer_access lets kernels on
// `from` address memory of `to` (E_DEVICE naming both when they cannot reach each other; enabling
// twice is fine); peer_access_enabled says whether it was (a device always reaches itself).
void enable_peer_access(Device from, Device to);
bool peer_access_enabled(Device from, Device to);

Pool& device_pool(Device d);
// The process's pool of pinned host memory (see Pool).
Pool& pinned_pool();
// Waits for every stream the calling thread created on the device (CPU) / the whole device (CUDA).
void device_synchronize(Device d);
// Throws the first error kept by a CPU stream of the calling thread (as device_synchronize would), clearing
// it, without waiting. Nothing on CUDA, whose waits report errors themselves.
void device_raise_errors(Device d);
// The CPU streams the calling thread created. Only these: a stream is destroyed only on the thread
// that created it (its JS environment's), which is the thread running this, so none of them can go
// away meanwhile. Other environments' streams (worker threads) are theirs to wait for; one of them
// may be capturing.
std::vector<Stream*> this_thread_cpu_streams();
// The first error kept by a CPU stream that thread `owner` created, taken (cleared); false when none.
// From any thread: a stream's job takes the errors of the work before it, in its own order.
bool take_cpu_stream_error(std::thread::id owner, Code* code, std::string* message);

// The work queued on a stream or device when the fence is made, as something any thread can wait
// for: made on the JS thread (events recorded on the streams), waited on another, so that the JS
// thread can await the device instead of blocking. The streams may be destroyed meanwhile: a CPU
// stream runs its queue before it goes, and a CUDA event outlives its stream.
class Fence {
 public:
  static std::unique_ptr<Fence> of_stream(Stream& s);
  // CPU: the calling thread's streams; CUDA: the whole device (cudaDeviceSynchronize when waited).
  static std::unique_ptr<Fence> of_device(Device d);
  void wait();  // any thread; E_CUDA from a failed CUDA wait

 private:
  explicit Fence(Device d) : device_(d) {}
  Device device_;
  std::vector<std::unique_ptr<Event>> events_;
  bool whole_device_ = false;
};

}  // namespace lc

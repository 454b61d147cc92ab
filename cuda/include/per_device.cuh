// What the CUDA runtime keeps per device, kept per device by the launchers: a value made on each
// device's first use (host code only).
#pragma once
#include <memory>
#include <mutex>

#include "common.cuh"

namespace lc::gpu {

inline int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

// A value per device, made on a device's first use (thread-safe; a make() that throws is retried
// on the next use). What the runtime keeps per device -- a kernel's shared-memory opt-in, the
// kernel image the driver picked -- must not be settled once per process: the next GPU differs.
template <class T>
class PerDevice {
 public:
  template <class Make>
  const T& get(int dev, Make make) {
    Slot& s = slot(dev);
    std::call_once(s.once, [&] { s.value = make(dev); });
    return s.value;
  }

 private:
  struct Slot {
    std::once_flag once;
    T value{};
  };
  Slot& slot(int dev) {
    std::call_once(sized_, [this] {
      check(cudaGetDeviceCount(&count_), "cudaGetDeviceCount");
      slots_ = std::make_unique<Slot[]>(static_cast<size_t>(count_));
    });
    if (dev < 0 || dev >= count_) fail(Code::E_DEVICE, "cuda:%d does not exist: %d CUDA device(s) present", dev, count_);
    return slots_[dev];
  }
  std::once_flag sized_;
  int count_ = 0;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace lc::gpu

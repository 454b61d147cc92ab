// A tensor: a dense, row-major (contiguous) view of a Storage. Copying a Tensor shares storage.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "device.h"
#include "dtype.h"

namespace lc {

struct Tensor {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // bytes from storage->ptr
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  Device device() const { return storage->device; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t nbytes() const { return numel() * dtype_size(dtype); }
  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  void* data() const { return static_cast<char*>(storage->ptr) + offset; }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data());
  }
  // Rows of the last dimension: numel / dim(-1).
  // The product of all but the last dimension (not numel() / last: the last may be 0).
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
    return r;
  }
};

// Checks a shape before anything is made of it: dimensions >= 0, and elements and bytes that fit
// (at most 2^53 elements, JS's exact integers, and 2^62 bytes), or E_SHAPE naming `what` and the shape.
void check_shape(const char* what, const std::vector<int64_t>& shape, DType t);

// A new pool-backed tensor (contents undefined).
Tensor empty_tensor(Device d, DType t, const std::vector<int64_t>& shape);
// A new CPU tensor from the pinned pool (contents undefined): page-locked when the CUDA backend has
// a device, so that CUDA copies from or into it run asynchronously and may be captured in a graph.
Tensor pinned_tensor(DType t, const std::vector<int64_t>& shape);
// Whether the tensor's memory is page-locked host memory.
inline bool page_locked(const Tensor& t) { return t.storage->pool && t.storage->pool->page_locked(); }

}  // namespace lc

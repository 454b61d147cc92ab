// Tensors: dtype, shape, strides-free views (view, narrow) into reference-counted storage from the
// device pool or a memory map, and host <-> device copies.
#include "tensor.h"

namespace lc {

void check_shape(const char* what, const std::vector<int64_t>& shape, DType t) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) fail(Code::E_SHAPE, "%s: negative dimension in shape %s", what, shape_str(shape).c_str());
    if (s != 0 && n > (int64_t{1} << 53) / s)
      fail(Code::E_SHAPE, "%s: shape %s has more than 2^53 elements", what, shape_str(shape).c_str());
    n *= s;
  }
  if (n > (int64_t{1} << 62) / dtype_size(t))
    fail(Code::E_SHAPE, "%s: shape %s of %s needs more than 2^62 bytes", what, shape_str(shape).c_str(), dtype_name(t));
}

static Tensor tensor_from(Pool& pool, DType t, const std::vector<int64_t>& shape) {
  Tensor r;
  r.dtype = t;
  r.shape = shape;
  check_shape("tensor", shape, t);
  r.storage = pool.alloc(static_cast<size_t>(r.nbytes()));
  return r;
}

Tensor empty_tensor(Device d, DType t, const std::vector<int64_t>& shape) { return tensor_from(device_pool(d), t, shape); }

Tensor pinned_tensor(DType t, const std::vector<int64_t>& shape) { return tensor_from(pinned_pool(), t, shape); }

}  // namespace lc

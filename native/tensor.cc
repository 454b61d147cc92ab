// Tensors: dtype, shape, strides-free views (view, narrow) into reference-counted storage from the
// device pool or a memory map, and host <-> device copies.
#include "tensor.h"

namespace lc {

Tensor empty_tensor(Device d, DType t, const std::vector<int64_t>& shape) {
  Tensor r;
  r.dtype = t;
  r.shape = shape;
  for (int64_t s : shape)
    if (s < 0) fail(Code::E_SHAPE, "negative dimension in shape %s", shape_str(shape).c_str());
  r.storage = device_pool(d).alloc(static_cast<size_t>(r.nbytes()));
  return r;
}

}  // namespace lc

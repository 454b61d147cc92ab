// rmsnorm(stream, y, x, weight, eps, add?, hOut?): y = weight * h / rms(h), h = x (+ add) (+ h -> hOut)
#include "../binding.h"
#include "../cpu/norm.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/kernels.h"
#endif

namespace lc {

static void Rmsnorm(const OpArgs& a) {
  Tensor y = a.tensor(1, "y"), x = a.tensor(2, "x"), w = a.tensor(3, "weight");
  const float eps = static_cast<float>(a.number(4, "eps"));
  std::optional<Tensor> add = a.opt_tensor(5, "add"), h = a.opt_tensor(6, "hOut");
  const Device d = x.device();
  a.expect(x, "x", {DType::F32}, d);
  if (x.ndim() < 1) fail(Code::E_SHAPE, "rmsnorm: 'x' must have at least one dimension");
  const int64_t dim = x.dim(-1), rows = x.rows();
  a.expect(w, "weight", {DType::F32, DType::BF16}, d, {dim});
  a.expect(y, "y", {DType::F32, DType::BF16}, d, x.shape);
  a.expect(add, "add", {DType::F32}, d, x.shape);
  a.expect(h, "hOut", {DType::F32}, d, x.shape);
  if (!(eps >= 0)) fail(Code::E_ARGUMENT, "rmsnorm: eps must be >= 0, got %g", eps);
  a.launch(
      d,
      [=] {
        cpu::rmsnorm(rows, dim, x.ptr<float>(), opt_ptr<float>(add), opt_ptr<float>(h), w.data(), w.dtype, eps, y.data(),
                     y.dtype);
      },
      LC_GPU(gpu::rmsnorm(rows, dim, x.ptr<float>(), opt_ptr<float>(add), opt_ptr<float>(h), w.data(), w.dtype, eps, y.data(),
                          y.dtype, stream)));
}

LC_REGISTER_OP("rmsnorm", Rmsnorm);

}  // namespace lc

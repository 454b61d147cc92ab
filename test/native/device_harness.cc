// The device runtime around the kernels -- the pool's stream safety, several devices -- on the
// emulated CUDA device of test/emu, whose streams really defer work (test/emu/runtime_emu.cc): a
// stream's queued work runs only when something waits for it, so a block handed to new work
// before the old work ran shows as a wrong result, deterministically. Two emulated devices
// (LONGCAT_EMU_DEVICES=2, set here) with the per-device dynamic shared-memory opt-in enforced.
// Built by `npm run test:native` in an emulator build (target longcat_device_test).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../cuda/kernels.h"
#include "check.h"
#include "common.h"
#include "cpu/linear.h"
#include "cpu/numeric.h"
#include "cuda_api.h"
#include "device.h"

namespace {

using namespace lc;

int g_passed = 0, g_failed = 0;

void expect(bool ok, const std::string& what) {
  ok ? ++g_passed : ++g_failed;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

constexpr size_t kBytes = 19 * 1024;  // a size no other block of these cases rounds to

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + 7 * i);
  return v;
}

std::vector<uint8_t> read_back(Device d, const Storage& s, size_t n) {
  device_synchronize(d);
  std::vector<uint8_t> v(n);
  cuda::memcpy_d2h(d.index, v.data(), s.ptr, n);
  return v;
}

// The shared steps of the cases below: block A holds a pattern and a copy of A is queued on
// `reader`; before_free() runs, A is freed, and the stream writer() returns is handed the next block
// of A's size (A itself, which it overwrites at once). The queued copy must still read A's old bytes.
void freed_while_read_case(const std::string& what, const Device& d, uint8_t seed, std::unique_ptr<Stream>& reader,
                           const std::function<void()>& before_free, const std::function<Stream&()>& writer) {
  Pool& pool = device_pool(d);
  const auto want = pattern(kBytes, seed);
  auto a = pool.alloc(kBytes);
  void* const a_ptr = a->ptr;
  cuda::memcpy_h2d(d.index, a->ptr, want.data(), kBytes);
  auto dst = pool.alloc(kBytes * 2);
  cuda::memcpy_d2d(d.index, dst->ptr, a->ptr, kBytes, reader->cuda_handle());
  before_free();
  a.reset();
  Stream& w = writer();
  auto b = pool.alloc(kBytes);
  expect(b->ptr == a_ptr, what + ": the freed block is reused (the case tests what it means to)");
  cuda::memset_async(d.index, b->ptr, 0, kBytes, w.cuda_handle());
  w.synchronize();
  expect(read_back(d, *dst, kBytes) == want, what + ": the queued work reads the block's old bytes");
}

// One stream: a copy reading block A is queued, A is freed (cached unfenced: the stream orders its
// reuse), then a second stream appears and is handed A.
void new_stream_case() {
  const Device d{Device::CUDA, 0};
  auto s1 = std::make_unique<Stream>(d);
  std::unique_ptr<Stream> s2;
  freed_while_read_case(
      "new stream", d, 3, s1, [] {},
      [&]() -> Stream& {
        s2 = std::make_unique<Stream>(d);
        return *s2;
      });
}

// Two streams: a copy reading block A is queued on one, which is destroyed with it in flight; A is
// freed while one stream is left (cached unfenced) and that stream overwrites it.
void destroyed_stream_case() {
  const Device d{Device::CUDA, 1};
  auto keep = std::make_unique<Stream>(d), gone = std::make_unique<Stream>(d);
  freed_while_read_case(
      "destroyed stream", d, 11, gone, [&] { gone.reset(); },  // cudaStreamDestroy returns at once; the copy runs later
      [&]() -> Stream& { return *keep; });
}

// The wgmma GEMM (dynamic shared memory past 48 KB: an opt-in per device and kernel) on each device.
void wgmma_each_device_case() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t t = 37, n = 45, k = 72;
  std::vector<uint16_t> x(t * k), w(n * k);
  for (auto& v : x) v = cpu::f32_to_bf16(u(rng));
  for (auto& v : w) v = cpu::f32_to_bf16(u(rng));
  std::vector<double> want(t * n);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < k; ++c) acc += static_cast<double>(cpu::bf16_to_f32(x[i * k + c])) * cpu::bf16_to_f32(w[j * k + c]);
      want[i * n + j] = acc;
    }
  gpu::set_wgmma_enabled(true);
  for (int dev = 0; dev < 2; ++dev) {
    const Device d{Device::CUDA, dev};
    const std::string what = "wgmma linear on cuda:" + std::to_string(dev);
    try {
      Stream s(d);
      Pool& pool = device_pool(d);
      auto dx = pool.alloc(x.size() * 2), dw = pool.alloc(w.size() * 2), dy = pool.alloc(want.size() * 4);
      cuda::memcpy_h2d(dev, dx->ptr, x.data(), x.size() * 2);
      cuda::memcpy_h2d(dev, dw->ptr, w.data(), w.size() * 2);
      cuda::memset_async(dev, dy->ptr, 0xff, want.size() * 4, s.cuda_handle());  // NaN poison
      cpu::WeightRef wr;
      wr.dtype = DType::BF16, wr.data = dw->ptr, wr.n = n, wr.k = k;
      cuda::set_device(dev);
      const bool used = gpu::linear_wgmma(t, dx->ptr, DType::BF16, wr, dy->ptr, DType::F32, s.cuda_handle());
      cuda::check_launch("linear_wgmma");
      std::vector<float> y(want.size());
      s.synchronize();
      cuda::memcpy_d2h(dev, y.data(), dy->ptr, y.size() * 4);
      const double err = lc::harness::max_rel_error(y, want);
      expect(used && err <= 1e-5, what + " (relative error " + std::to_string(err) + ")");
    } catch (const Error& e) {
      expect(false, what + ": " + e.what());
    }
  }
  gpu::set_wgmma_enabled(false);
}

}  // namespace

int main() {
  setenv("LONGCAT_EMU_DEVICES", "2", 1);  // before the emulated machine is first read
  std::printf("longcat device runtime on the emulated CUDA device (deferred streams, two devices)\n");
  try {
    new_stream_case();
    destroyed_stream_case();
    wgmma_each_device_case();
  } catch (const Error& e) {
    std::printf("FAIL: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

// The device runtime around the kernels -- the pool's stream safety, several devices -- on the
// emulated CUDA device of test/emu, whose streams really defer work (test/emu/runtime_emu.cc): a
// stream's queued work runs only when something waits for it, so a block handed to new work
// before the old work ran shows as a wrong result, deterministically. Three emulated devices
// (LONGCAT_EMU_DEVICES=3, set here; cuda:1 and cuda:2 without a peer path) with the per-device
// dynamic shared-memory opt-in enforced, peer access and cross-device event waits.
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

#include "../../cuda/ep.h"
#include "../../cuda/kernels.h"
#include "check.h"
#include "common.h"
#include "cpu/ep.h"
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

// Peer access: the can-access answers, a kernel on cuda:0 writing cuda:1's memory (refused at
// launch until cuda:0 enabled peer access to cuda:1, then the expert-parallel dispatch writes the
// slot on cuda:1 as the CPU twin does), enabling twice, and a pair without a peer path (E_DEVICE
// naming both).
void peer_access_case() {
  const Device d0{Device::CUDA, 0}, d1{Device::CUDA, 1}, d2{Device::CUDA, 2};
  expect(cuda::can_access_peer(0, 1) && cuda::can_access_peer(1, 0) && !cuda::can_access_peer(1, 2) &&
             !cuda::can_access_peer(2, 1) && !cuda::can_access_peer(0, 0),
         "peer access answers (cuda:1 and cuda:2 have no peer path)");
  const int64_t t = 5, k = 2, h = 3, per = 2, ranks = 2, cap = 5;
  const std::vector<float> u = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const std::vector<int32_t> idx = {0, 3, 1, 1, 2, 4, 0, 4, 3, 2};  // 4: a zero expert
  const std::vector<float> w = {.5f, .25f, .125f, 1, 2, 3, 4, 5, 6, 7};
  Pool &p0 = device_pool(d0), &p1 = device_pool(d1);
  auto du = p0.alloc(u.size() * 4), di = p0.alloc(idx.size() * 4), dw = p0.alloc(w.size() * 4), drow = p0.alloc(t * ranks * 4);
  cuda::memcpy_h2d(0, du->ptr, u.data(), u.size() * 4);
  cuda::memcpy_h2d(0, di->ptr, idx.data(), idx.size() * 4);
  cuda::memcpy_h2d(0, dw->ptr, w.data(), w.size() * 4);
  // Rank 0's slot on cuda:0, rank 1's on cuda:1.
  std::vector<std::shared_ptr<Storage>> cnt, sx, si, sw;
  gpu::EpSlots slots{};
  for (int64_t r = 0; r < ranks; ++r) {
    Pool& p = r == 0 ? p0 : p1;
    cnt.push_back(p.alloc(4)), sx.push_back(p.alloc(cap * h * 4)), si.push_back(p.alloc(cap * k * 4)),
        sw.push_back(p.alloc(cap * k * 4));
    slots.count[r] = static_cast<int32_t*>(cnt[r]->ptr), slots.x[r] = static_cast<float*>(sx[r]->ptr);
    slots.idx[r] = static_cast<int32_t*>(si[r]->ptr), slots.w[r] = static_cast<float*>(sw[r]->ptr);
  }
  Stream s(d0);
  auto dispatch = [&] {
    cuda::set_device(0);
    gpu::ep_dispatch(t, k, h, static_cast<float*>(du->ptr), static_cast<int32_t*>(di->ptr), static_cast<float*>(dw->ptr), 4, per,
                     ranks, cap, slots, static_cast<int32_t*>(drow->ptr), nullptr, false, gpu::EpFlags{}, gpu::EpWait{}, 16,
                     s.cuda_handle());
    cuda::check_launch("ep_dispatch");
  };
  try {
    dispatch();
    expect(false, "a launch on cuda:0 carrying cuda:1's memory before peer access is enabled is refused");
  } catch (const Error& e) {
    expect(e.code == Code::E_CUDA && std::strstr(e.what(), "cudaErrorIllegalAddress"),
           std::string("a launch on cuda:0 carrying cuda:1's memory before peer access is enabled is refused: ") + e.what());
  }
  try {
    enable_peer_access(d0, d1);
    enable_peer_access(d0, d1);  // already enabled: fine
    expect(peer_access_enabled(d0, d1) && !peer_access_enabled(d1, d0), "peer access enabled one way, twice");
    dispatch();
    s.synchronize();
    // The CPU twin on host copies of the same inputs.
    std::vector<int32_t> want_cnt(ranks), want_idx(ranks * cap * k), want_row(t * ranks);
    std::vector<float> want_x(ranks * cap * h), want_w(ranks * cap * k);
    std::vector<cpu::EpSlot> host(ranks);
    for (int64_t r = 0; r < ranks; ++r)
      host[r] = {&want_cnt[r], &want_x[r * cap * h], &want_idx[r * cap * k], &want_w[r * cap * k]};
    cpu::ep_dispatch(t, k, h, u.data(), idx.data(), w.data(), 4, 5, per, ranks, cap, host.data(), want_row.data());
    bool same = true;
    for (int64_t r = 0; r < ranks; ++r) {
      const int dev = static_cast<int>(r);
      int32_t c = -1;
      std::vector<float> x(cap * h), ww(cap * k);
      std::vector<int32_t> ix(cap * k);
      cuda::memcpy_d2h(dev, &c, cnt[r]->ptr, 4);
      cuda::memcpy_d2h(dev, x.data(), sx[r]->ptr, x.size() * 4);
      cuda::memcpy_d2h(dev, ix.data(), si[r]->ptr, ix.size() * 4);
      cuda::memcpy_d2h(dev, ww.data(), sw[r]->ptr, ww.size() * 4);
      same = same && c == want_cnt[r] && std::memcmp(x.data(), &want_x[r * cap * h], x.size() * 4) == 0 &&
             std::memcmp(ix.data(), &want_idx[r * cap * k], ix.size() * 4) == 0 &&
             std::memcmp(ww.data(), &want_w[r * cap * k], ww.size() * 4) == 0;
    }
    std::vector<int32_t> row(t * ranks);
    cuda::memcpy_d2h(0, row.data(), drow->ptr, row.size() * 4);
    expect(same && row == want_row && want_cnt[1] > 0, "a kernel on cuda:0 writes the slot on cuda:1 as the CPU twin does");
  } catch (const Error& e) {
    expect(false, std::string("peer dispatch: ") + e.what());
  }
  try {
    enable_peer_access(d1, d2);
    expect(false, "enabling peer access between devices without a peer path fails");
  } catch (const Error& e) {
    expect(e.code == Code::E_DEVICE && std::strstr(e.what(), "cuda:1") && std::strstr(e.what(), "cuda:2"),
           std::string("enabling peer access between devices without a peer path fails naming both: ") + e.what());
  }
}

// A stream of cuda:1 waits for an event of cuda:0: its copy of cuda:0's block (queued behind the
// wait) sees what cuda:0's stream wrote before the event, although nothing else ran cuda:0's queue.
void cross_device_wait_case() {
  const Device d0{Device::CUDA, 0}, d1{Device::CUDA, 1};
  auto a = device_pool(d0).alloc(kBytes), b = device_pool(d1).alloc(kBytes);
  const auto want = pattern(kBytes, 11);
  auto staged = device_pool(d0).alloc(kBytes);
  cuda::memcpy_h2d(0, staged->ptr, want.data(), kBytes);
  Stream s0(d0), s1(d1);
  Event e(d0);
  cuda::memcpy_d2d(0, a->ptr, staged->ptr, kBytes, s0.cuda_handle());
  e.record(s0);
  e.wait_on(s1);
  cuda::memcpy_d2d(1, b->ptr, a->ptr, kBytes, s1.cuda_handle());
  s1.synchronize();
  std::vector<uint8_t> got(kBytes);
  cuda::memcpy_d2h(1, got.data(), b->ptr, kBytes);
  expect(got == want, "a stream of cuda:1 waits for an event of cuda:0");
  s0.synchronize();
}

}  // namespace

int main() {
  setenv("LONGCAT_EMU_DEVICES", "3", 1);  // before the emulated machine is first read
  setenv("LONGCAT_EMU_NO_PEER", "1-2", 1);
  std::printf("longcat device runtime on the emulated CUDA device (deferred streams, three devices, peer access)\n");
  try {
    new_stream_case();
    destroyed_stream_case();
    wgmma_each_device_case();
    peer_access_case();
    cross_device_wait_case();
  } catch (const Error& e) {
    std::printf("FAIL: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

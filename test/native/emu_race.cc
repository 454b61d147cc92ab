// Warp-level data races in the attention kernels, found by ThreadSanitizer on the CPU emulator:
// built with -fsanitize=thread, test/emu/cuda_emu.h makes every CUDA thread a sanitizer fiber and
// annotates the CUDA memory model (__syncthreads / __syncwarp order memory, shuffles do not), so a
// lane rewriting shared memory that other lanes of its warp read with only shuffles between them is
// reported (TSAN_OPTIONS=halt_on_error=1: the run fails). Covers the split-KV online-softmax update
// of the CUDA-core decode kernel (f32, bf16 and fp8 caches), the tensor-core decode and the CUDA-core
// prefill, each also held to the CPU oracle. Built and run by `npm run test:native` (target
// longcat_emu_race_test).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../cuda/mla.h"
#include "check.h"
#include "common.h"
#include "cpu/mla.h"
#include "cpu/threadpool.h"
#include "cpu/linear.h"
#include "cpu/numeric.h"

namespace {

using namespace lc;
using cpu::MatmulPrecision;

int g_passed = 0, g_failed = 0;
std::mt19937_64 g_rng(2026);
float uni() { return std::uniform_real_distribution<float>(-1, 1)(g_rng); }

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  const double err = lc::harness::max_rel_error(got, want);
  const bool ok = err <= tol;
  ok ? ++g_passed : ++g_failed;
  std::printf("%s %s: max relative error %.3g (tolerance %.3g)\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
}

// Absorbed decode over a paged cache with several splits per sequence (the combine of partial
// softmax states runs in every tile).
void decode_case(int64_t nh, int64_t dl, int64_t dr, int64_t bs, std::vector<int32_t> lens, cpu::MlaCache cf_kind,
                 MatmulPrecision p) {
  cpu::set_matmul_precision(p);
  const cpu::MlaDims d = lc::harness::decode_dims(nh, dl, dr);
  const int64_t B = static_cast<int64_t>(lens.size()), row = dl + dr, mb = lc::harness::max_blocks(lens, bs);
  const int64_t nb = B * mb;
  std::vector<int32_t> bt(B * mb);
  for (int64_t i = 0; i < B * mb; ++i) bt[i] = static_cast<int32_t>(B * mb - 1 - i);
  std::vector<float> cf(nb * bs * row);
  std::vector<uint16_t> cb(cf.size());
  for (size_t i = 0; i < cf.size(); ++i) cb[i] = cpu::f32_to_bf16(uni()), cf[i] = cpu::bf16_to_f32(cb[i]);
  // fp8: the same rows through the CPU's quantizing cache write
  std::vector<uint8_t> c8(cf_kind == cpu::MlaCache::FP8 ? nb * bs * cpu::mla_fp8_row_bytes(dl, dr) : 0);
  if (!c8.empty()) {
    std::vector<float> ckv(nb * bs * dl), kpe(nb * bs * dr);
    std::vector<int32_t> slots(nb * bs);
    for (int64_t i = 0; i < nb * bs; ++i) {
      slots[i] = static_cast<int32_t>(i);
      for (int64_t c = 0; c < dl; ++c) ckv[i * dl + c] = cf[i * row + c];
      for (int64_t c = 0; c < dr; ++c) kpe[i * dr + c] = cf[i * row + dl + c];
    }
    cpu::mla_cache_write(d, nb * bs, c8.data(), cf_kind, bs, ckv.data(), kpe.data(), slots.data());
  }
  const void* cache = cf_kind == cpu::MlaCache::FP8    ? static_cast<const void*>(c8.data())
                      : cf_kind == cpu::MlaCache::BF16 ? static_cast<const void*>(cb.data())
                                                       : static_cast<const void*>(cf.data());
  std::vector<float> ql(B * nh * dl), q(B * nh * (d.dn + dr));
  for (auto& v : ql) v = 0.3f * uni();
  for (auto& v : q) v = 0.3f * uni();
  const float scale = 1.0f / std::sqrt(192.0f);
  std::vector<float> want(B * nh * dl), got(B * nh * dl, NAN);
  std::vector<float> cws(cpu::mla_decode_workspace_floats(d, B, 3));
  cpu::mla_decode_absorbed(d, B, want.data(), ql.data(), q.data(), cache, cf_kind, bs, bt.data(), mb, lens.data(), scale,
                           cws.data(), 3);
  const int64_t splits = gpu::mla_decode_splits(d, B, mb * bs, cf_kind, cache);
  std::vector<float> gws(std::max<int64_t>(1, gpu::mla_decode_workspace_floats(d, B, splits)));
  gpu::mla_decode_absorbed(d, B, got.data(), ql.data(), q.data(), cache, cf_kind, nb, bs, bt.data(), mb, lens.data(), scale,
                           gws.data(), splits, nullptr);
  expect_close(got, want, p == MatmulPrecision::Highest ? 1e-4 : 5e-3,
               std::string("mla decode ") +
                   (cf_kind == cpu::MlaCache::FP8    ? "fp8"
                    : cf_kind == cpu::MlaCache::BF16 ? "bf16"
                                                     : "f32") +
                   " cache, nh=" + std::to_string(nh) + " dl=" + std::to_string(dl) + " splits=" + std::to_string(splits));
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

void prefill_case(int64_t nh, int64_t dn, int64_t dr, int64_t dv, std::vector<std::pair<int32_t, int32_t>> seqs) {
  cpu::set_matmul_precision(MatmulPrecision::Highest);
  cpu::MlaDims d;
  d.nh = nh, d.dn = dn, d.dr = dr, d.dv = dv, d.dl = 16;
  std::vector<int32_t> qs{0}, ks{0};
  for (auto [ql, kl] : seqs) qs.push_back(qs.back() + ql), ks.push_back(ks.back() + kl);
  const int64_t T = qs.back(), S = ks.back(), B = static_cast<int64_t>(seqs.size());
  std::vector<float> q(T * nh * (dn + dr)), kvb(S * nh * (dn + dv)), kpe(S * dr);
  for (auto* v : {&q, &kvb, &kpe})
    for (auto& x : *v) x = uni();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dn + dr));
  std::vector<float> want(T * nh * dv), got(T * nh * dv, NAN);
  cpu::mla_prefill(d, B, want.data(), q.data(), kvb.data(), kpe.data(), qs.data(), ks.data(), scale);
  std::vector<int32_t> ws(gpu::mla_prefill_workspace_ints(d, T, S, B));
  gpu::mla_prefill(d, B, T, S, got.data(), q.data(), kvb.data(), kpe.data(), qs.data(), ks.data(), scale, ws.data(), nullptr);
  expect_close(got, want, 1e-4, "mla prefill (CUDA cores) nh=" + std::to_string(nh) + " dv=" + std::to_string(dv));
  cpu::set_matmul_precision(MatmulPrecision::BF16);
}

}  // namespace

int main() {
  std::printf("longcat attention kernels under the emulator with ThreadSanitizer (warp-level races)\n");
  // The CPU oracle on one thread: the pool's workers synchronize through uninstrumented code (the
  // CPU objects are not built with -fsanitize=thread), which TSan would report as races of its own.
  lc::cpu::ThreadPool::global().set_threads(1);
  try {
    decode_case(3, 40, 8, 7, {70, 3}, cpu::MlaCache::F32, MatmulPrecision::Highest);   // CUDA cores, f32 cache
    decode_case(3, 40, 8, 7, {70, 3}, cpu::MlaCache::BF16, MatmulPrecision::Highest);  // CUDA cores, bf16 cache
    decode_case(2, 512, 64, 16, {40}, cpu::MlaCache::BF16, MatmulPrecision::BF16);     // tensor cores
    decode_case(3, 128, 8, 7, {70, 3}, cpu::MlaCache::FP8, MatmulPrecision::Highest);  // CUDA cores, fp8 cache
    decode_case(2, 512, 64, 16, {40}, cpu::MlaCache::FP8, MatmulPrecision::BF16);      // tensor cores, fp8 staging
    prefill_case(2, 5, 3, 4, {{3, 3}, {9, 40}});
  } catch (const lc::Error& e) {
    std::printf("FAIL: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}

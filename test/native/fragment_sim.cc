// The tensor-core kernels' index math, run on the CPU: every lane address, fragment and output
// coordinate comes from cuda/include/fragments.h (the functions the kernels call), while ldmatrix and mma
// are simulated from their PTX definitions (ISA: "ldmatrix", "Matrix Fragments for mma.m16n8k16"
// and "... m16n8k32"). Each simulation multiplies random tiles through the kernel's data flow and
// compares with a float64 product of the same values, so a wrong row, byte offset, tile pairing or
// fragment repack fails here, without a GPU. (What it cannot catch: a misreading of the PTX
// definitions themselves, and timing / synchronization; those need a card.)
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../cuda/include/fragments.h"
#include "check.h"
#include "cpu/numeric.h"

namespace lc::sim {

namespace frag = lc::gpu::frag;
using Regs = std::vector<std::array<uint32_t, 4>>;  // [lane][register]

uint16_t ld16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].b16: lane l supplies the address of row l % 8 of matrix
// l / 8; register i of lane l holds, of matrix i, row l / 4, elements 2 (l % 4), 2 (l % 4) + 1, or
// with .trans elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
Regs ldmatrix_x4(const std::vector<uint8_t>& smem, const std::vector<size_t>& addr, bool trans) {
  Regs r(32);
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < 32; ++l) {
      uint16_t lo, hi;
      if (!trans) {
        const uint8_t* row = &smem.at(addr[8 * i + l / 4]);
        lo = ld16(row + 4 * (l % 4));
        hi = ld16(row + 4 * (l % 4) + 2);
      } else {
        lo = ld16(&smem.at(addr[8 * i + 2 * (l % 4)] + 2 * (l / 4)));
        hi = ld16(&smem.at(addr[8 * i + 2 * (l % 4) + 1] + 2 * (l / 4)));
      }
      r[l][i] = lo | (static_cast<uint32_t>(hi) << 16);
    }
  return r;
}

double bf(uint32_t bits16) { return cpu::bf16_to_f32(static_cast<uint16_t>(bits16)); }
double e4(uint32_t byte) { return cpu::fp8e4m3_to_f32(static_cast<uint8_t>(byte)); }

// d += A (16 x K) * B (K x 8), element (row, col) of the m16n8 accumulator where lane l's
// register r holds it (PTX: row l / 4 + 8 (r / 2), column 2 (l % 4) + r % 2).
template <int K>
void add_product(std::vector<std::array<double, 4>>& d, const double (&A)[16][K], const double (&B)[K][8]) {
  for (int l = 0; l < 32; ++l)
    for (int r = 0; r < 4; ++r) {
      const int row = l / 4 + 8 * (r / 2), col = 2 * (l % 4) + (r % 2);
      double s = 0;
      for (int k = 0; k < K; ++k) s += A[row][k] * B[k][col];
      d[l][r] += s;
    }
}

// d (per lane 4 values) += A (16 x 16 bf16) * B (16 x 8 bf16), fragments per the PTX tables.
void mma_bf16(std::vector<std::array<double, 4>>& d, const Regs& a, const Regs& b, int b0, int b1) {
  double A[16][16] = {}, B[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, q = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * q, 2 * q, 2 * q + 8, 2 * q + 8};
    for (int i = 0; i < 4; ++i) A[rows[i]][cols[i]] = bf(a[l][i] & 0xffff), A[rows[i]][cols[i] + 1] = bf(a[l][i] >> 16);
    B[2 * q][g] = bf(b[l][b0] & 0xffff), B[2 * q + 1][g] = bf(b[l][b0] >> 16);
    B[2 * q + 8][g] = bf(b[l][b1] & 0xffff), B[2 * q + 9][g] = bf(b[l][b1] >> 16);
  }
  add_product(d, A, B);
}

// d += A (16 x 32 e4m3) * B (32 x 8 e4m3).
void mma_e4m3(std::vector<std::array<double, 4>>& d, const Regs& a, const Regs& b, int b0, int b1) {
  double A[16][32] = {}, B[32][8] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, q = l % 4;
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {4 * q, 4 * q, 4 * q + 16, 4 * q + 16};
    for (int i = 0; i < 4; ++i)
      for (int e = 0; e < 4; ++e) A[rows[i]][cols[i] + e] = e4((a[l][i] >> (8 * e)) & 0xff);
    for (int e = 0; e < 4; ++e) {
      B[4 * q + e][g] = e4((b[l][b0] >> (8 * e)) & 0xff);
      B[4 * q + 16 + e][g] = e4((b[l][b1] >> (8 * e)) & 0xff);
    }
  }
  add_product(d, A, B);
}

using Acc = std::vector<std::array<double, 4>>;  // one m16n8 accumulator tile, [lane][element]
Acc zero_acc() { return Acc(32, {0, 0, 0, 0}); }

std::mt19937 g_rng(7);
uint16_t rand_bf16() { return cpu::f32_to_bf16(std::uniform_real_distribution<float>(-1, 1)(g_rng)); }
uint8_t rand_e4m3() {
  uint8_t c = static_cast<uint8_t>(g_rng() % 254);
  return c >= 0x7f ? c + 1 : c;  // no NaN codes
}

struct Report {
  int passed = 0, failed = 0;
  void check(bool ok, const std::string& what) {
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAIL fragment simulation: %s\n", what.c_str());
    }
  }
};

// ---- tile_gemm.cuh: one CTA, two K stages (bf16: 64 elements, fp8: 128 = one scale block) --------
void sim_tile_gemm(Report& rep, bool fp8, bool gate_up) {
  constexpr int kBM = 64, kBN = 128, kPitch = 80;
  const int E = fp8 ? 16 : 8, stage = 4 * E, K = 2 * stage, esz = fp8 ? 1 : 2;
  // operands as stored bytes, [rows][K]
  std::vector<uint8_t> A(kBM * K * esz), B(kBN * K * esz);
  auto fill = [&](std::vector<uint8_t>& v) {
    for (size_t i = 0; i < v.size(); i += esz) {
      if (fp8)
        v[i] = rand_e4m3();
      else {
        const uint16_t h = rand_bf16();
        std::memcpy(&v[i], &h, 2);
      }
    }
  };
  fill(A);
  fill(B);
  auto val = [&](const std::vector<uint8_t>& v, int row, int k) {
    return fp8 ? e4(v[row * K + k]) : bf(ld16(&v[(row * K + k) * 2]));
  };
  std::vector<std::vector<Acc>> acc(4, std::vector<Acc>(16, zero_acc()));  // [warp][mi * 8 + ni]
  for (int s = 0; s < 2; ++s) {
    std::vector<uint8_t> sa(kBM * kPitch, 0xff), sb(kBN * kPitch, 0xff);  // poisoned: every byte read must be staged
    for (int tid = 0; tid < 128; ++tid) {
      const int part = frag::stage_part(tid), r0 = frag::stage_row(tid);
      const size_t src = (static_cast<size_t>(s) * stage + part * E) * esz;
      for (int i = 0; i < 2; ++i) std::memcpy(&sa[(r0 + 32 * i) * kPitch + part * 16], &A[(r0 + 32 * i) * K * esz + src], 16);
      for (int i = 0; i < 4; ++i) std::memcpy(&sb[(r0 + 32 * i) * kPitch + part * 16], &B[(r0 + 32 * i) * K * esz + src], 16);
    }
    for (int warp = 0; warp < 4; ++warp) {
      const int wm = frag::gemm_wm(warp), wn = frag::gemm_wn(warp);
      for (int ks = 0; ks < 2; ++ks) {
        Regs af[2];
        for (int mi = 0; mi < 2; ++mi) {
          std::vector<size_t> addr(32);
          for (int l = 0; l < 32; ++l) addr[l] = frag::gemm_a_ldm_row(wm, mi, l) * kPitch + ks * 32 + frag::a_col16(l) * 16;
          af[mi] = ldmatrix_x4(sa, addr, false);
        }
        for (int np = 0; np < 4; ++np) {
          std::vector<size_t> addr(32);
          for (int l = 0; l < 32; ++l)
            addr[l] = (frag::gemm_brow(np, wn, gate_up) + frag::b_row(l)) * kPitch + ks * 32 + frag::b_col16(l) * 16;
          const Regs bfr = ldmatrix_x4(sb, addr, false);
          for (int mi = 0; mi < 2; ++mi) {
            (fp8 ? mma_e4m3 : mma_bf16)(acc[warp][mi * 8 + 2 * np], af[mi], bfr, 0, 1);
            (fp8 ? mma_e4m3 : mma_bf16)(acc[warp][mi * 8 + 2 * np + 1], af[mi], bfr, 2, 3);
          }
        }
      }
    }
  }
  // fp8: the one 128-wide K block ends; its sums are scaled by a_scale[row] * b_scale (gate or up)
  std::vector<double> a_scale(kBM);
  for (auto& v : a_scale) v = std::uniform_real_distribution<double>(0.5, 2)(g_rng);
  const double b_scale[2] = {0.75, 1.25};
  if (fp8)
    for (int warp = 0; warp < 4; ++warp)
      for (int l = 0; l < 32; ++l)
        for (int mi = 0; mi < 2; ++mi)
          for (int ni = 0; ni < 8; ++ni)
            for (int r = 0; r < 4; ++r)
              acc[warp][mi * 8 + ni][l][r] *=
                  a_scale[frag::gemm_acc_row(frag::gemm_wm(warp), mi, l, r)] * b_scale[gate_up && ni >= 4 ? 1 : 0];
  // epilogue: every output written once, equal to the float64 product (gate/up: silu(gate) * up)
  const int ncols = gate_up ? 64 : 128;
  std::vector<double> out(kBM * ncols, NAN);
  std::vector<int> writes(kBM * ncols, 0);
  for (int warp = 0; warp < 4; ++warp) {
    const int wm = frag::gemm_wm(warp), wn = frag::gemm_wn(warp);
    for (int l = 0; l < 32; ++l)
      for (int mi = 0; mi < 2; ++mi)
        for (int h = 0; h < 2; ++h)
          for (int ni = 0; ni < (gate_up ? 4 : 8); ++ni)
            for (int j = 0; j < 2; ++j) {
              const int r = frag::gemm_acc_row(wm, mi, l, 2 * h), c = frag::gemm_acc_col(wn, ni, l, j, gate_up);
              const double g = acc[warp][mi * 8 + ni][l][2 * h + j];
              out[r * ncols + c] = gate_up ? g / (1 + std::exp(-g)) * acc[warp][mi * 8 + ni + 4][l][2 * h + j] : g;
              ++writes[r * ncols + c];
            }
  }
  double worst = 0;
  bool once = true;
  for (int r = 0; r < kBM; ++r)
    for (int c = 0; c < ncols; ++c) {
      auto dot = [&](int brow) {
        double s = 0;
        for (int k = 0; k < K; ++k) s += val(A, r, k) * val(B, brow, k);
        return fp8 ? s * a_scale[r] * b_scale[gate_up && brow >= 64 ? 1 : 0] : s;
      };
      const double want = gate_up ? [&] { const double g = dot(c); return g / (1 + std::exp(-g)) * dot(64 + c); }() : dot(c);
      const double got = out[r * ncols + c];
      worst = std::isnan(got) ? INFINITY : std::max(worst, std::fabs(got - want) / (1 + std::fabs(want)));
      once = once && writes[r * ncols + c] == 1;
    }
  rep.check(once && worst < 1e-9, std::string("tile_gemm ") + (fp8 ? "e4m3" : "bf16") + (gate_up ? " gate/up" : " dense") +
                                      " (worst relative error " + std::to_string(worst) +
                                      (once ? ")" : ", outputs not written exactly once)"));
}

// ---- mla_decode_tc.cu: S = Q K^T over a 32-token tile, then O = P V ---------------------------------
void sim_mla_decode(Report& rep) {
  constexpr int kHeads = 64, kTok = 32, kRow = 576, kDL = 512, kPitch = kRow * 2 + 16, kPPitch = (kTok + 8) * 2;
  std::vector<uint8_t> qs(kHeads * kPitch, 0xff), ks(kTok * kPitch, 0xff), ps(kHeads * kPPitch, 0xff);
  for (int h = 0; h < kHeads; ++h)
    for (int c = 0; c < kRow; ++c) {
      const uint16_t v = rand_bf16();
      std::memcpy(&qs[h * kPitch + 2 * c], &v, 2);
    }
  for (int t = 0; t < kTok; ++t)
    for (int c = 0; c < kRow; ++c) {
      const uint16_t v = rand_bf16();
      std::memcpy(&ks[t * kPitch + 2 * c], &v, 2);
    }
  for (int h = 0; h < kHeads; ++h)
    for (int t = 0; t < kTok; ++t) {
      const uint16_t v = rand_bf16();
      std::memcpy(&ps[h * kPPitch + 2 * t], &v, 2);
    }
  auto q = [&](int h, int c) { return bf(ld16(&qs[h * kPitch + 2 * c])); };
  auto k = [&](int t, int c) { return bf(ld16(&ks[t * kPitch + 2 * c])); };
  auto p = [&](int h, int t) { return bf(ld16(&ps[h * kPPitch + 2 * t])); };

  // Each warp's K-quarter partial, then the kernel's fixed-order sum (S0 + S1) + (S2 + S3).
  std::vector<double> Sq(4 * kHeads * kTok, NAN);
  for (int warp = 0; warp < 8; ++warp) {
    const int mh = frag::dec_s_mh(warp), kq = frag::dec_s_kq(warp);
    Acc sf[2][4];
    for (auto& row : sf)
      for (auto& a : row) a = zero_acc();
    for (int k16 = 9 * kq; k16 < 9 * kq + 9; ++k16) {
      Regs a[2], b[2];
      for (int mi = 0; mi < 2; ++mi) {
        std::vector<size_t> aa(32);
        for (int l = 0; l < 32; ++l) aa[l] = (32 * mh + 16 * mi + frag::a_row(l)) * kPitch + k16 * 32 + frag::a_col16(l) * 16;
        a[mi] = ldmatrix_x4(qs, aa, false);
      }
      for (int n16 = 0; n16 < 2; ++n16) {
        std::vector<size_t> ba(32);
        for (int l = 0; l < 32; ++l) ba[l] = (16 * n16 + frag::b_row(l)) * kPitch + k16 * 32 + frag::b_col16(l) * 16;
        b[n16] = ldmatrix_x4(ks, ba, false);
      }
      for (int mi = 0; mi < 2; ++mi)
        for (int n16 = 0; n16 < 2; ++n16) {
          mma_bf16(sf[mi][2 * n16], a[mi], b[n16], 0, 1);
          mma_bf16(sf[mi][2 * n16 + 1], a[mi], b[n16], 2, 3);
        }
    }
    for (int l = 0; l < 32; ++l)
      for (int mi = 0; mi < 2; ++mi)
        for (int nj = 0; nj < 4; ++nj)
          for (int r = 0; r < 4; ++r) {
            double& slot = Sq[(kq * kHeads + 32 * mh + 16 * mi + frag::c_row(l, r)) * kTok + 8 * nj + frag::c_col(l, r)];
            if (!std::isnan(slot))
              slot = INFINITY;  // written twice: a mapping bug
            else
              slot = sf[mi][nj][l][r];
          }
  }
  std::vector<double> S(kHeads * kTok);
  for (int i = 0; i < kHeads * kTok; ++i)
    S[i] = (Sq[i] + Sq[kHeads * kTok + i]) + (Sq[2 * kHeads * kTok + i] + Sq[3 * kHeads * kTok + i]);
  double worst = lc::harness::max_product_error(
      kHeads, kTok, kRow, [&](int h, int t) { return S[h * kTok + t]; }, q, [&](int c, int t) { return k(t, c); });
  rep.check(worst < 1e-9, "mla_decode_tc S = Q K^T (worst " + std::to_string(worst) + ")");

  std::vector<double> O(kHeads * kDL, NAN);
  for (int warp = 0; warp < 8; ++warp) {
    std::vector<Acc> acc(4 * 8, zero_acc());
    for (int k16 = 0; k16 < kTok / 16; ++k16) {
      Regs pa[4];
      for (int mi = 0; mi < 4; ++mi) {
        std::vector<size_t> aa(32);
        for (int l = 0; l < 32; ++l) aa[l] = (16 * mi + frag::a_row(l)) * kPPitch + k16 * 32 + frag::a_col16(l) * 16;
        pa[mi] = ldmatrix_x4(ps, aa, false);
      }
      for (int np = 0; np < 4; ++np) {
        std::vector<size_t> va(32);
        for (int l = 0; l < 32; ++l) va[l] = (16 * k16 + frag::bt_row(l)) * kPitch + frag::dec_v_col(warp, np, l) * 2;
        const Regs vb = ldmatrix_x4(ks, va, true);
        for (int mi = 0; mi < 4; ++mi) {
          mma_bf16(acc[mi * 8 + 2 * np], pa[mi], vb, 0, 1);
          mma_bf16(acc[mi * 8 + 2 * np + 1], pa[mi], vb, 2, 3);
        }
      }
    }
    for (int l = 0; l < 32; ++l)
      for (int mi = 0; mi < 4; ++mi)
        for (int nj = 0; nj < 8; ++nj)
          for (int r = 0; r < 4; ++r)
            O[(16 * mi + frag::c_row(l, r)) * kDL + frag::dec_o_col(warp, nj, l, r)] = acc[mi * 8 + nj][l][r];
  }
  worst = lc::harness::max_product_error(
      kHeads, kDL, kTok, [&](int h, int c) { return O[h * kDL + c]; }, p, k);
  rep.check(worst < 1e-9, "mla_decode_tc O = P V (ldmatrix.trans) (worst " + std::to_string(worst) + ")");
}

// ---- mla_prefill_tc.cu: S = Q K^T, then P (the score fragments, repacked) times V -------------------
void sim_mla_prefill(Report& rep) {
  constexpr int kQ = 64, kKeys = 64, kDK = 192, kDV = 128, kKPitch = kDK * 2 + 16, kVPitch = kDV * 2 + 16;
  std::vector<uint8_t> qs(kQ * kKPitch, 0xff), ks(kKeys * kKPitch, 0xff), vs(kKeys * kVPitch, 0xff);
  auto fill = [&](std::vector<uint8_t>& m, int rows, int cols, int pitch) {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const uint16_t v = rand_bf16();
        std::memcpy(&m[r * pitch + 2 * c], &v, 2);
      }
  };
  fill(qs, kQ, kDK, kKPitch);
  fill(ks, kKeys, kDK, kKPitch);
  fill(vs, kKeys, kDV, kVPitch);
  auto at = [&](const std::vector<uint8_t>& m, int pitch, int r, int c) { return bf(ld16(&m[r * pitch + 2 * c])); };
  double worst_s = 0, worst_o = 0;
  for (int warp = 0; warp < 4; ++warp) {
    Regs qf[kDK / 16];
    for (int k16 = 0; k16 < kDK / 16; ++k16) {
      std::vector<size_t> aa(32);
      for (int l = 0; l < 32; ++l) aa[l] = (16 * warp + frag::a_row(l)) * kKPitch + k16 * 32 + frag::a_col16(l) * 16;
      qf[k16] = ldmatrix_x4(qs, aa, false);
    }
    std::vector<Acc> sf(kKeys / 8, zero_acc());
    for (int k16 = 0; k16 < kDK / 16; ++k16)
      for (int np = 0; np < kKeys / 16; ++np) {
        std::vector<size_t> ba(32);
        for (int l = 0; l < 32; ++l) ba[l] = (16 * np + frag::b_row(l)) * kKPitch + k16 * 32 + frag::b_col16(l) * 16;
        const Regs b = ldmatrix_x4(ks, ba, false);
        mma_bf16(sf[2 * np], qf[k16], b, 0, 1);
        mma_bf16(sf[2 * np + 1], qf[k16], b, 2, 3);
      }
    // S, and P = S rounded to bf16 (the kernel packs exp(S - m); any values exercise the repack)
    std::vector<double> P(16 * kKeys);
    for (int l = 0; l < 32; ++l)
      for (int nj = 0; nj < kKeys / 8; ++nj)
        for (int r = 0; r < 4; ++r) {
          const int row = frag::c_row(l, r), key = 8 * nj + frag::c_col(l, r);
          double want = 0;
          for (int c = 0; c < kDK; ++c) want += at(qs, kKPitch, 16 * warp + row, c) * at(ks, kKPitch, key, c);
          worst_s = std::max(worst_s, std::fabs(sf[nj][l][r] - want) / (1 + std::fabs(want)));
          P[row * kKeys + key] = bf(cpu::f32_to_bf16(static_cast<float>(sf[nj][l][r])));
        }
    std::vector<Acc> acc(kDV / 8, zero_acc());
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      Regs pa(32);
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) {
          const auto& f = sf[2 * kk + frag::pre_tile(i)][l];
          pa[l][i] = cpu::f32_to_bf16(static_cast<float>(f[frag::pre_elem(i)])) |
                     (static_cast<uint32_t>(cpu::f32_to_bf16(static_cast<float>(f[frag::pre_elem(i) + 1]))) << 16);
        }
      for (int np = 0; np < kDV / 16; ++np) {
        std::vector<size_t> va(32);
        for (int l = 0; l < 32; ++l) va[l] = (16 * kk + frag::bt_row(l)) * kVPitch + (16 * np + 8 * frag::bt_col8(l)) * 2;
        const Regs vb = ldmatrix_x4(vs, va, true);
        mma_bf16(acc[2 * np], pa, vb, 0, 1);
        mma_bf16(acc[2 * np + 1], pa, vb, 2, 3);
      }
    }
    for (int l = 0; l < 32; ++l)
      for (int nj = 0; nj < kDV / 8; ++nj)
        for (int r = 0; r < 4; ++r) {
          const int row = frag::c_row(l, r), col = 8 * nj + frag::c_col(l, r);
          double want = 0;
          for (int key = 0; key < kKeys; ++key) want += P[row * kKeys + key] * at(vs, kVPitch, key, col);
          const double got = acc[nj][l][r];
          worst_o = std::isnan(got) ? INFINITY : std::max(worst_o, std::fabs(got - want) / (1 + std::fabs(want)));
        }
  }
  rep.check(worst_s < 1e-9, "mla_prefill_tc S = Q K^T (worst " + std::to_string(worst_s) + ")");
  rep.check(worst_o < 1e-9,
            "mla_prefill_tc O = P V, P repacked from the score fragments (worst " + std::to_string(worst_o) + ")");
}

}  // namespace lc::sim

// Runs every simulation; returns the number of failures.
int run_fragment_simulations(int& passed) {
  lc::sim::Report rep;
  for (bool fp8 : {false, true})
    for (bool gate_up : {false, true}) lc::sim::sim_tile_gemm(rep, fp8, gate_up);
  lc::sim::sim_mla_decode(rep);
  lc::sim::sim_mla_prefill(rep);
  std::printf("fragment simulations (tensor-core index math vs PTX fragment definitions, on the CPU): %d passed, %d failed\n",
              rep.passed, rep.failed);
  passed += rep.passed;
  return rep.failed;
}

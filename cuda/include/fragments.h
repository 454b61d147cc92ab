// Where each lane's data lives in the tensor-core kernels (tile_gemm.cuh, mla_decode_tc.cu,
// mla_prefill_tc.cu): the per-lane ldmatrix row addresses and accumulator coordinates of
// mma.m16n8k16 / m16n8k32, and how each kernel composes them into its tiles. Plain C++ (no CUDA
// headers), so that test/native's fragment simulator runs the very same index math on the CPU
// against the PTX fragment definitions (ISA "Matrix Fragments for mma.m16n8k16 / m16n8k32",
// "ldmatrix").
#pragma once

#include "../../native/cpu/host_device.h"

namespace lc::gpu::frag {

// ---- ldmatrix.x4 addressing: lane l supplies row (l % 8) of matrix (l / 8) -------------------------

// A operand, a 16 x 16 b16 tile (16 x 32 bytes) stored [row][k]: matrices (rows 0-7 | 8-15) x
// (bytes 0-15 | 16-31) give a[0..3].
LC_HD int a_row(int lane) { return lane & 15; }
LC_HD int a_col16(int lane) { return lane >> 4; }  // 16-byte column block
// B operand of two n8 tiles stored [n][k] (K-major): matrices (n 0-7, k bytes 0-15), (n 0-7, 16-31),
// (n 8-15, 0-15), (n 8-15, 16-31) give b0, b1 of the first n8 tile, then of the second.
LC_HD int b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
LC_HD int b_col16(int lane) { return (lane >> 3) & 1; }
// B operand of two n8 tiles stored [k][n] (ldmatrix.trans): rows are k 0-15, 8-element column
// blocks are the two n8 tiles.
LC_HD int bt_row(int lane) { return lane & 15; }
LC_HD int bt_col8(int lane) { return lane >> 4; }

// ---- accumulator element r (0..3) of an m16n8 tile ----------------------------------------------
LC_HD int c_row(int lane, int r) { return (lane >> 2) + 8 * (r >> 1); }
LC_HD int c_col(int lane, int r) { return 2 * (lane & 3) + (r & 1); }

// ---- tile_gemm.cuh: 128 threads, 4 warps as 2 (M) x 2 (N), warp tile 32 x 64 -----------------------
// Staging: thread tid moves 16-byte chunk stage_part(tid) of rows stage_row(tid) + 32 i.
LC_HD int stage_part(int tid) { return tid & 3; }
LC_HD int stage_row(int tid) { return tid >> 2; }
LC_HD int gemm_wm(int warp) { return warp & 1; }
LC_HD int gemm_wn(int warp) { return warp >> 1; }
// first B row (of 16) of n8 tile pair np; gate/up tiles hold gate rows 0-63 and up rows 64-127, a
// warp takes the same 32 columns of both
LC_HD int gemm_brow(int np, int wn, bool gate_up) {
  return gate_up ? (np >> 1) * 64 + wn * 32 + (np & 1) * 16 : wn * 64 + np * 16;
}
LC_HD int gemm_a_ldm_row(int wm, int mi, int lane) { return wm * 32 + mi * 16 + a_row(lane); }
LC_HD int gemm_acc_row(int wm, int mi, int lane, int r) { return wm * 32 + mi * 16 + c_row(lane, r); }
// output column of accumulator (ni, r); for gate/up only ni < 4 (gate), paired with ni + 4 (up)
LC_HD int gemm_acc_col(int wn, int ni, int lane, int r, bool gate_up) {
  return (gate_up ? wn * 32 : wn * 64) + ni * 8 + c_col(lane, r);
}

// ---- mla_decode_tc.cu: 8 warps, 64 heads, 32-token tiles --------------------------------------------
// S = Q K^T: warp -> heads 32 (warp % 2) .., all 32 tokens, K quarter warp / 2 (k16 steps 9 kq ..)
LC_HD int dec_s_mh(int warp) { return warp & 1; }
LC_HD int dec_s_kq(int warp) { return warp >> 1; }
// O += P V: warp -> latent columns 64 warp ..
LC_HD int dec_o_col(int warp, int nj, int lane, int r) { return 64 * warp + 8 * nj + c_col(lane, r); }
LC_HD int dec_v_col(int warp, int np, int lane) { return 64 * warp + 16 * np + 8 * bt_col8(lane); }

// ---- mla_prefill_tc.cu: 4 warps, 16 queries each, 64-key tiles ---------------------------------------
// The score fragments of keys 16 kk .. 16 kk + 15 (n8 tiles 2 kk, 2 kk + 1) become the A fragment
// of PV step kk: a[i] = (sf[2 kk + pre_tile(i)][pre_elem(i)], sf[...][pre_elem(i) + 1]).
LC_HD int pre_tile(int i) { return i >> 1; }
LC_HD int pre_elem(int i) { return 2 * (i & 1); }

}  // namespace lc::gpu::frag

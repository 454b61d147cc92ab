// CUDA launcher of the grouped-expert MoE with zero experts (contract: native/cpu/moe.h moe()).
// Plain C++ (no CUDA headers): included by native/ops/moe.cc.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../native/dtype.h"

namespace lc::gpu {

// One routed expert weight in the device-side table a MoeExpertSet uploads once: data / scale are
// device pointers with lc::cpu::WeightRef's meaning (fp8_e4m3: 128x128 block scales
// [ceil(rows/128), ceil(cols/128)]; int8: per-row scales; int4: group scales). The table is [3 * n_routed]:
// gate[0..n), up[0..n), down[0..n).
struct MoeWeight {
  const void* data = nullptr;
  const float* scale = nullptr;
  DType dtype = DType::F32;
  // int4 (lc::cpu::WeightRef's fields)
  const uint16_t* group_scale = nullptr;
  int64_t group = 0;
  bool group_scale_f16 = false, group_zero = false;
  // gate entries only: null, or the expert's act-order input permutation int32 [h] (cpu::MoeExperts::perm)
  const int32_t* perm = nullptr;
};

// Bytes of device workspace moe() needs (256-byte aligned pointer expected, e.g. a pool block).
// `permuted`: some gate entry of the table has a perm (a gathered copy of the routed rows is made;
// fp8 must then be false).
size_t moe_workspace_bytes(int64_t t, int64_t k, int64_t h, int64_t inter, int64_t n_routed, bool fp8, bool permuted);

// cpu::moe on the GPU, entirely on the device (no host round trip): count slots per expert
// (atomics), exclusive scan to offsets, stable placement of slots in (expert, slot) order,
// gate/up GEMM with the SwiGLU epilogue and the down GEMM over the contiguous expert rows (each
// tile's expert read from the tile schedule, its weights from `table`), then a per-token combine in
// ascending (expert, slot) order with the zero-expert term last, fp32, deterministic.
// GEMM paths: decode-sized batches (at most 16 slots per routed expert on average) use 8-row tiles
// on CUDA cores, streaming each expert's weights once; larger ones 64-row tiles on tensor cores
// (bf16; fp32 CUDA cores at matmul precision 'highest'; with `fp8` -- every expert fp8, precision
// 'fp8', sm_89+ -- u and the SwiGLU output are quantized to e4m3 1x128 groups and the e4m3 tensor
// cores run with per-128-K-block promotion). int4 experts: the element-wise skinny path for decode,
// and in bf16 mode the tensor-core tiles with the codes dequantized to bf16 in the register hop.
// u, out: f32 [t, h]; idx int32 / w f32 [t, k]; table: device [3 * n_routed] (may be null when
// n_routed == 0). An idx outside [0, n_experts) makes the whole call a no-op on the device (out left
// untouched, like the CPU kernel; the CPU binding also raises E_ARGUMENT, the GPU cannot without a
// synchronization). Throws E_SHAPE for k > 8192 (combine's shared-memory order list).
void moe(int64_t t, int64_t k, int64_t h, int64_t inter, const float* u, const int32_t* idx, const float* w,
         const MoeWeight* table, int64_t n_routed, int64_t n_experts, float* out, bool fp8, bool permuted, void* workspace,
         size_t workspace_bytes, void* stream);

}  // namespace lc::gpu

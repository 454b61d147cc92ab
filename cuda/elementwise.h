// CUDA launchers of the small ops (contracts: native/cpu/elementwise.h, quant.h convert,
// sampling.h). Device pointers, `stream` is a cudaStream_t; launchers never allocate or sync.
#pragma once
#include <cstdint>

#include "../native/cpu/sampling.h"
#include "../native/dtype.h"

namespace lc::gpu {

// cpu::embedding, except that ids outside [0, V) cannot raise an error from a kernel: their rows
// of y are written as zeros (the model validates ids on the host before they are uploaded).
void embedding(int64_t T, int64_t H, const void* table, DType tt, int64_t V, const int32_t* ids, float* y, void* stream);

void silu_mul(int64_t n, const float* gate, const float* up, float* y, void* stream);
// y = fma(alpha, b, a) (exact a + b when alpha == 1), as the CPU's AVX paths compute it.
void add(int64_t n, const float* a, const float* b, float alpha, float* y, void* stream);
void scale(int64_t n, const float* x, float alpha, float* y, void* stream);
// cpu::scale_groups (bit-exact: one IEEE multiply per element).
void scale_groups(int64_t rows, int64_t cols, const float* x, const float* scales, int64_t r, int64_t group, float* y,
                  void* stream);
// cpu::convert, bit-exact (same dtype: a device-to-device copy).
void convert(int64_t n, const void* src, DType st, void* dst, DType dt, void* stream);
void argmax(int64_t rows, int64_t V, const float* x, int32_t* idx, void* stream);
void softmax(int64_t rows, int64_t V, const float* x, float* y, bool log, void* stream);

// Bytes of workspace gpu::sample needs to run all rows in parallel (it runs with less: rows are
// then processed `workspace_bytes / (4 V)` at a time, at least one row needs 4 V bytes).
int64_t sample_workspace_bytes(int64_t rows, int64_t V);
// cpu::sample's filters and RNG on the GPU, one block per row; see elementwise.cu for where the draw
// can differ from the CPU's. Needs workspace_bytes >= 4 * V when temperature > 0.
void sample(int64_t rows, int64_t V, const float* logits, const cpu::SampleParams& p, int32_t* ids, void* workspace,
            int64_t workspace_bytes, void* stream);

// Bytes of workspace gpu::sample_speculative needs to run all B sequences in parallel (with less,
// sequences take turns; one sequence needs 4 V bytes).
int64_t sample_speculative_workspace_bytes(int64_t B, int64_t V);
// cpu::sample_speculative's rule, one block per sequence. Greedy sequences are bit-exact with the
// CPU; sampled ones use gpu::sample's filters and integer masses (accept iff floor(u_A * total) <
// mass(d)), so they follow the same distribution with the same uniforms but can pick other tokens
// (see elementwise.cu). Inputs are not validated (a kernel cannot raise an error): a draft outside
// [0, V) is never accepted, a negative position gives step = position + 1 modulo 2^64, and the
// parameters are clamped: temperature NaN, <= 0 or +inf -> greedy; topK < 0 -> 0 (off); topP NaN
// or >= 1 -> off, topP <= 0 keeps only the most likely token; minP NaN or <= 0 -> off, > 1 -> 1.
void sample_speculative(int64_t B, int64_t k, int64_t V, const float* logits, const int32_t* drafts, const int32_t* positions,
                        const int32_t* params, int32_t* tokens, int32_t* accepted, void* workspace, int64_t workspace_bytes,
                        void* stream);
// Bytes of workspace gpu::penalize needs to run all R rows in parallel (with less, rows take
// turns; one row needs 8 V bytes).
int64_t penalize_workspace_bytes(int64_t R, int64_t V);
// cpu::penalize, bit-exact, without its checks: history and bias ids outside [0, V) count for
// nothing, prompt lengths and parameters are used as they are.
void penalize(int64_t R, int64_t V, int64_t H, int64_t nb, float* logits, const int32_t* history, const int32_t* prompt_lengths,
              const float* params, const int32_t* bias_ids, const float* bias_values, void* workspace, int64_t workspace_bytes,
              void* stream);
// cpu::logprobs: the same ids; values within the f64 sum's order and exp / log implementations.
// A chosen id outside [0, V) gets a NaN log-probability instead of the CPU's E_ARGUMENT.
void logprobs(int64_t R, int64_t V, int64_t k, const float* logits, const int32_t* chosen, float* out, int32_t* out_ids,
              void* stream);
// cpu::select_accepted (bit-exact).
void select_accepted(int64_t B, int64_t k, const int32_t* candidates, const int32_t* accepted, int32_t* out, void* stream);

}  // namespace lc::gpu

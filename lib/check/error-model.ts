// The error model every parity tolerance of the op-case table (lib/check/op-cases.ts) is computed from:
// how each side of a comparison (the reference and the device under test: the CPU at another ISA,
// the emulated device, a GPU) may round, stated up front, so that a first run on a real card does
// not fail on tolerances tuned to what the emulator happened to produce.
//
// Dot products (every GEMM, the attention scores and the weighted value sums). One side computes
// y = sum_k a_k b_k of K terms with
//   * operands possibly rounded to a format of unit roundoff u_op before the product (bf16 tensor
//     cores: 2^-8; fp32 operands that are scaled on the way in: 2^-24),
//   * partial sums kept in an accumulator of unit roundoff u_acc, in ANY order, with fused or split
//     multiply-adds: IEEE fp32 is 2^-24; tensor cores do not add in sequential IEEE fp32 (products are
//     aligned to the largest exponent and the sum truncated), so their fp32 accumulator is assumed to
//     lose one more bit, 2^-23; Hopper's e4m3 MMA is reported to keep only about 14 significant bits
//     (DeepGEMM), so it is assumed to be 2^-13,
//   * partials promoted into an IEEE fp32 total every P products (our fp8 tensor-core GEMM adds each
//     128-wide K group's MMA result into fp32 with the group's scales: P = 128; elsewhere P = K).
// Standard worst-case analysis (Higham, Accuracy and Stability, 3.1) bounds that side's error by
//   |y^ - y| <= eps(K) * sum_k |a_k| |b_k|,
//   eps(K) = (1 + u_op)^2 - 1 + gamma(min(K, P), u_acc) + [K > P] (u32 + gamma(ceil(K / P), u32)),
//   gamma(n, u) = n u / (1 - n u),
// and two sides differ by at most (eps_ref(K) + eps_dut(K)) * sum_k |a_k| |b_k|. The magnitude
// sum_k |a_k| |b_k| is computed per output element (the same op run on |inputs|, or a host bound for
// attention), so a small element is held to its own scale, not to the largest one.
// Elementwise ops: a stated number of fp32 roundings per element (exp: CUDA expf <= 2 ulp, the CPU's
// polynomial about as good; 4 ulp are assumed per side), relative to the element itself.
// Ops that are bit-exact by construction (copies, conversions, the quantizers, which are documented
// twins of each other) get a bound of zero.
// These are worst-case bounds, so they are loose against random-walk rounding; they still catch real
// bugs (a dropped scale, a skipped block, a wrong index), which are errors of the order of the
// values themselves: test/op-cases.test.ts plants such bugs and checks that the bound catches them.

/** Unit roundoff of IEEE fp32 (round to nearest). */
export const U32 = 2 ** -24;
/** Unit roundoff of bf16 (8 significant bits). */
export const U_BF16 = 2 ** -8;
/** Unit roundoff of e4m3 (4 significant bits) in its normal range. */
export const U_E4M3 = 2 ** -4;
/** Assumed unit roundoff of a tensor core's fp32 accumulator: truncating adds, one bit lost. */
export const U_TC_F32 = 2 ** -23;
/** Assumed unit roundoff of Hopper's e4m3 MMA accumulator (about 14 significant bits, truncating). */
export const U_TC_E4M3 = 2 ** -13;
/** Relative error assumed for one exp on either side (expf <= 2 ulp; a margin for the argument's rounding). */
export const EXP_REL = 4 * U32;
/** An absolute floor per element: results near fp32's subnormal range round in absolute terms. */
export const FLOOR = 2 ** -120;

export type Backend = 'cpu' | 'cuda';
/** How a GEMM multiplies: fp32 products, bf16 operands (tensor cores / AVX512-BF16), e4m3 operands. */
export type GemmMode = 'highest' | 'bf16' | 'fp8';

/** How one side may evaluate a dot product (see the model above). */
export interface Arithmetic {
  /** Unit roundoff of the rounding an operand may get before its product. */
  operand: number;
  /** Unit roundoff of the accumulator. */
  accumulator: number;
  /** Products summed in the accumulator before the partial joins an IEEE fp32 total (Infinity: never). */
  promote: number;
}

export function gamma(n: number, u: number): number {
  const nu = n * u;
  if (nu >= 0.5) throw new Error(`error model: n u = ${nu} is too large for a meaningful bound`);
  return nu / (1 - nu);
}

/**
 * The arithmetic of one side's GEMM in `mode`. The CPU always accumulates in IEEE fp32 (AVX2 /
 * AVX-512 lanes or scalar, in any order); at 'bf16' it may round activations to bf16 (AVX512-BF16);
 * its 'fp8' GEMM sums e4m3 products exactly in fp32. CUDA cores ('highest' on the GPU, and the
 * skinny decode paths, whatever the precision) are IEEE fp32; tensor cores are not (U_TC_*).
 * In 'fp8' mode both sides quantize the same activations with bit-exact quantizers, so the e4m3
 * operands are equal on both sides and only the scale products round.
 */
export function arithmetic(backend: Backend, mode: GemmMode): Arithmetic {
  if (mode === 'highest') return { operand: U32, accumulator: U32, promote: Infinity };
  if (mode === 'bf16') return { operand: U_BF16, accumulator: backend === 'cuda' ? U_TC_F32 : U32, promote: Infinity };
  return backend === 'cuda'
    ? { operand: U32, accumulator: U_TC_E4M3, promote: 128 }
    : { operand: U32, accumulator: U32, promote: Infinity };
}

/** eps(K) of the model: one side's error in a K-term dot product, relative to sum |a_k| |b_k|. */
export function dotError(a: Arithmetic, K: number): number {
  const P = Math.min(K, a.promote);
  const groups = Math.ceil(K / P);
  return (1 + a.operand) ** 2 - 1 + gamma(P, a.accumulator) + (groups > 1 ? U32 + gamma(groups, U32) : 0);
}

/**
 * Per-element bounds for a contraction of length K between two sides: (eps_ref + eps_dut) times the
 * element's magnitude sum |a| |b| (itself computed in fp32: its own relative error, gamma(K, u32), is
 * added on top).
 */
export function dotBound(ref: Arithmetic, dut: Arithmetic, K: number, magnitude: ArrayLike<number>): Float64Array {
  const c = (dotError(ref, K) + dotError(dut, K)) * (1 + gamma(K, U32));
  return Float64Array.from(magnitude, m => c * Math.abs(m) + FLOOR);
}

/** Per-element bounds `rel * |want| + FLOOR`: an op whose result is rounded a fixed number of times. */
export function relativeBound(want: ArrayLike<number>, rel: number): Float64Array {
  return Float64Array.from(want, w => rel * Math.abs(w) + FLOOR);
}

/** A bound per element (one number: the same for every element; 0: bit-exact). */
export type Bound = number | Float64Array;

/**
 * The worst ratio |got - want| / bound over the elements (a pass is <= 1), and where it is. NaN in
 * both counts as equal; NaN in one, or any difference where the bound is 0, is Infinity.
 */
export function boundExcess(got: ArrayLike<number>, want: ArrayLike<number>, bound: Bound): { ratio: number; index: number } {
  if (got.length !== want.length) return { ratio: Infinity, index: -1 };
  let ratio = 0,
    index = -1;
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!,
      w = want[i]!;
    if (g === w || (Number.isNaN(g) && Number.isNaN(w))) continue;
    const b = typeof bound === 'number' ? bound : bound[i]!;
    const e = Math.abs(g - w);
    const r = Number.isNaN(e) ? Infinity : b > 0 ? e / b : Infinity;
    if (r > ratio) {
      ratio = r;
      index = i;
    }
  }
  return { ratio, index };
}

// Declarations of the attention ops: rope, the MLA prefill and absorbed decode, the latent cache.
import type { Tensor, Stream } from './native.js';

type S = Stream | null | undefined;

/**
 * MLA attention (SPEC 3.5, 5.2) and RoPE (SPEC 3.6). Dimensions are generic: nh heads,
 * dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim, dl = kv_lora_rank.
 * Activations are f32. The paged latent cache is f32 or bf16, shaped [numBlocks, blockSize, dl + dr]
 * (c_kv | k_pe per token), or fp8_e4m3 shaped [numBlocks, blockSize, dl + 4 dl / 128 + 2 dr] bytes:
 * FlashMLA's quantized rows (c_kv in e4m3, one f32 scale max|group| / 448 per 128 values, k_pe in
 * bf16; 656 bytes at 512 + 64; dl a multiple of 128 and dr even, else E_SHAPE; the layout:
 * native/cpu/mla.h MlaCache). Token slot s lives in block s / blockSize, row s % blockSize.
 * Index tensors are int32 and are read when the op runs: bad values (slots, block ids, lengths)
 * raise typed errors (E_ARGUMENT) at the next synchronize of the stream / toBytes() on the CPU.
 * The CUDA twins (cuda/rope.cu, mla_cache.cu, mla.cu; not yet run on a GPU) cannot raise from the
 * device: they never read or write out of bounds, skip bad slots and read bad blocks as zeros.
 */
export interface AttentionOps {
  /**
   * In-place interleaved RoPE on x f32 [T, nHeads, headDim]: pair i = channels
   * (ropeOffset + 2i, ropeOffset + 2i + 1) rotated by float32(positions[t] * invFreq[i]);
   * cos/sin are multiplied by attentionFactor (YaRN mscale ratio, default 1).
   * invFreq f32 [ropeDim / 2]; positions int32 [T].
   */
  rope(stream: S, x: Tensor, positions: Tensor, ropeOffset: number, invFreq: Tensor, attentionFactor?: number): void;

  /**
   * Expanded causal attention over a variable-length batch. o f32 [T, nh, dv]; q f32 [T, nh, dn + dr];
   * kvb f32 [S, nh, dn + dv] (kv_b_proj output: k_nope | v per head); kpe f32 [S, dr];
   * qStart, kvStart int32 [B + 1]. Sequence b: queries qStart[b]..qStart[b+1], keys kvStart[b]..kvStart[b+1]
   * (cached prefix + new tokens); query j sits at position kvLen - qLen + j and attends keys at
   * positions <= its own. Rows of o outside every sequence are left untouched.
   */
  mlaPrefill(
    stream: S,
    o: Tensor,
    q: Tensor,
    kvb: Tensor,
    kpe: Tensor,
    qStart: Tensor,
    kvStart: Tensor,
    softmaxScale: number,
  ): void;

  /** Writes ckv f32 [T, dl] and kpe f32 [T, dr] into cache rows slots int32 [T] (each in [0, numBlocks * blockSize));
   *  an fp8 cache quantizes each 128-value group of ckv (round to nearest e4m3, bit-exact on CPU and CUDA). */
  mlaCacheWrite(stream: S, cache: Tensor, ckv: Tensor, kpe: Tensor, slots: Tensor): void;

  /**
   * Copies one sequence's cached rows [start, start + length) (blockTable int32 [maxBlocks]) into
   * ckv f32 [length, dl] and kpe f32 [length, dr] (an fp8 cache dequantized: e4m3 x scale in f32).
   */
  mlaCacheGather(stream: S, ckv: Tensor, kpe: Tensor, cache: Tensor, blockTable: Tensor, start: number, length: number): void;

  /**
   * qLat[t, h] = W_UK[h]^T q_nope[t, h]. qLat f32 [T, nh, dl]; q f32 [T, nh, dn + dr];
   * wkvb f32|bf16 [nh * (dn + dv), dl] (kv_b_proj.weight), W_UK[h] = rows h*(dn+dv) .. +dn.
   * nopeDim = dn (q's and wkvb's shapes alone cannot tell dn from dr / dv).
   */
  mlaAbsorbQ(stream: S, qLat: Tensor, q: Tensor, wkvb: Tensor, nopeDim: number): void;

  /**
   * FlashMLA-style absorbed decode over the paged latent cache, one query per sequence:
   * score[h, s] = (qLat[b,h] . ckv[s] + qPe[b,h] . kpe[s]) * softmaxScale for s < seqLens[b],
   * oLat[b, h] = softmax(score) @ ckv. oLat, qLat f32 [B, nh, dl]; q f32 [B, nh, dn + dr] (its rope part,
   * already rotated); blockTable int32 [B, maxBlocks]; seqLens int32 [B] (0 gives zeros).
   */
  mlaDecodeAbsorbed(
    stream: S,
    oLat: Tensor,
    qLat: Tensor,
    q: Tensor,
    cache: Tensor,
    blockTable: Tensor,
    seqLens: Tensor,
    softmaxScale: number,
  ): void;

  /** o[t, h] = W_UV[h] oLat[t, h]. o f32 [T, nh, dv]; oLat f32 [T, nh, dl]; W_UV[h] = rows h*(dn+dv)+dn .. +dv of wkvb. */
  mlaOutput(stream: S, o: Tensor, oLat: Tensor, wkvb: Tensor): void;
}

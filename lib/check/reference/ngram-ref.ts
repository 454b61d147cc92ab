// Float64 reference of LongCat-Flash-Lite's N-gram embedding, transliterated from SPEC-LITE 3 and
// its SPEC-LITE-ngram_ref.py (the HF NgramEmbedding): the EOS-segmented right shifts, the int64
// hash in BigInt, then (embedding + sum of the projected sub-embeddings) / (1 + K (N - 1)).
// Independent of lib/: one causal sequence from position 0, as referenceForward runs it.

/** The config.json fields of the N-gram module (SPEC-LITE 1.1). */
export interface RefNgramConfig {
  vocab_size: number;
  hidden_size: number;
  ngram_vocab_size_ratio: number;
  emb_neighbor_num: number;
  emb_split_num: number;
  eos_token_id: number;
}

/** HF `_shift_right_ignore_eos` for one row: each EOS-terminated segment shifted right by s, zero-filled. */
function shiftRightIgnoreEos(row: number[], s: number, eos: number): number[] {
  const L = row.length,
    res = new Array<number>(L).fill(0);
  let prev = 0;
  const shiftSegment = (end: number) => {
    if (end - prev > s) for (let i = prev + s; i < end; i++) res[i] = row[i - s]!;
  };
  row.forEach((t, i) => {
    if (t === eos) {
      shiftSegment(i + 1);
      prev = i + 1;
    }
  });
  if (prev < L) shiftSegment(L);
  return res;
}

/** ids[idx][t]: the local row of table idx for token t (SPEC-LITE 3.3), exact. */
export function referenceNgramIds(cfg: RefNgramConfig, tokens: number[]): number[][] {
  const V = BigInt(cfg.vocab_size),
    N = cfg.emb_neighbor_num,
    K = cfg.emb_split_num;
  const M = BigInt(cfg.ngram_vocab_size_ratio) * V;
  const shifted = new Map<number, number[]>();
  for (let n = 2; n <= N; n++) shifted.set(n, shiftRightIgnoreEos(tokens, n - 1, cfg.eos_token_id));
  const out: number[][] = [];
  for (let n = 2; n <= N; n++)
    for (let j = 0; j < K; j++) {
      const idx = (n - 2) * K + j;
      const mod = M + BigInt(2 * idx + 1);
      const pows: bigint[] = [];
      let p = 1n;
      for (let k = 0; k < n - 1; k++) {
        p = (p * V) % mod;
        pows.push(p);
      }
      out.push(
        tokens.map((tok, t) => {
          let h = BigInt(tok);
          for (let k = 2; k <= n; k++) h += BigInt(shifted.get(k)![t]!) * pows[k - 2]!;
          return Number(h % mod);
        }),
      );
    }
  return out;
}

/**
 * The N-gram embedding of `tokens` [T * H]: (base + sum_idx rows_idx @ P_idx^T) / (1 + E), with
 * base the token embedding rows; `table(idx)` / `proj(idx)` are embedders.idx and post_projs.idx
 * ([rows, d] and [H, d], row-major).
 */
export function referenceNgramEmbedding(
  cfg: RefNgramConfig,
  tokens: number[],
  base: Float64Array,
  table: (idx: number) => Float64Array,
  proj: (idx: number) => Float64Array,
): Float64Array {
  const H = cfg.hidden_size,
    T = tokens.length,
    E = cfg.emb_split_num * (cfg.emb_neighbor_num - 1),
    d = Math.floor(H / E);
  const ids = referenceNgramIds(cfg, tokens);
  const x = Float64Array.from(base);
  for (let idx = 0; idx < E; idx++) {
    const tab = table(idx),
      P = proj(idx);
    for (let t = 0; t < T; t++) {
      const row = ids[idx]![t]!;
      for (let h = 0; h < H; h++) {
        let s = 0;
        for (let k = 0; k < d; k++) s += tab[row * d + k]! * P[h * d + k]!;
        x[t * H + h]! += s;
      }
    }
  }
  for (let i = 0; i < x.length; i++) x[i]! /= 1 + E;
  return x;
}

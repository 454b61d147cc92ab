// The integer half of LongCat-Flash-Lite's N-gram embedding (SPEC-LITE 3.1-3.3, 3.6): the per-table
// powers of the vocabulary, the hashed row ids of each new token from its predecessors (0 at the
// sequence start, none across an EOS), and the per-sequence history of raw token ids the ids of the
// next step depend on. Exact integer arithmetic: every product is reduced modulo the table size,
// through BigInt when it would not be exact in a double.
import type { NgramDims } from '../config-ngram.js';
import { ArgumentError } from '../errors.js';

/** a * b mod m for non-negative integers below 2^53, exact. */
function mulMod(a: number, b: number, m: number): number {
  const p = a * b;
  if (p <= Number.MAX_SAFE_INTEGER) return p % m;
  return Number((BigInt(a) * BigInt(b)) % BigInt(m));
}

/** w[i][k] = vocab^k mod moduli[i] for k = 0..order_i - 1 (SPEC-LITE 3.1: computed iteratively). */
export function ngramPowers(nd: NgramDims): number[][] {
  return nd.moduli.map((m, i) => {
    const w = [1];
    for (let k = 1; k < nd.orders[i]!; k++) w.push(mulMod(w[k - 1]!, nd.vocab, m));
    return w;
  });
}

/**
 * The local row ids of `tokens`, which follow `context` (the sequence's previous raw ids, at most
 * N - 1 of them; fewer only at the sequence start). out[i * T + t] is token t's row of table i.
 * prev_k(t) = x[t - k] unless that reaches before the sequence start or any of x[t - k .. t - 1]
 * is EOS (then 0 and every further look-back 0); the current token always counts, EOS or not.
 */
export function ngramIds(nd: NgramDims, powers: number[][], context: ArrayLike<number>, tokens: ArrayLike<number>): Int32Array {
  const T = tokens.length,
    C = Math.min(context.length, nd.context),
    E = nd.tables;
  const win = new Int32Array(C + T);
  for (let i = 0; i < C; i++) win[i] = context[context.length - C + i]!;
  for (let t = 0; t < T; t++) win[C + t] = tokens[t]!;
  const out = new Int32Array(E * T);
  const prev = new Array<number>(nd.context).fill(0);
  for (let t = 0; t < T; t++) {
    const p = C + t;
    prev.fill(0);
    for (let k = 1; k <= nd.context && p - k >= 0; k++) {
      const x = win[p - k]!;
      if (x === nd.eosId) break;
      prev[k - 1] = x;
    }
    const x = win[p]!;
    for (let i = 0; i < E; i++) {
      const m = nd.moduli[i]!,
        w = powers[i]!;
      let h = x % m;
      for (let k = 1; k < w.length; k++) h += mulMod(prev[k - 1]!, w[k]!, m); // < n * m: exact
      out[i * T + t] = h % m;
    }
  }
  return out;
}

/**
 * The raw token ids of one sequence by position, so the ids of its next tokens can be computed
 * after any number of steps. The KV cache's length is the truth: a step at position `from`
 * overwrites everything from there on, so truncating the sequence (a rejected draft, a chat turn
 * rewound to a common prefix) rolls the history back with its pages.
 */
export class TokenHistory {
  private ids = new Int32Array(64);
  private len = 0;

  /** The up to `n` raw ids before position `at` (fewer only at the sequence start). */
  context(at: number, n: number): Int32Array {
    if (at > this.len)
      throw new ArgumentError(
        'E_ARGUMENT',
        `N-gram history: the sequence is at position ${at} but only ${this.len} of its tokens went through this model`,
      );
    return this.ids.slice(Math.max(0, at - n), at);
  }

  /** Records `tokens` at positions from.., dropping whatever was recorded from there on. */
  record(from: number, tokens: ArrayLike<number>) {
    if (from > this.len) throw new ArgumentError('E_ARGUMENT', `N-gram history: position ${from} is past its end ${this.len}`);
    const need = from + tokens.length;
    if (need > this.ids.length) {
      const grown = new Int32Array(Math.max(need, 2 * this.ids.length));
      grown.set(this.ids.subarray(0, from));
      this.ids = grown;
    }
    this.ids.set(tokens, from);
    this.len = need;
  }
}

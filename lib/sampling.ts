// A sequence's sampler settings beyond SamplingParams: repetition / presence / frequency penalties
// and logit bias (applied to its logits row with native.penalize before the draw) and per-token
// log-probabilities (native.logprobs on the row as the model produced it), shared by the first
// token of Session.generate and the batched decode steps of the StepScheduler.
import { native } from './native.js';
import { type Tensor, empty, tensor, toArray } from './tensor.js';

/** Penalties and bias as native.penalize takes them (repetition 1, presence 0, frequency 0: off). */
export interface LogitAdjust {
  repetition: number;
  presence: number;
  frequency: number;
  /** [token id, value added to its logit] */
  bias: [number, number][];
}

/** What a sequence asks of its sampler beyond SamplingParams; `history` is read at each step. */
export interface SamplerExtras {
  /** null: the logits are sampled as the model produced them. */
  adjust: LogitAdjust | null;
  /** Prompt then generated tokens so far (the history the penalties count). */
  history(): { tokens: number[]; promptLength: number };
  /** Top alternatives to report per token (0: only the chosen one's); undefined: no log-probabilities. */
  logprobs: number | undefined;
}

/** One generated token's log-probability under the model's distribution, and its top alternatives. */
export interface TokenLogprob {
  token: number;
  logprob: number;
  /** The most likely tokens (most likely first; ties: lower id first). */
  top: { token: number; logprob: number }[];
}

/**
 * Prepares one logits row [1, V] for the draw: applies the penalties and bias in place, first
 * copying the row when log-probabilities are asked (they describe the model's raw distribution).
 * Returns the raw row to take log-probabilities from (the row itself when unchanged, null when
 * none are asked); the caller disposes it when it is not `row`.
 */
export function prepareRow(row: Tensor, extras: SamplerExtras): Tensor | null {
  const a = extras.adjust;
  let raw: Tensor | null = extras.logprobs === undefined ? null : row;
  if (!a) return raw;
  if (raw) {
    raw = empty(row.shape, { device: row.device });
    native.convert(null, raw, row);
  }
  const { tokens, promptLength } = extras.history();
  const device = row.device,
    nb = a.bias.length;
  const inputs = [
    tensor(Int32Array.from(tokens), [1, tokens.length], { dtype: 'int32', device }),
    tensor([promptLength], [1], { dtype: 'int32', device }),
    tensor([a.repetition, a.presence, a.frequency], [1, 3], { device }),
    tensor(
      Int32Array.from(a.bias, b => b[0]),
      [1, nb],
      { dtype: 'int32', device },
    ),
    tensor(
      Float32Array.from(a.bias, b => b[1]),
      [1, nb],
      { device },
    ),
  ] as const;
  // the queued op holds its inputs: they can be released now
  native.penalize(null, row, ...inputs);
  for (const t of inputs) t.dispose();
  return raw;
}

/** The log-probabilities of `chosen` (int32 [1]) and the k best tokens in the raw row [1, V]. */
export async function tokenLogprob(raw: Tensor, chosen: Tensor, k: number): Promise<TokenLogprob> {
  const q = queueLogprob(raw, chosen, k);
  try {
    await native.synchronizeAsync(raw.device);
    return q.read();
  } finally {
    q.dispose();
  }
}

/**
 * Queues tokenLogprob's op on the device's stream; `read()` takes its result once that work is
 * done (after the caller has awaited the device: many rows' ops then share one wait).
 */
export function queueLogprob(raw: Tensor, chosen: Tensor, k: number): { read(): TokenLogprob; dispose(): void } {
  const out = empty([1, 1 + k], { device: raw.device }),
    ids = empty([1, k], { dtype: 'int32', device: raw.device });
  try {
    native.logprobs(null, out, ids, raw, chosen, k);
  } catch (e) {
    out.dispose();
    ids.dispose();
    throw e;
  }
  return {
    read() {
      const v = toArray(out),
        i = toArray(ids),
        c = toArray(chosen);
      return { token: c[0]!, logprob: v[0]!, top: Array.from(i, (token, j) => ({ token, logprob: v[1 + j]! })) };
    },
    dispose() {
      out.dispose();
      ids.dispose();
    },
  };
}

// Quantization quality the way llama.cpp's perplexity tool reports it (--kl-divergence): a base
// and a quantized model run over the same text in windows of `ctx` tokens; for the second half of
// each window (every scored token has at least ctx/2 tokens of context) the mean KL divergence
// of the quantized model's next-token distribution from the base model's, how often their top
// tokens agree, and both perplexities.
import { readFile } from 'node:fs/promises';
import { ArgumentError } from './errors.js';
import { loadModel, type Model } from './generate.js';
import type { Backend } from './model/load.js';
import type { QuantizeFormat } from './quantize.js';
import { loadTokenizer } from './tokenizer.js';

export interface KldOptions {
  /** The text to score (or `textFile`). */
  text?: string;
  textFile?: string;
  /** Tokens per window (default 512, or the whole text when shorter). */
  ctx?: number;
  backend?: Backend;
  threads?: number;
  /** Load the base checkpoint quantized at load as the quantized model (loadModel's `quantize`)
   *  instead of reading a second directory. */
  quantize?: QuantizeFormat | 'int4';
  /** Called after each window: windows done, of total. */
  onProgress?(done: number, total: number): void;
}

export interface KldResult {
  /** Tokens of the text, windows run, tokens per window and next-token predictions scored. */
  tokens: number;
  windows: number;
  ctx: number;
  scored: number;
  /** exp(mean negative log-likelihood of the next token). */
  pplBase: number;
  pplQuant: number;
  /** Mean ln(PPL(quant) / PPL(base)) = mean NLL difference. */
  meanLnPplRatio: number;
  /** Mean KL(P_base || P_quant) in nats, its standard error, median, 99th percentile and maximum. */
  meanKld: number;
  kldStderr: number;
  medianKld: number;
  p99Kld: number;
  maxKld: number;
  /** Fraction of scored positions where both models' most likely token is the same. */
  top1Agreement: number;
}

/** log-softmax of one row in float64. */
function logSoftmax(row: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of row) if (v > max) max = v;
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, v => v - lse);
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

/** Per-position statistics of two log-distributions over the same vocabulary. */
export function comparePosition(
  base: Float32Array,
  quant: Float32Array,
  next: number,
): { kld: number; nllBase: number; nllQuant: number; same: boolean } {
  const lp = logSoftmax(base),
    lq = logSoftmax(quant);
  let kld = 0;
  for (let i = 0; i < lp.length; i++) kld += Math.exp(lp[i]!) * (lp[i]! - lq[i]!);
  return { kld: Math.max(0, kld), nllBase: -lp[next]!, nllQuant: -lq[next]!, same: argmax(base) === argmax(quant) };
}

const quantile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;

/**
 * Runs `baseDir` and `quantDir` (or baseDir quantized at load, `quantize`) over the text's tokens
 * and compares their next-token distributions. Windows of `ctx` tokens, floor(tokens / ctx) of
 * them (one window of the whole text when it is shorter than ctx); in each, the predictions made
 * at positions floor(ctx/2) .. ctx-2 are scored (llama.cpp's choice).
 * @throws ArgumentError (E_ARGUMENT): no text, a text of fewer than 3 tokens, a bad ctx, models
 *   with different vocabularies; the loaders' errors.
 */
export async function evalKld(baseDir: string, quantDir: string | null, opts: KldOptions): Promise<KldResult> {
  if (opts.ctx !== undefined && (!Number.isInteger(opts.ctx) || opts.ctx < 3))
    throw new ArgumentError('E_ARGUMENT', `eval: ctx must be an integer >= 3, got ${String(opts.ctx)}`);
  if ((quantDir === null) === (opts.quantize === undefined))
    throw new ArgumentError('E_ARGUMENT', 'eval: give a quantized checkpoint directory or quantize, exactly one');
  const text = opts.text ?? (opts.textFile !== undefined ? await readFile(opts.textFile, 'utf8') : undefined);
  if (text === undefined) throw new ArgumentError('E_ARGUMENT', 'eval: a text (or a text file) to score is required');
  const common = { backend: opts.backend ?? 'cpu', threads: opts.threads, mtp: false, prefixCache: false } as const;
  const models: Model[] = [];
  try {
    const tokens = (await loadTokenizer(baseDir)).encode(text);
    if (tokens.length < 3)
      throw new ArgumentError('E_ARGUMENT', `eval: the text has ${tokens.length} token(s); at least 3 are needed`);
    const ctx = Math.min(opts.ctx ?? 512, tokens.length);
    const base = await loadModel(baseDir, { ...common, maxContext: ctx });
    models.push(base);
    const quant = await loadModel(quantDir ?? baseDir, {
      ...common,
      maxContext: ctx,
      ...(opts.quantize !== undefined ? { quantize: opts.quantize } : {}),
    });
    models.push(quant);
    const V = base.config.vocab_size;
    if (quant.config.vocab_size !== V)
      throw new ArgumentError(
        'E_ARGUMENT',
        `eval: the models have different vocabularies (${V} and ${quant.config.vocab_size} tokens): not the same model`,
      );
    const windows = Math.floor(tokens.length / ctx);
    const first = Math.floor(ctx / 2);
    const klds: number[] = [];
    let nllBase = 0,
      nllQuant = 0,
      same = 0;
    for (let w = 0; w < windows; w++) {
      const part = tokens.slice(w * ctx, (w + 1) * ctx);
      const lb = base.forward(part),
        lq = quant.forward(part);
      for (let j = first; j < ctx - 1; j++) {
        const r = comparePosition(lb.subarray(j * V, (j + 1) * V), lq.subarray(j * V, (j + 1) * V), part[j + 1]!);
        klds.push(r.kld);
        nllBase += r.nllBase;
        nllQuant += r.nllQuant;
        if (r.same) same++;
      }
      opts.onProgress?.(w + 1, windows);
    }
    const n = klds.length;
    const mean = klds.reduce((a, b) => a + b, 0) / n;
    const variance = n > 1 ? klds.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : 0;
    const sorted = [...klds].sort((a, b) => a - b);
    return {
      tokens: tokens.length,
      windows,
      ctx,
      scored: n,
      pplBase: Math.exp(nllBase / n),
      pplQuant: Math.exp(nllQuant / n),
      meanLnPplRatio: (nllQuant - nllBase) / n,
      meanKld: mean,
      kldStderr: Math.sqrt(variance / n),
      medianKld: quantile(sorted, 0.5),
      p99Kld: quantile(sorted, 0.99),
      maxKld: sorted[n - 1]!,
      top1Agreement: same / n,
    };
  } finally {
    for (const m of models) m.dispose();
  }
}

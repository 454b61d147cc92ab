// What the whole-model checks share (test/model.test.ts, test/model-long.test.ts, lib/check/model-cases.ts):
// the float64 reference's logits over a checkpoint's own weights, and the logits of a full forward
// and of a prefill followed by one decode step per token. Imports no SDK module: the caller binds the
// helpers to the functions it uses (openCheckpoint, toArray).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { dequantFp8Block, referenceForward, type RefConfig } from './reference/longcat-ref.js';

/** A tensor as the helpers use it: a checkpoint's stored tensor, or a forward's logits. */
export interface HostTensor {
  readonly dtype: string;
  readonly shape: readonly number[];
  toBytes(): Uint8Array;
  dispose(): void;
}

/** The two functions of a build (lib/ or dist/) the helpers need. */
export interface ModelIO<T extends HostTensor> {
  openCheckpoint(dir: string): Promise<{ readonly config: unknown; get(name: string): T; close(): void }>;
  toArray(t: T): ArrayLike<number>;
}

/** A model engine (LongcatModel) over sequences of type S. */
export interface Engine<S extends { release(): void }, T> {
  readonly dims: { readonly vocab: number };
  newSequence(): S;
  forward(seqs: S[], tokens: number[][], opts?: { allLogits?: boolean }): { logits: T };
}

export function modelHelpers<T extends HostTensor>(io: ModelIO<T>) {
  /** The logits of a forward, copied to the host; the device tensor is released. */
  const readLogits = (r: { logits: T }): Float32Array => {
    const a = io.toArray(r.logits);
    const v = a instanceof Float32Array ? a : Float32Array.from(a);
    r.logits.dispose();
    return v;
  };

  return {
    readLogits,

    /** Logits of the float64 reference (SPEC, test/reference) over the checkpoint's own (dequantized) weights. */
    async referenceLogits(dir: string, tokens: number[]): Promise<Float64Array> {
      const ck = await io.openCheckpoint(dir);
      try {
        const W = (name: string) => {
          const t = ck.get(name);
          const shape = [...t.shape];
          if (t.dtype === 'fp8_e4m3') {
            const [n, k] = shape as [number, number];
            const scale = Float32Array.from(io.toArray(ck.get(name.replace(/\.weight$/, '.weight_scale_inv'))));
            return { shape, data: dequantFp8Block(t.toBytes(), scale, n, k) };
          }
          return { shape, data: Float64Array.from(io.toArray(t)) };
        };
        // config.json as written: the reference reads every field (Lite's N-gram ones too) by its file name
        const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as RefConfig;
        return referenceForward(cfg, W, tokens).logits;
      } finally {
        ck.close();
      }
    },

    /** Logits of every position of one forward over `tokens` in a new sequence. */
    fullForward<S extends { release(): void }>(e: Engine<S, T>, tokens: number[]): Float32Array {
      const seq = e.newSequence();
      try {
        return readLogits(e.forward([seq], [tokens], { allLogits: true }));
      } finally {
        seq.release();
      }
    },

    /** Logits of every position: a prefill of `prefill` tokens, then one decode step per token. */
    prefillThenDecode<S extends { release(): void }>(e: Engine<S, T>, tokens: number[], prefill: number): Float32Array {
      const V = e.dims.vocab;
      const seq = e.newSequence();
      try {
        const out = new Float32Array(tokens.length * V);
        out.set(readLogits(e.forward([seq], [tokens.slice(0, prefill)], { allLogits: true })));
        for (let i = prefill; i < tokens.length; i++) out.set(readLogits(e.forward([seq], [[tokens[i]!]])), i * V);
        return out;
      } finally {
        seq.release();
      }
    },
  };
}

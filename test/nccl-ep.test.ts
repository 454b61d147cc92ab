// Expert parallelism across hosts through NCCL (lib/parallel/cross-host.ts, loadModel's nccl option),
// against the stand-in library (test/native/nccl_standin.cc: NCCL's C symbols between threads of one
// process over host memory), with each "host" a worker thread of this process running the built SDK
// (test/children/nccl-host.mjs) on CPU tensors. Never run against NCCL itself or on a GPU.
// "Equal" as issue 14 defines it: logits within an fp32 tolerance of the single-device run, greedy
// tokens identical wherever the top-two gap exceeds it (the decode steps feed the single-device
// run's greedy tokens).
import { Worker } from 'node:worker_threads';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRandom } from '../lib/init-random.js';
import { loadModel } from '../lib/generate.js';
import { ncclUniqueId } from '../lib/parallel/nccl.js';
import { toArray } from '../lib/tensor.js';
import { buildStandin } from './nccl-standin.js';
import { expectEqualLogits, prompts, runScript, singleDeviceScript } from './ep-helpers.js';
import { fixtureRoot } from './model-fixture.js';

const root = fixtureRoot('longcat-nccl-ep-');
let standin = '';
let remove = () => {};
beforeAll(() => {
  ({ path: standin, remove } = buildStandin());
}, 120_000);
afterAll(() => remove());

const four = [...prompts, [400, 3, 77, 12, 5, 6]];
/** Each host's prompts (indices into `four`): different numbers of sequences, zero included. */
const layouts: Record<number, number[][]> = {
  2: [[0, 2], [1]],
  4: [[1], [], [0, 2, 3], [2]],
};
const STEPS = 3;

interface HostAnswer {
  logits?: Float32Array[];
  experts?: number[];
  errors?: ({ code: string; message: string } | null)[];
  lengths?: number[];
  error?: { code: string; message: string };
}

/** Runs one worker per host of a world (a fresh unique id) and collects their answers in host order. */
function hosts(dir: string, perHost: Record<string, unknown>[]): Promise<HostAnswer[]> {
  const id = ncclUniqueId(standin);
  const worldSize = perHost.length;
  return Promise.all(
    perHost.map(
      (data, rank) =>
        new Promise<HostAnswer>((resolve, reject) => {
          const w = new Worker(new URL('./children/nccl-host.mjs', import.meta.url), {
            workerData: { dir, rank, worldSize, id, libraryPath: standin, ...data },
          });
          w.once('message', m => {
            resolve(m as HostAnswer);
            void w.terminate();
          });
          w.once('error', reject);
          w.once('exit', code => reject(new Error(`host ${rank} exited with ${code} before answering`)));
        }),
    ),
  );
}

describe('expert parallelism across hosts (NCCL stand-in, worker threads as hosts, CPU)', () => {
  // CPU only: on the emulated CUDA device a stand-in receive that blocks for another host holds the
  // emulator's one lock (test/emu runs every stream's work under it), so the hosts deadlock; the
  // exchange's CUDA path waits for an emulator with concurrent streams (issue 14 item 6).
  const checkpoints: [string, 'tiny' | 'small', boolean, Record<string, unknown>][] = [
    ['tiny bf16', 'tiny', false, {}],
    ['tiny fp8', 'tiny', true, {}],
    ['small bf16 (2 layers)', 'small', false, { num_layers: 2 }],
  ];
  const backend = 'cpu';
  for (const [name, preset, fp8, overrides] of checkpoints) {
    describe(name, () => {
      const dir = path.join(root, name.replace(/\W+/g, '-'));
      let V = 0,
        nRouted = 0,
        layers = 0;
      /** The single-device run of each prompt alone: its prefill and decode logits and greedy tokens. */
      const alone: ReturnType<typeof runScript>[] = [];
      beforeAll(async () => {
        await initRandom({ preset, seed: 41, fp8, overrides, out: dir });
        const single = await loadModel(dir, { backend, cacheDtype: 'f32', maxContext: 64 });
        try {
          V = single.engine.dims.vocab;
          nRouted = single.engine.dims.nRouted;
          layers = single.engine.dims.layers;
          for (const p of four) alone.push(runScript(single, [p], STEPS));
        } finally {
          single.dispose();
        }
      }, 300_000);

      it.each([2, 4])(
        '%i hosts, each holding its block of experts, prefilling and decoding its own prompts (one with none): equal to the single-device run',
        async W => {
          const layout = layouts[W]!;
          const answers = await hosts(
            dir,
            layout.map(mine => ({
              plan: 'script',
              backend,
              prompts: mine.map(i => four[i]!),
              tokens: Array.from({ length: STEPS }, (_, s) => mine.map(i => alone[i]!.chosen[s]![0]!)),
            })),
          );
          for (const [h, a] of answers.entries()) {
            expect(a.error, `host ${h}`).toBeUndefined();
            expect(a.experts).toEqual(new Array(layers).fill(nRouted / W));
            const mine = layout[h]!;
            expect(a.logits!.length).toBe(STEPS + 1);
            if (mine.length === 0) {
              for (const l of a.logits!) expect(l.length).toBe(0);
              continue;
            }
            // prefill: every row of each of its prompts, in order
            let at = 0;
            for (const i of mine) {
              const n = four[i]!.length * V;
              expectEqualLogits(a.logits![0]!.subarray(at, at + n), alone[i]!.out[0]!, V, 1e-5);
              at += n;
            }
            expect(at).toBe(a.logits![0]!.length);
            for (let s = 1; s <= STEPS; s++)
              for (const [b, i] of mine.entries())
                expectEqualLogits(a.logits![s]!.subarray(b * V, (b + 1) * V), alone[i]!.out[s]!, V, 1e-5);
          }
        },
        300_000,
      );
    });
  }

  describe('failures', () => {
    const dir = path.join(root, 'tiny-failures');
    beforeAll(() => initRandom({ preset: 'tiny', seed: 43, out: dir }), 300_000);

    it("a host whose own part of a step fails (a bad token id) still takes part: the others' step, and every later one, equal the single-device run", async () => {
      const single = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64 });
      const alone: ReturnType<typeof runScript>[] = [];
      try {
        for (const p of prompts) alone.push(runScript(single, [p], 2));
      } finally {
        single.dispose();
      }
      const V = alone[0]!.out[0]!.length / prompts[0]!.length;
      const layout = [[0, 2], [1]];
      // host 0: prefill, d0, BAD, d1; host 1: prefill, d0, d1, idle -- host 1's d1 meets host 0's
      // failed call, and host 0's d1 meets host 1's idle one
      const answers = await hosts(
        dir,
        layout.map((mine, h) => ({
          plan: 'script',
          prompts: mine.map(i => prompts[i]!),
          tokens: [0, 1].map(s => mine.map(i => alone[i]!.chosen[s]![0]!)),
          before: h === 0 ? { 1: 'bad' } : { 2: 'idle' },
        })),
      );
      expect(answers[0]!.error).toBeUndefined();
      expect(answers[0]!.errors).toEqual([
        { code: 'E_ARGUMENT', message: expect.stringMatching(/token id \d+ of sequence 0 is outside the vocabulary/) },
      ]);
      for (const [h, a] of answers.entries())
        for (let s = 1; s <= 2; s++)
          for (const [b, i] of layout[h]!.entries())
            expectEqualLogits(a.logits![s]!.subarray(b * V, (b + 1) * V), alone[i]!.out[s]!, V, 1e-5);
    });

    it('an aborted communicator fails the step with E_NCCL on every host (and every later step)', async () => {
      const answers = await hosts(
        dir,
        [[0, 1], [2], [], []].map(mine => ({
          plan: 'abort',
          abortRank: 1,
          prompts: mine.map(i => prompts[i]!),
          tokens: [mine.map(() => 42)],
        })),
      );
      for (const [h, a] of answers.entries()) {
        expect(a.error, `host ${h}`).toBeUndefined();
        expect(a.errors!.length).toBe(2);
        for (const e of a.errors!) expect(e, `host ${h}`).toMatchObject({ code: 'E_NCCL' });
        // the failed steps are rolled back: every sequence is as long as its prompt
        expect(a.lengths).toEqual([[0, 1], [2], [], []][h]!.map(i => prompts[i]!.length));
      }
      expect(answers[1]!.errors![0]!.message).toMatch(/this host aborted the communicator/);
      expect(answers[0]!.errors![0]!.message).toMatch(/host 0 of 4, step 2 layer 0: .*aborted/);
    });

    it('hosts with different models (layer counts): every host fails its first step with E_NCCL', async () => {
      const other = path.join(root, 'tiny-3-layers');
      await initRandom({ preset: 'tiny', seed: 43, overrides: { num_layers: 3 }, out: other });
      const answers = await hosts(dir, [
        { plan: 'script', prompts: [prompts[0]], tokens: [] },
        { plan: 'script', prompts: [prompts[1]], tokens: [], dir: other },
      ]);
      // The first host to read the other's header names the mismatch and aborts; the other sees
      // either the mismatch too or the abort (whichever its receive meets first).
      const mismatch = [
        /host 1 is at step 1 layer 0 of 3, host 0 at step 1 layer 0 of 2/,
        /host 0 is at step 1 layer 0 of 2, host 1 at step 1 layer 0 of 3/,
      ];
      for (const [h, a] of answers.entries()) {
        expect(a.error, `host ${h}`).toMatchObject({ code: 'E_NCCL' });
        expect(a.error!.message).toMatch(new RegExp(`${mismatch[h]!.source}|aborted`));
      }
      expect(answers.some((a, h) => mismatch[h]!.test(a.error!.message))).toBe(true);
    });

    it('a host that does not take part: the others fail with E_NCCL after the bounded wait, and so does it when it comes', async () => {
      const flags = new Int32Array(new SharedArrayBuffer(4));
      const answers = await hosts(dir, [
        { plan: 'late', flags, timeoutMs: 200, prompts: [prompts[0]] },
        { plan: 'late', flags, prompts: [prompts[1]] },
      ]);
      for (const a of answers) expect(a.error).toBeUndefined();
      expect(answers[0]!.errors![0]).toMatchObject({
        code: 'E_NCCL',
        message: expect.stringMatching(/host 0 of 2: no answer from the other hosts for 200 ms .*the communicator was aborted/),
      });
      expect(answers[1]!.errors![0]).toMatchObject({ code: 'E_NCCL', message: expect.stringMatching(/aborted/) });
    });
  });

  describe('one host, in this thread', () => {
    const dir = path.join(root, 'tiny-one-host');
    beforeAll(() => initRandom({ preset: 'tiny', seed: 47, out: dir }), 300_000);

    it('a world of one equals the single-device run; the typed errors of what it does not do', async () => {
      const want = await singleDeviceScript(dir, 2);
      const nccl = { rank: 0, worldSize: 1, id: ncclUniqueId(standin), libraryPath: standin };
      const m = await loadModel(dir, { backend: 'cpu', cacheDtype: 'f32', maxContext: 64, nccl });
      try {
        const V = m.engine.dims.vocab;
        expect(m.engine.crossHost).not.toBeNull();
        const got = runScript(m, prompts, 2, want.chosen);
        for (const [i, g] of got.out.entries()) expectEqualLogits(g, want.out[i]!, V, 1e-5);
        // an idle step: no logits, and the next step still equals
        const idle = m.engine.forward([], []);
        expect(idle.logits.shape).toEqual([0, V]);
        expect((toArray(idle.logits) as Float32Array).length).toBe(0);
        idle.logits.dispose();
        await expect(m.engine.speculativeStep([], [], [], [])).rejects.toThrow(/not available across hosts/);
      } finally {
        m.dispose();
      }
      for (const bad of [{ ranks: 2 }, { nccl: 'yes' as never }, { nccl: { ...nccl, timeoutMs: -1 } }])
        await expect(loadModel(dir, { backend: 'cpu', nccl, ...bad })).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    });
  });
});

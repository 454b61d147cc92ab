// Soak (issue 13, "Done means"): load / generate / dispose cycles of the tiny model, worker threads
// included (test/children/soak.mjs, in a child process so that its RSS is its own). The memory
// pools' live bytes and the process's thread count end exactly where they started, and the RSS
// levels off: what the last half of the cycles adds is bounded (allocator arenas and V8 caches fill
// during the first half and are reused).
// Sized for a loaded 2-core machine (1,000 full loads take about 5 minutes idle): full cycles load
// the model (every other one as a pair of worker threads generating at once: 150 loads), cheap
// cycles each run a session (prefill, decode graph replays, sampling, KV blocks) on one loaded model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { native } from '../lib/native.js';
import { backends } from './helpers.js';

const script = path.join(import.meta.dirname, 'children', 'soak.mjs');
// The emulated CUDA device (test/emu) runs kernels about 50 times slower than the CPU backend: a
// tenth of the cycles there (enough for the exact checks and ten RSS samples each).
const emulated = native.buildInfo().cudaArchs === 'emulated';
const cycles = (device: string) => (device !== 'cpu' && emulated ? { full: 10, cheap: 40 } : { full: 100, cheap: 1000 });
// The RSS the second half of the cycles may add. Measured (idle, CPU): 1 MiB over the last 500
// session cycles, 4-9 MiB over the last 50 full cycles (each new worker thread's malloc arena and
// V8 isolate; the main thread alone levels off within 1 MiB). A leak of the tiny model's weights
// (0.7 MB a load, 75 loads in the last 50 cycles) or of 32 KiB per session would exceed these.
const FULL_RSS_SLACK = 32 << 20;
const CHEAP_RSS_SLACK = 16 << 20;
// A hang detector, not a time limit: the run takes about 30 s on an idle machine.
const HANG_MS = 900_000;

const root = mkdtempSync(path.join(tmpdir(), 'longcat-soak-'));
const dir = path.join(root, 'tiny');
beforeAll(() => initRandom({ preset: 'tiny', out: dir, seed: 5 }));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe.each(backends)('soak (%s)', device => {
  const { full, cheap } = cycles(device);
  it(
    `${full} full cycles (load, generate, dispose; half in worker pairs) and ${cheap} session cycles`,
    () => {
      const r = spawnSync(process.execPath, ['--expose-gc', script, dir, String(full), String(cheap), device], {
        encoding: 'utf8',
        timeout: HANG_MS,
      });
      const how = r.error ? r.error.message : r.signal ? `signal ${r.signal}` : `exit code ${r.status}`;
      expect(r.status, `soak.mjs: ${how}\n${r.stderr.slice(-3000)}`).toBe(0);
      const out = JSON.parse(r.stdout) as {
        before: Record<string, number>;
        after: Record<string, number>;
        fullRss: number[];
        rss: number[];
        tokens: string[];
      };
      expect(out.after, 'pool live bytes and threads after every model and session was disposed').toEqual(out.before);
      expect(out.tokens, 'every cycle generated the same tokens (greedy)').toHaveLength(1);
      const mib = (xs: number[]) => xs.map(b => (b / 2 ** 20).toFixed(1)).join(' ');
      for (const [what, xs, slack] of [
        ['full cycles', out.fullRss, FULL_RSS_SLACK],
        ['session cycles', out.rss, CHEAP_RSS_SLACK],
      ] as const) {
        expect(xs).toHaveLength(10);
        expect(xs[9]! - xs[4]!, `RSS after each tenth of the ${what} (MiB): ${mib(xs)}`).toBeLessThan(slack);
      }
    },
    HANG_MS + 60_000,
  );
});

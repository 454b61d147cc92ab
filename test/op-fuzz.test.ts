// The op-binding fuzzer (test/children/op-fuzz.mjs) in a child process, with a fixed seed and a
// fixed number of calls per device: every call must end in success or a typed LongcatError. A crash
// (signal, abort) or a hang of the child fails the test naming the call it was in.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { backends } from './helpers.js';

const script = path.join(import.meta.dirname, 'children', 'op-fuzz.mjs');
const SEED = 13;
const CALLS = 3000;
// A hang detector: 3,000 calls of small tensors take seconds on an idle machine.
const HANG_MS = 240_000;

interface Summary {
  calls: number;
  templates: string[];
  perOp: Record<string, { calls: number; ok: number; typed: number }>;
  untyped: string[];
}

describe.each(backends)('op fuzzer (%s)', device => {
  it(
    `${CALLS} calls with seed ${SEED}: each succeeds or throws a typed error`,
    () => {
      const r = spawnSync(process.execPath, [script, String(SEED), String(CALLS), device], {
        encoding: 'utf8',
        timeout: HANG_MS,
        maxBuffer: 256 << 20,
      });
      const lines = r.stdout.trimEnd().split('\n');
      const last = lines.at(-1) ?? '';
      if (r.status !== 0 || !last.startsWith('summary ')) {
        const how = r.error ? r.error.message : r.signal ? `signal ${r.signal}` : `exit code ${r.status}`;
        const at = [...lines].reverse().find(l => l.startsWith('call ')) ?? '(before the first call)';
        expect.fail(`the fuzzer died (${how}) in ${at}\n${r.stderr.slice(-3000)}`);
      }
      const s = JSON.parse(last.slice('summary '.length)) as Summary;
      expect(s.untyped, 'calls that threw something other than a LongcatError').toEqual([]);
      expect(s.calls).toBe(CALLS);
      // The recorded valid calls reach the kernels: every op of the case table is among them, and
      // the mutated calls of the ops with the most calls include successes (not only argument errors).
      expect(s.templates.length).toBeGreaterThanOrEqual(20);
      const succeeded = s.templates.filter(op => s.perOp[op]!.ok > 0);
      expect(succeeded.length, `ops with a successful call: ${succeeded.join(', ')}`).toBeGreaterThanOrEqual(10);
      for (const [op, st] of Object.entries(s.perOp)) expect(st.calls, `calls of ${op}`).toBeGreaterThan(0);
    },
    HANG_MS + 30_000,
  );
});

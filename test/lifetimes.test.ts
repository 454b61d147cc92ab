// Lifetimes and worker threads (issue 13, items 2 and 4), each case in a child process so that an
// abort, a segfault or a deadlock is a failed test rather than a dead test runner:
//   * a graph replayed after the JS Stream it was captured on was disposed or garbage collected
//     still runs (the graph keeps its streams alive);
//   * two worker threads capture on their default streams at once (each environment has its own;
//     on a CUDA device one capture runs at a time, so the second waits for the first to end);
//   * worker.terminate() while the worker is in native calls leaves the process running.
// The scripts are in test/children/ and use dist/ (npm run build:ts) and $LONGCAT_ADDON.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { backends } from './helpers.js';

const dir = path.join(import.meta.dirname, 'children');
// A hang detector (each script does milliseconds of work): a deadlock is reported, not waited out.
const HANG_MS = 120_000;

function runScript(script: string, args: string[]) {
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(dir, script), ...args], {
    encoding: 'utf8',
    timeout: HANG_MS,
  });
  const how = r.error ? `${r.error.message}` : r.signal ? `signal ${r.signal}` : `exit code ${r.status}`;
  return { ok: r.status === 0, out: r.stdout, what: `${script} ${args.join(' ')}: ${how}\n${r.stderr.slice(-2000)}` };
}

describe.each(backends)('graphs keep their streams alive (%s)', device => {
  for (const mode of ['disposed', 'collected']) {
    it(`a graph replays after its stream was ${mode}`, () => {
      const r = runScript('graph-lifetime.mjs', [mode, device]);
      expect(r.ok, r.what).toBe(true);
      expect(JSON.parse(r.out)).toEqual([3, 6, 9, 12, 15]); // three replays of y += x
    });
  }
});

describe.each(backends)('worker threads (%s)', device => {
  it('two workers capture graphs on their default streams at the same time', () => {
    const r = runScript('worker-capture.mjs', [device]);
    expect(r.ok, r.what).toBe(true);
    // A: two replays of y += x; B: two of y += 2x, captured while A's capture was open (CPU).
    expect(JSON.parse(r.out)).toEqual([
      [2, 4, 6],
      [4, 8, 12],
    ]);
  });

  it('terminating workers in native calls leaves the process running', () => {
    const r = runScript('worker-terminate.mjs', [device, '6']);
    expect(r.ok, r.what).toBe(true);
    expect(r.out).toBe('ok 6 2,4');
  });
});

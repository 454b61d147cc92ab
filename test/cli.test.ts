// The `longcat` command as a user runs it (dist/cli.js, built by `npm install`'s prepare step).
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const cli = path.resolve(__dirname, '../dist/cli.js');
// Each run is a second or two of CPU on the tiny checkpoint; the limits (per run, and per test that
// chains three runs) leave room for a machine many times oversubscribed: no test asserts a time.
const RUN_LIMIT_MS = 200_000;
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: RUN_LIMIT_MS });

/**
 * `init-random <initArgs>` into a new folder, `inspect` of it and `generate` of `maxTokens` tokens
 * from it, each exiting 0 (the folder is removed after); the outputs of the three, to check.
 */
function initInspectGenerate(initArgs: string[], maxTokens: number) {
  const dir = mkdtempSync(path.join(tmpdir(), 'longcat-cli-'));
  try {
    const made = run('init-random', ...initArgs, '--out', dir);
    expect(made.status, made.stderr).toBe(0);
    const info = run('inspect', dir);
    expect(info.status, info.stderr).toBe(0);
    const gen = run('generate', '--model', dir, '--prompt', 'Hello', '--max-tokens', String(maxTokens));
    expect(gen.status, gen.stderr).toBe(0);
    expect(gen.stderr).toMatch(/generated \d+ tokens/);
    return { made, info, gen };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('longcat CLI', { timeout: 3 * RUN_LIMIT_MS }, () => {
  it('is built (dist/cli.js; `npm install` or `npm run build:ts` makes it)', () => {
    expect(existsSync(cli)).toBe(true);
  });

  it('info --json reports the build, the CPU and the devices', () => {
    const facts = JSON.parse(execFileSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8' }));
    expect(facts.devices[0].id).toBe('cpu');
    expect(['scalar', 'avx2', 'avx512']).toContain(facts.cpu.isa);
    expect(typeof facts.build.cuda).toBe('boolean');
  });

  it('init-random, inspect and generate work on a fresh tiny checkpoint', () => {
    const { made, info } = initInspectGenerate(['--preset', 'tiny', '--seed', '3'], 6);
    expect(made.stdout).toMatch(/wrote 103 tensors/);
    expect(info.stdout).toMatch(/tensors:\s+103/);
    expect(info.stdout).toMatch(/8 FFN experts .* \+ 4 zero experts, top-3/);
  });

  it('init-random --preset lite --fp8 and inspect: the N-gram parameters apart from the active ones; generate runs it', () => {
    const { info, gen } = initInspectGenerate(['--preset', 'lite', '--fp8', '--seed', '4'], 4);
    expect(info.stdout).toMatch(
      /N-gram:\s+\S+ in 12 tables \(orders 2\.\.4, 4 splits; looked up, kept in host memory\) \+ \S+ projections \(active\)/,
    );
    expect(info.stdout).toMatch(/block FP8/);
    // inspect says where the weights would live on either backend, as generate's load then reports
    const onCpu = info.stdout.match(/^weights cpu: +(.*)$/m)![1]!,
      onCuda = info.stdout.match(/^weights cuda: +(.*)$/m)![1]!;
    expect(onCpu).toMatch(/^\S+ \S+ mapped in host memory \(of which \S+ \S+ N-gram tables, never uploaded\)$/);
    expect(onCuda).toMatch(
      /^\S+ \S+ uploaded to the GPU, \S+ \S+ mapped in host memory \(of which \S+ \S+ N-gram tables, never uploaded\)$/,
    );
    const loaded = gen.stderr.match(/^longcat: weights: (.*)$/m)![1]!;
    const device = loaded.match(/uploaded to (\S+),/)?.[1];
    expect(loaded).toBe(device ? onCuda.replace('the GPU', device) : onCpu);
  });

  it('init-random --mtp --draft-agreement F: prints the acceptance of the MTP drafts; inspect and generate run it', () => {
    const { made, info } = initInspectGenerate(['--preset', 'tiny', '--mtp', '--draft-agreement', '0.9', '--seed', '3'], 6);
    expect(made.stdout).toMatch(/greedy speculative decoding \(one draft token\) accepts 0\.(89|90)\d\d of the MTP drafts/);
    expect(info.stdout).toMatch(/MTP present/);
  });

  it('generate without --model runs a generated tiny model (the README main command)', () => {
    const gen = run('generate', '--prompt', 'The capital of France is', '--max-tokens', '4');
    expect(gen.status, gen.stderr).toBe(0);
    expect(gen.stderr).toMatch(/tiny/);
  });

  it('reports a missing checkpoint as a typed error and exits 1', () => {
    const r = run('generate', '--model', '/nonexistent/longcat', '--prompt', 'x');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\/nonexistent\/longcat.*\[E_(CHECKPOINT|CONFIG)\]/s);
  });

  it('quantize --to int8, fp8 and int4, inspect of the result, eval --kld --json; --to int3 is a usage error', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'longcat-cli-q-'));
    try {
      const bf16 = path.join(dir, 'bf16');
      expect(run('init-random', '--preset', 'tiny', '--out', bf16).status).toBe(0);
      for (const to of ['int8', 'fp8', 'int4']) {
        const q = run('quantize', '--to', to, bf16, path.join(dir, to));
        expect(q.status, q.stderr).toBe(0);
        expect(q.stdout).toMatch(new RegExp(`wrote ${to} checkpoint .* linears quantized`));
      }
      expect(run('inspect', path.join(dir, 'int8')).stdout).toMatch(/int8 weights \(per-row scales\)/);
      expect(run('inspect', path.join(dir, 'fp8')).stdout).toMatch(/block FP8/);
      expect(run('inspect', path.join(dir, 'int4')).stdout).toMatch(/int4 weights \(GPTQ packing/);
      const text = path.join(dir, 'text.txt');
      writeFileSync(text, 'one two three four five six seven eight nine ten. '.repeat(4));
      const e = run('eval', '--kld', bf16, path.join(dir, 'fp8'), '--text', text, '--ctx', '24', '--json');
      expect(e.status, e.stderr).toBe(0);
      const r = JSON.parse(e.stdout);
      expect(r.scored).toBeGreaterThan(0);
      expect(r.meanKld).toBeGreaterThan(0);
      expect(r.top1Agreement).toBeGreaterThan(0.5);
      const int3 = run('quantize', '--to', 'int3', bf16, path.join(dir, 'int3'));
      expect(int3.status).not.toBe(0);
      expect(int3.stderr).toMatch(/fp8, int8 or int4/);
      const full = run('quantize', '--to', 'fp8', bf16, path.join(dir, 'fp8'));
      expect(full.status).toBe(1);
      expect(full.stderr).toMatch(/not empty.*\[E_ARGUMENT\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

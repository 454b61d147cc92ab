// `longcat doctor` and `longcat bench` as a user runs them (dist/cli.js), and the progress bar they
// and the loaders draw. Doctor: on a CPU-only build it says why CUDA is not checked and checks the
// CPU; under the emulated CUDA build (the emulator suite runs this file with that addon) it runs its
// CUDA half against the emulated device. Bench: the structure and the arithmetic of its JSON (mean,
// standard deviation, bytes per token, roofline), never its timings.
import { describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cudaAvailable } from './helpers.js';
import { duration, progressBar } from '../lib/progress.js';
import { doctorCases } from '../lib/doctor.js';
import type { BenchResult, BenchRow } from '../lib/bench.js';

const cli = path.resolve(__dirname, '../dist/cli.js');
// Generous limits for a loaded machine; nothing here measures time.
const run = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 400_000 });

interface Check {
  section: string;
  name: string;
  ok: boolean | null;
  error?: number;
  tolerance?: number;
  ms: number;
}

describe('longcat doctor', { timeout: 900_000 }, () => {
  it('--quick --json: a report of the machine and every check, all passing; CUDA checked where a device is usable', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'longcat-doctor-test-'));
    try {
      const report = path.join(dir, 'report.json');
      const r = run(['doctor', '--quick', '--json', '--report', report]);
      expect(r.status, r.stderr).toBe(0);
      const rep = JSON.parse(r.stdout);
      expect(JSON.parse(readFileSync(report, 'utf8'))).toEqual(rep); // --report writes the same JSON
      expect(rep.ok).toBe(true);
      expect(typeof rep.longcat).toBe('string');
      expect(['scalar', 'avx2', 'avx512']).toContain(rep.cpu.isa);
      expect(rep.build).toHaveProperty('cuda');
      expect(rep.cuda.used).toBe(cudaAvailable);
      const checks = rep.checks as Check[];
      const sections = [...new Set(checks.map(c => c.section))];
      expect(sections).toEqual(cudaAvailable ? ['cuda ops', 'cuda model', 'cpu ops', 'cpu model'] : ['cpu ops', 'cpu model']);
      if (!cudaAvailable) expect(rep.cuda.why).toMatch(/no CUDA|driver|without the CUDA|CUDA unavailable/);
      // every op of the table that has a CUDA kernel (and a CPU twin, on the CPU) is checked once in quick mode
      const ops = (s: string) => new Set(checks.filter(c => c.section === s).map(c => c.name.split(' ')[0]));
      if (cudaAvailable) expect(ops('cuda ops').size).toBe(doctorCases({ quick: true }).length);
      if (rep.cpu.isa !== 'scalar') expect(ops('cpu ops').size).toBe(doctorCases({ quick: true, cpu: true }).length);
      // the CPU model section holds the tiny model to the float64 reference and checks generate()
      expect(checks.some(c => c.section === 'cpu model' && /float64 reference/.test(c.name) && c.ok)).toBe(true);
      expect(checks.some(c => c.section === 'cpu model' && /^generate: /.test(c.name) && c.ok)).toBe(true);
      for (const c of checks) {
        expect(c.ok, `${c.section} ${c.name}`).not.toBe(false);
        expect(c.ms).toBeGreaterThanOrEqual(0);
        if (c.error !== undefined) expect(c.error).toBeLessThanOrEqual(c.tolerance!);
      }
      expect(rep.summary.passed + rep.summary.failed + rep.summary.skipped).toBe(checks.length);
      expect(rep.summary.failed).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--cpu-only: the table names the CPU, the build and the driver line, skips CUDA with a reason, and ends OK', () => {
    const r = run(['doctor', '--quick', '--cpu-only']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^cpu: {4}.*cores.*threads, kernels (scalar|avx2|avx512)$/m);
    expect(r.stdout).toMatch(/^build: {2}/m);
    expect(r.stdout).toMatch(/^driver: /m);
    expect(r.stdout).toMatch(/^cuda: {3}not checked: .*; checking the CPU only$/m);
    expect(r.stdout).not.toMatch(/^cuda ops:/m);
    expect(r.stdout).toMatch(/^cpu model:$/m);
    expect(r.stdout).toMatch(/^ {2}ok {3}model tiny highest: prefill logits on cpu vs the float64 reference/m);
    expect(r.stdout).toMatch(/^\d+ passed, 0 failed, \d+ skipped in [\d.]+ s: OK$/m);
    expect(r.stdout).not.toMatch(/FAIL/);
  });

  it('Ctrl+C stops it at its next check: exit 130', async () => {
    const child = spawn(process.execPath, [cli, 'doctor', '--cpu-only'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '',
      sent = false;
    child.stderr.on('data', d => {
      err += d;
    });
    child.stdout.on('data', d => {
      out += d;
      if (!sent && /^ {2}ok /m.test(out)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>(resolve => child.on('exit', c => resolve(c)));
    expect(sent).toBe(true);
    expect(code, err).toBe(130);
    expect(err).toMatch(/interrupted/);
    expect(out).not.toMatch(/passed, .* failed/); // stopped before the summary
  });
});

/** A row of `-o json`: the test's fields and the run's (lib/bench.ts benchJson). */
type Row = BenchRow & Omit<BenchResult, 'rows'>;

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const sd = (v: number[]) => Math.sqrt(v.reduce((a, b) => a + (b - mean(v)) ** 2, 0) / (v.length - 1));
const close = (a: number, b: number) => expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-9 * Math.max(Math.abs(a), Math.abs(b)));

describe('longcat bench', { timeout: 600_000 }, () => {
  it('-o json on the tiny preset: a pp and a tg row, mean and sd of the samples, bytes per token and the roofline', () => {
    const r = run(['bench', '--preset', 'tiny', '-p', '24', '-n', '6', '-r', '3', '-o', 'json', '--backend', 'cpu']);
    expect(r.status, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as Row[];
    expect(rows.map(x => x.test)).toEqual(['pp24', 'tg6']);
    const [pp, tg] = rows as [Row, Row];
    expect([pp.n_prompt, pp.n_gen, tg.n_prompt, tg.n_gen]).toEqual([24, 0, 0, 6]);
    for (const x of rows) {
      expect(x.model).toBe('longcat-flash-tiny-bench');
      expect(x.backend).toBe('cpu');
      expect(x.repetitions).toBe(3);
      expect(x.samples_ts).toHaveLength(3);
      expect(x.samples_ns).toHaveLength(3);
      close(x.avg_ts, mean(x.samples_ts));
      close(x.stddev_ts, sd(x.samples_ts));
      close(x.avg_ns, mean(x.samples_ns));
      close(x.stddev_ns, sd(x.samples_ns));
      const n = x.n_prompt || x.n_gen;
      x.samples_ns.forEach((ns, i) => {
        close(x.samples_ts[i]!, (n * 1e9) / ns);
      });
      expect(x.bandwidth_gbps).toBe(Math.max(...x.bandwidth_samples_gbps));
      expect(x.bandwidth_gbps).toBeGreaterThan(0);
      // tiny: 2 layers, top-3 of 8 FFN experts + 4 zero experts: 0..6 FFN experts per token over the layers
      expect(x.ffn_experts_per_token).toBeGreaterThanOrEqual(0);
      expect(x.ffn_experts_per_token).toBeLessThanOrEqual(6);
      expect(x.model_n_params).toBeGreaterThan(0);
    }
    // prefill is compute bound: no weight-streaming roofline
    expect([pp.weight_bytes_per_token, pp.roofline_ts, pp.roofline_fraction]).toEqual([null, null, null]);
    // decode reads the non-expert weights and the chosen experts: less than the checkpoint, more than nothing
    expect(tg.weight_bytes_per_token).toBeGreaterThan(0);
    expect(tg.weight_bytes_per_token!).toBeLessThan(tg.model_size);
    close(tg.roofline_ts!, (tg.bandwidth_gbps * 1e9) / tg.weight_bytes_per_token!);
    close(tg.roofline_fraction!, tg.avg_ts / tg.roofline_ts!);
  });

  it('-o jsonl: one object per test; -o md: the llama-bench table with the roofline columns; --model DIR', () => {
    const jsonl = run(['bench', '-p', '8', '-n', '0', '-r', '1', '-o', 'jsonl']);
    expect(jsonl.status, jsonl.stderr).toBe(0);
    const lines = jsonl.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!).test).toBe('pp8');
    const md = run(['bench', '--model', path.join(tmpdir(), 'longcat-flash-tiny-bench'), '-p', '0', '-n', '4', '-r', '2']);
    expect(md.status, md.stderr).toBe(0);
    const table = md.stdout.trim().split('\n');
    expect(table[0]).toBe(
      '| model | size | params | backend | threads | test | t/s | weight MB/token | read GB/s | roofline t/s | % roofline |',
    );
    expect(table).toHaveLength(3);
    expect(table[2]).toMatch(
      /^\| longcat-flash-tiny-bench \| .* \| tg4 \| [\d.]+ ± [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+% \|$/,
    );
  });
});

describe('progress bar', () => {
  const sink = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, stream: { isTTY, columns: 120, write: (s: string) => out.push(s) } };
  };

  it('draws nothing when the stream is not a terminal', () => {
    const { out, stream } = sink(false);
    const bar = progressBar('mapping', { stream, now: () => 0 });
    bar.update(5, 10);
    bar.update(10, 10);
    bar.end();
    expect(out).toEqual([]);
  });

  it('on a terminal: the label, the amount, the rate and the time left, redrawn in place, at most every interval', () => {
    const { out, stream } = sink(true);
    let t = 0;
    const bar = progressBar('uploading', { stream, now: () => t, interval: 100 });
    t = 2000;
    bar.update(256 << 20, 1 << 30); // 256 MiB of 1 GiB in 2 s: 128 MiB/s, 6 s left
    t = 2050;
    bar.update(300 << 20, 1 << 30); // within the interval: not drawn
    t = 8000;
    bar.update(1 << 30, 1 << 30, 'uploaded');
    bar.end();
    expect(out).toHaveLength(3);
    expect(out[0]).toMatch(/^\ruploading \[#{6}\.{18}\] 256\.0 MiB \/ 1\.0 GiB 128\.0 MiB\/s ETA 6s +$/);
    expect(out[0]).toHaveLength(120); // padded to the terminal's width - 1, after the \r
    expect(out[1]).toMatch(/^\ruploaded \[#{24}\] 1\.0 GiB \/ 1\.0 GiB .* ETA 0s/);
    expect(out[2]).toBe('\n');
  });

  it('counts items, and formats durations', () => {
    const { out, stream } = sink(true);
    let t = 0;
    const bar = progressBar('bench', { stream, now: () => t, unit: 'items' });
    t = 1000;
    bar.update(2, 10, 'tg128 3/5');
    expect(out[0]).toMatch(/^\rtg128 3\/5 \[#{5}\.{19}\] 2\/10 2\.0\/s ETA 4s/);
    expect([duration(0), duration(59.4), duration(61), duration(3725), duration(Infinity)]).toEqual([
      '0s',
      '59s',
      '1m01s',
      '1h02m',
      '?',
    ]);
  });
});

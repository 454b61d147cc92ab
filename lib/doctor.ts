// `longcat doctor`: a short self-check of this machine's build, in the spirit of scripts/gpu-check.mjs
// (which runs the whole table): with a CUDA device, one small odd-shaped case of every CUDA op (per
// op, operand dtypes and matmul precision; lib/check/op-cases.ts) against its CPU twin within the
// error-model bounds, and the tiny model on the GPU against the CPU (lib/check/model-cases.ts);
// always, the CPU: the same op cases on this CPU's vector kernels against the scalar ones, the tiny
// model's logits against the float64 reference of SPEC, and generate()'s greedy tokens against the
// argmax of a full forward. Without a usable CUDA device it says why (no driver, driver too old, not
// built with CUDA) and checks the CPU. The report (DoctorReport) is what a bug report should carry.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native, packageVersion } from './native.js';
import { Stream } from './device.js';
import { initRandom } from './init-random.js';
import { loadModel } from './generate.js';
import {
  cases,
  checkCase,
  compareOutputs,
  makeCase,
  overLimits,
  SLOW_RUN_LIMITS,
  type Limits,
  type OpCase,
} from './check/op-cases.js';
import { modelChecks, type ModelVariant } from './check/model-cases.js';

export interface DoctorCheck {
  /** 'cuda ops', 'cuda model', 'cpu ops' or 'cpu model'. */
  section: string;
  name: string;
  /** null: skipped (see detail). */
  ok: boolean | null;
  /** Worst error over its bound (<= 1 passes), or the model check's error. */
  error?: number;
  tolerance?: number;
  /** Wall milliseconds of the check (model checks: of the variant's whole run). */
  ms: number;
  detail?: string;
}

export interface DoctorReport {
  longcat: string;
  date: string;
  node: string;
  platform: string;
  cpu: { model: string; cores: number; threads: number; isa: string; features: Record<string, boolean> };
  build: Record<string, unknown>;
  cuda: {
    /** Whether the CUDA half ran. */
    used: boolean;
    /** Why not, in words (null when it ran). */
    why: string | null;
    status: Record<string, unknown>;
    devices: Record<string, unknown>[];
  };
  checks: DoctorCheck[];
  summary: { passed: number; failed: number; skipped: number; seconds: number };
  ok: boolean;
}

export interface DoctorOptions {
  /** Skip the CUDA half even where a device is usable. */
  cpuOnly?: boolean;
  /** CUDA device (default cuda:0). */
  device?: string;
  /** One case per op instead of one per op, dtypes and precision; fewer decode steps (CI). */
  quick?: boolean;
  /** Called with the machine's facts before the first check. */
  onStart?: (env: DoctorEnvironment) => void;
  /** Called as each check finishes. */
  onCheck?: (c: DoctorCheck) => void;
  signal?: AbortSignal;
}

/** Work limits of the doctor's op cases: the small ones (seconds of scalar CPU time in all); on the
 *  emulated device (one fiber per CUDA thread) smaller still. */
const DOCTOR_LIMITS: Limits = { flops: 2e6, bytes: 1 << 20 };
const EMULATED_LIMITS: Limits = { flops: 2e5, bytes: 64 << 10 };

/**
 * The op cases doctor runs: per op (quick) or per op, operand dtypes and precision, one of the
 * table's odd shapes within `limits`: the largest (quick: the smallest that does any work);
 * CPU-twinned only when `cpu`.
 */
export function doctorCases(opts: { quick?: boolean; cpu?: boolean; limits?: Limits } = {}): OpCase[] {
  const emulated = native.buildInfo().cudaArchs === 'emulated';
  const limits = opts.limits ?? (emulated && !opts.cpu ? EMULATED_LIMITS : DOCTOR_LIMITS);
  const best = new Map<string, OpCase>();
  for (const c of cases) {
    if (c.gemm || overLimits(c, limits) || (opts.cpu && c.gpuOnly)) continue; // opt-in kernels: gpu-check only
    const key = opts.quick ? c.op : `${c.op} ${JSON.stringify(c.dtypes)} ${c.precision}`;
    const b = best.get(key);
    const work = (x: OpCase) => x.flops + x.bytes;
    if (!b || (opts.quick ? work(b) === 0 || (work(c) > 0 && work(c) < work(b)) : work(c) > work(b))) best.set(key, c);
  }
  return [...best.values()];
}

/** Why the CUDA half cannot run, in words; null when it can. */
export function cudaUnavailableReason(): string | null {
  const b = native.buildInfo(),
    s = native.cudaStatus();
  if (!b.cuda || !s.compiled) return 'this build of the addon has no CUDA backend (built without the CUDA toolkit)';
  if (s.available && s.deviceCount > 0) return null;
  const r = s.reason || '';
  if (s.driverTooOld) return `the NVIDIA driver is too old for this build (${r})`;
  if (/InsufficientDriver|driver version is insufficient/i.test(r))
    return `the NVIDIA driver is older than the CUDA runtime this addon was built with (${r})`;
  if (/NoDevice|no CUDA-capable device/i.test(r)) return `no CUDA device found (${r})`;
  if (/^no NVIDIA driver found/.test(r)) return r; // (the addon's own words)
  if (/libcuda|driver.*not (found|loaded)|NoDriver|InitializationError/i.test(r)) return `no NVIDIA driver found (${r})`;
  return r ? `CUDA unavailable: ${r}` : 'no CUDA device found';
}

const elapsed = (t0: number) => performance.now() - t0;

/** Runs one op case's comparison, timed, and records it: skipped when over the work limit, failed
 *  with the message when it throws. */
function opCheck(
  add: (c: DoctorCheck) => void,
  section: string,
  name: string,
  compare: () => { skipped: true } | { ok: boolean; ratio: number; detail: string; skipped?: false },
) {
  const t = performance.now();
  try {
    const r = compare();
    if (r.skipped === true) add({ section, name, ok: null, ms: elapsed(t), detail: 'over the work limit' });
    else add({ section, name, ok: r.ok, error: r.ratio, tolerance: 1, ms: elapsed(t), ...(r.ok ? {} : { detail: r.detail }) });
  } catch (e) {
    add({ section, name, ok: false, ms: elapsed(t), detail: (e as Error).message });
  }
}

/** What the report says about the machine and the build (everything but the checks). */
export type DoctorEnvironment = Omit<DoctorReport, 'checks' | 'summary' | 'ok'>;

export function doctorEnvironment(opts: { cpuOnly?: boolean } = {}): DoctorEnvironment {
  const features = native.cpuFeatures();
  const why = cudaUnavailableReason();
  const used = !why && !opts.cpuOnly;
  const cpus = os.cpus();
  return {
    longcat: packageVersion(),
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch} ${os.release()}`,
    cpu: {
      model: cpus[0]?.model.trim() ?? 'unknown',
      cores: cpus.length,
      threads: native.threads(),
      isa: features.isa,
      features: Object.fromEntries(Object.entries(features).filter(([, v]) => typeof v === 'boolean')) as Record<string, boolean>,
    },
    build: native.buildInfo() as unknown as Record<string, unknown>,
    cuda: {
      used,
      why: used ? null : (why ?? 'skipped (--cpu-only)'),
      status: native.cudaStatus() as unknown as Record<string, unknown>,
      devices: native.devices().filter(d => d.kind === 'cuda') as unknown as Record<string, unknown>[],
    },
  };
}

export async function runDoctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const t0 = performance.now();
  const env = doctorEnvironment(opts);
  opts.onStart?.(env);
  const checks: DoctorCheck[] = [];
  const add = (c: DoctorCheck) => {
    checks.push(c);
    opts.onCheck?.(c);
  };
  const useCuda = env.cuda.used;
  const device = opts.device ?? 'cuda:0';
  const emulated = native.buildInfo().cudaArchs === 'emulated';
  const steps = opts.quick ? 3 : 6;
  if (useCuda) {
    // ---- CUDA ops against their CPU twins
    const stream = new Stream(device);
    try {
      for (const c of doctorCases({ quick: opts.quick })) {
        opts.signal?.throwIfAborted();
        opCheck(add, 'cuda ops', c.name, () => checkCase(c, stream, SLOW_RUN_LIMITS, device));
      }
    } finally {
      stream.dispose();
    }
    // ---- the tiny model on the GPU against the CPU
    const variants: ModelVariant[] = emulated || opts.quick ? ['tiny'] : ['tiny', 'tiny-fp8'];
    for (const v of variants) await modelSection('cuda model', device, v, steps, add, opts.signal);
  }

  // ---- CPU ops: this CPU's vector kernels against the scalar ones
  const startIsa = native.cpuFeatures().isa;
  const isa = (['avx512', 'avx2'] as const).find(i => native.setIsa(i) === i);
  native.setIsa(startIsa);
  if (!isa)
    add({
      section: 'cpu ops',
      name: 'vector kernels against the scalar ones',
      ok: null,
      ms: 0,
      detail: 'this CPU has neither AVX2 nor AVX-512: the scalar kernels are the only ones (checked by the model section)',
    });
  else
    try {
      for (const c of doctorCases({ quick: opts.quick, cpu: true })) {
        opts.signal?.throwIfAborted();
        opCheck(add, 'cpu ops', `${c.name} (${isa} vs scalar)`, () => {
          native.setIsa('scalar');
          const ref = makeCase(c, 'cpu');
          ref.run(null);
          native.setIsa(isa);
          const dut = makeCase(c, 'cpu');
          dut.run(null);
          return compareOutputs(ref, dut, { ref: 'cpu', dut: 'cpu' });
        });
      }
    } finally {
      native.setIsa(startIsa);
    }

  // ---- the tiny model on the CPU: the float64 reference, and generate()
  await modelSection('cpu model', 'cpu', 'tiny', steps, add, opts.signal);
  opts.signal?.throwIfAborted();
  add(await generateCheck(opts.quick ? 4 : 8));

  const passed = checks.filter(c => c.ok === true).length,
    failed = checks.filter(c => c.ok === false).length;
  return {
    ...env,
    checks,
    summary: { passed, failed, skipped: checks.length - passed - failed, seconds: elapsed(t0) / 1e3 },
    ok: failed === 0,
  };
}

/** modelChecks of one variant on `device` against the CPU (on the CPU: against the float64 reference). */
async function modelSection(
  section: string,
  device: string,
  variant: ModelVariant,
  steps: number,
  add: (c: DoctorCheck) => void,
  signal?: AbortSignal,
) {
  signal?.throwIfAborted();
  const t = performance.now();
  try {
    const r = await modelChecks({ device, presets: [variant], precision: 'highest', steps });
    const ms = elapsed(t);
    for (const c of r) add({ section, name: `model ${c.name}`, ok: c.ok, error: c.err, tolerance: c.tol, ms });
  } catch (e) {
    add({ section, name: `model ${variant}`, ok: false, ms: elapsed(t), detail: (e as Error).message });
  }
}

/**
 * generate() on the CPU: the greedy tokens of a session equal, position by position, the argmax of
 * one full forward over the prompt and those tokens (teacher forcing; a near-tie of the top two
 * logits, within 1e-4 of their scale, accepts either).
 */
async function generateCheck(maxTokens: number): Promise<DoctorCheck> {
  const t = performance.now();
  const name = `generate: ${maxTokens} greedy tokens == argmax of a full forward`;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'longcat-doctor-'));
  try {
    await initRandom({ preset: 'tiny', out: dir, seed: 7 });
    using model = await loadModel(dir, { backend: 'cpu', maxContext: 128 });
    using session = model.createSession();
    const prompt = [5, 17, 300, 2, 99, 41, 7];
    const r = await session.generate({ tokens: prompt }, { maxTokens, temperature: 0 });
    const all = [...prompt, ...r.tokens];
    const logits = model.forward(all.slice(0, -1));
    const V = model.engine.dims.vocab;
    let bad = 0;
    r.tokens.forEach((tok, i) => {
      const row = logits.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V);
      let best = 0,
        scale = 0;
      for (let j = 0; j < V; j++) {
        if (row[j]! > row[best]!) best = j;
        scale = Math.max(scale, Math.abs(row[j]!));
      }
      if (best !== tok && row[best]! - row[tok]! > 1e-4 * scale) bad++;
    });
    const ok = bad === 0 && r.tokens.length > 0;
    return {
      section: 'cpu model',
      name,
      ok,
      error: bad,
      tolerance: 0,
      ms: elapsed(t),
      ...(ok ? {} : { detail: `${bad} of ${r.tokens.length} tokens differ` }),
    };
  } catch (e) {
    return { section: 'cpu model', name, ok: false, ms: elapsed(t), detail: (e as Error).message };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The report's first lines: the versions, the CPU, the build, the driver and the cards. */
export function doctorHeader(r: DoctorEnvironment): string {
  const lines: string[] = [];
  lines.push(`longcat-flash ${r.longcat}, node ${r.node}, ${r.platform}`);
  lines.push(`cpu:    ${r.cpu.model}, ${r.cpu.cores} cores, ${r.cpu.threads} threads, kernels ${r.cpu.isa}`);
  const b = r.build;
  lines.push(
    `build:  ${String(b.buildSystem)}, ${String(b.compiler)}, CUDA ${b.cuda ? `sm_${String(b.cudaArchs)}` : 'not compiled in'}`,
  );
  // The driver's version and the floor the linked CUDA runtime needs.
  const s = r.cuda.status as { driverVersion?: string; driverCudaVersion?: string; driverTooOld?: boolean };
  const found =
    s.driverVersion || s.driverCudaVersion
      ? `${s.driverVersion || '(release unknown)'} for CUDA ${s.driverCudaVersion}`
      : 'none found';
  lines.push(
    b.cuda
      ? `driver: ${found}; this build needs >= ${String(b.cudaMinDriver)}${s.driverTooOld ? ' (too old: the CPU backend runs instead)' : ''}`
      : 'driver: not needed (no CUDA backend in this build)',
  );
  for (const d of r.cuda.devices)
    lines.push(
      `card:   ${String(d.id)} ${String(d.name)}, sm_${String(d.computeCapability).replace('.', '')}, ${String(d.multiprocessors)} SMs`,
    );
  lines.push(
    r.cuda.used
      ? 'cuda:   checking the CUDA device against the CPU, then the CPU'
      : `cuda:   not checked: ${r.cuda.why}; checking the CPU only`,
  );
  return `${lines.join('\n')}\n`;
}

/** One check as a table row: ok / FAIL / skip, the name, error / tolerance, milliseconds. */
export function doctorLine(c: DoctorCheck, width = 72): string {
  const mark = c.ok === null ? 'skip' : c.ok ? 'ok  ' : 'FAIL';
  const err = c.error === undefined ? '' : `${c.error.toExponential(2)} / ${c.tolerance}`;
  const name = c.name.length > width ? c.name.slice(0, width) : c.name.padEnd(width);
  return `  ${mark} ${name} ${err.padStart(20)} ${`${c.ms.toFixed(0)} ms`.padStart(9)}${c.detail ? `  (${c.detail})` : ''}\n`;
}

export function doctorSummary(r: DoctorReport): string {
  const s = r.summary;
  return `${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped in ${s.seconds.toFixed(1)} s: ${r.ok ? 'OK' : 'FAILED'}\n`;
}

/** The whole report as the table `longcat doctor` prints. */
export function doctorTable(r: DoctorReport): string {
  let out = doctorHeader(r),
    section = '';
  for (const c of r.checks) {
    if (c.section !== section) {
      section = c.section;
      out += `\n${section}:\n`;
    }
    out += doctorLine(c);
  }
  return `${out}\n${doctorSummary(r)}`;
}

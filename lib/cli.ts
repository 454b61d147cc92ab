#!/usr/bin/env node
// The `longcat` command: info, generate, chat, serve, inspect, init-random, quantize, eval.
import { parseArgs } from 'node:util';
import { existsSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { buildInfo, cpuFeatures, devices, native, threads } from './index.js';
import { LongcatError } from './errors.js';
import { loadModel, type GenerateOptions, type Model } from './generate.js';
import { AGREEMENT_PRESETS, initRandom, type Preset } from './init-random.js';
import { openCheckpoint, type LoadProgress } from './checkpoint.js';
import type { UploadProgress } from './model/weights.js';
import { type HostProgress, type ModelMemory, modelMemory, uploadBytes } from './model/load.js';
import { activeParams } from './config.js';
import { quantizeCheckpoint } from './quantize.js';
import { evalKld } from './eval.js';
import type { ChatMessage } from './chat.js';
import type { Backend } from './model/load.js';
import { createServer } from './server.js';

const USAGE = `usage: longcat <command> [options]

commands:
  generate [--model DIR] --prompt TEXT   stream a completion (no --model: a generated tiny model)
           [--chat] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P]
           [--seed S] [--stop STR] [--backend auto|cpu|cuda] [--threads N]
           [--max-context N] [--prefill-chunk N] [--speculative]
  chat --model DIR                       interactive chat (Ctrl+C stops an answer; twice quits)
  serve [--model DIR] [--host H] [--port P]   an OpenAI-compatible HTTP server (no --model: the tiny one)
           [--api-key K] [--speculative] [--max-concurrent N] [--max-queue N]
           [--shutdown-timeout S] [--backend ...] [--threads N] [--max-context N]
                                         SIGTERM / Ctrl+C: finish in-flight requests, then exit
                                         (a second one aborts them)
  inspect DIR                            config, tensors, bytes, active parameters per token, where weights live
  init-random --preset tiny|small|medium|lite --out DIR [--fp8] [--mtp] [--seed S]
           [--draft-agreement F]         write a random LongCat-Flash checkpoint (original layout);
                                         with --mtp, tiny|small|lite: greedy text follows a fixed
                                         token cycle and the MTP drafts are accepted at rate F
  quantize --to fp8|int8|int4 IN OUT     write IN's linears quantized to OUT (new or empty), shard by
                                         shard: fp8 = block FP8 (SPEC 7.1), int8 = per-row int8,
                                         int4 = GPTQ-packed 4-bit (group 128, symmetric)
  eval --kld BASE QUANT --text FILE      KL divergence of QUANT's next-token distribution from BASE's,
           [--ctx N] [--threads N] [--json]  top-1 agreement and both perplexities (CPU)
  info [--json]                          backends, devices, CPU features and build flags
`;

function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < u.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function formatCount(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : `${n}`;
}

function info(json: boolean) {
  const b = buildInfo(),
    f = cpuFeatures(),
    c = native.cudaStatus();
  if (json) {
    console.log(JSON.stringify({ build: b, cpu: f, threads: threads(), cuda: c, devices: devices() }, null, 2));
    return;
  }
  const isa = Object.entries(f)
    .filter(([k, v]) => k !== 'isa' && v === true)
    .map(([k]) => k)
    .join(' ');
  console.log(
    `longcat-flash native addon (${b.buildSystem} build, ${b.compiler}${b.debug ? ', debug' : ''}, N-API ${b.napiVersion})`,
  );
  console.log(`backends:  cpu${b.cuda ? `, cuda (compiled for sm_${b.cudaArchs})` : ' (built without CUDA)'}`);
  console.log(`cpu:       ${threads()} threads, kernels use ${f.isa}; features: ${isa || 'none'}`);
  console.log(`cuda:      ${c.available ? `${c.deviceCount} device(s)` : `unavailable (${c.reason})`}`);
  for (const d of devices()) {
    if (d.kind === 'cuda')
      console.log(
        `  ${d.id}: ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${d.multiprocessors} SMs, ${formatBytes(d.totalBytes)} (${formatBytes(d.freeBytes)} free)`,
      );
  }
}

/** Where the weights live, in one line: uploaded per device, mapped in host memory (N-gram tables apart). */
function describeMemory(m: ModelMemory): string {
  const parts = Object.entries(m.uploaded).map(([d, b]) => `${formatBytes(b)} uploaded to ${d}`);
  parts.push(`${formatBytes(m.hostMapped)} mapped in host memory`);
  if (m.ngramTables) parts[parts.length - 1] += ` (of which ${formatBytes(m.ngramTables)} N-gram tables, never uploaded)`;
  return parts.join(', ');
}

/** A one-line progress bar on stderr (only when stderr is a terminal). */
function progressBar(label: string) {
  const tty = process.stderr.isTTY;
  return {
    update(p: LoadProgress | UploadProgress | HostProgress) {
      if (!tty) return;
      const frac = p.totalBytes ? p.bytes / p.totalBytes : 1;
      const bar = '#'.repeat(Math.round(frac * 30)).padEnd(30, '.');
      const what =
        p.phase === 'upload' ? `uploading to ${p.device}` : p.phase === 'host' ? 'N-gram tables stay on the host' : label;
      process.stderr.write(`\r${what} [${bar}] ${formatBytes(p.bytes)} / ${formatBytes(p.totalBytes)}`);
    },
    done() {
      if (tty) process.stderr.write('\n');
    },
  };
}

/** The tiny model `generate` uses when no --model is given: generated once, then reused. */
async function defaultModelDir(): Promise<string> {
  // v2: with an MTP head whose drafts are accepted 90% of the time, so --speculative shows its effect
  const dir = path.join(tmpdir(), 'longcat-flash-tiny-v2');
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) {
    process.stderr.write(`longcat: no --model given; writing a random tiny LongCat-Flash checkpoint to ${dir}\n`);
    // Written aside and renamed into place, so an interrupted run never leaves half a checkpoint.
    const tmp = `${dir}.tmp-${process.pid}`;
    await initRandom({ preset: 'tiny', out: tmp, seed: 0, mtp: true, draftAgreement: 0.9 });
    rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process won the race: use its copy
    }
  }
  return dir;
}

const modelOptions = {
  model: { type: 'string' },
  backend: { type: 'string' },
  threads: { type: 'string' },
  'max-context': { type: 'string' },
  'prefill-chunk': { type: 'string' },
} as const;

const samplingOptions = {
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'min-p': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  speculative: { type: 'boolean' },
} as const;

/** A command-line mistake: reported with the usage text, exit code 2. */
class UsageError extends LongcatError {
  constructor(message: string) {
    super('E_ARGUMENT', message);
  }
}

interface NumRule {
  integer?: boolean;
  min?: number;
  max?: number;
}

function num(v: string | undefined, name: string, rule: NumRule = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = v.trim() === '' ? NaN : Number(v);
  const kind = rule.integer ? 'an integer' : 'a number';
  const range =
    rule.min !== undefined && rule.max !== undefined
      ? ` in [${rule.min}, ${rule.max}]`
      : rule.min !== undefined
        ? ` >= ${rule.min}`
        : '';
  if (
    !Number.isFinite(n) ||
    (rule.integer && !Number.isInteger(n)) ||
    (rule.min !== undefined && n < rule.min) ||
    (rule.max !== undefined && n > rule.max)
  )
    throw new UsageError(`--${name} must be ${kind}${range}, got '${v}'`);
  return n;
}

/** Only the options given: an absent one must not override a command's default. */
function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, x]) => x !== undefined)) as Partial<T>;
}

interface ModelArgs {
  model?: string;
  backend?: string;
  threads?: string;
  'max-context'?: string;
  'prefill-chunk'?: string;
}

/** Checks the model options before anything is loaded. */
function modelArgs(v: ModelArgs) {
  if (v.backend !== undefined && !['auto', 'cpu', 'cuda'].includes(v.backend))
    throw new UsageError(`--backend must be auto, cpu or cuda, got '${v.backend}'`);
  return {
    backend: v.backend as Backend | undefined,
    threads: num(v.threads, 'threads', { integer: true, min: 1 }),
    maxContext: num(v['max-context'], 'max-context', { integer: true, min: 1 }),
    prefillChunk: num(v['prefill-chunk'], 'prefill-chunk', { integer: true, min: 1 }),
  };
}

async function openModel(v: ModelArgs, opts: ReturnType<typeof modelArgs>, signal?: AbortSignal): Promise<Model> {
  const dir = v.model ?? (await defaultModelDir());
  const bar = progressBar('loading');
  const model = await loadModel(dir, { ...opts, signal, onProgress: p => bar.update(p) });
  bar.done();
  process.stderr.write(`longcat: ${path.basename(path.resolve(dir))} on ${model.device}\n`);
  process.stderr.write(`longcat: weights: ${describeMemory(model.memory)}\n`);
  return model;
}

function sampling(v: Record<string, string | string[] | boolean | undefined>): GenerateOptions {
  return defined({
    maxTokens: num(v['max-tokens'] as string | undefined, 'max-tokens', { integer: true, min: 0 }),
    temperature: num(v.temperature as string | undefined, 'temperature', { min: 0 }),
    topK: num(v['top-k'] as string | undefined, 'top-k', { integer: true, min: 0 }),
    topP: num(v['top-p'] as string | undefined, 'top-p', { min: 0, max: 1 }),
    minP: num(v['min-p'] as string | undefined, 'min-p', { min: 0, max: 1 }),
    seed: num(v.seed as string | undefined, 'seed', { integer: true, min: 0 }),
    stop: v.stop as string[] | undefined,
    speculative: v.speculative as boolean | undefined,
  });
}

async function generate(args: string[]) {
  const { values: v } = parseArgs({
    args,
    options: { ...modelOptions, ...samplingOptions, prompt: { type: 'string' }, chat: { type: 'boolean' } },
  });
  if (v.prompt === undefined) throw new UsageError('generate: --prompt TEXT is required');
  const opts = sampling(v);
  const margs = modelArgs(v);
  // Ctrl+C from here on: it stops the loading, or the generation at its next step or prefill chunk.
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.on('SIGINT', onSigint);
  try {
    using model = await openModel(v, margs, ac.signal);
    using session = model.createSession();
    const g = session.generate(v.chat ? [{ role: 'user', content: v.prompt }] : v.prompt, { ...opts, signal: ac.signal });
    for await (const chunk of g) process.stdout.write(chunk);
    const r = await g;
    process.stdout.write('\n');
    if (r.stopReason === 'abort') process.exitCode = 130; // interrupted (128 + SIGINT), as shells report it
    process.stderr.write(
      `[${r.stopReason}] prompt ${r.promptTokens} tokens (${r.prefillTokensPerSecond.toFixed(1)} tok/s), ` +
        `generated ${r.completionTokens} tokens (${r.tokensPerSecond.toFixed(1)} tok/s), first token ${r.timeToFirstTokenMs.toFixed(0)} ms, ` +
        `${r.avgFfnExpertsPerToken.toFixed(2)} FFN experts/token/layer\n`,
    );
    const sp = r.speculative;
    if (sp)
      process.stderr.write(
        `speculative: ${sp.draftedTokens} drafts, ${sp.acceptedTokens} accepted (${(100 * sp.acceptanceRate).toFixed(1)}%), ` +
          `${sp.meanAcceptedLength.toFixed(2)} tokens per verify step\n`,
      );
  } finally {
    process.off('SIGINT', onSigint);
  }
}

async function chat(args: string[]) {
  const { values: v } = parseArgs({ args, options: { ...modelOptions, ...samplingOptions, system: { type: 'string' } } });
  const opts: GenerateOptions = { maxTokens: 512, ...sampling(v) };
  using model = await openModel(v, modelArgs(v));
  using session = model.createSession();
  const messages: ChatMessage[] = v.system ? [{ role: 'system', content: v.system }] : [];
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, prompt: '> ' });
  let answering: AbortController | null = null;
  rl.on('SIGINT', () => {
    if (answering) answering.abort();
    else rl.close();
  });
  rl.prompt();
  for await (const line of rl) {
    if (!line.trim()) {
      rl.prompt();
      continue;
    }
    messages.push({ role: 'user', content: line });
    answering = new AbortController();
    const g = session.generate(messages, { ...opts, signal: answering.signal });
    for await (const chunk of g) process.stdout.write(chunk);
    const r = await g;
    answering = null;
    process.stdout.write(r.stopReason === 'abort' ? ' [stopped]\n' : r.stopReason === 'cache' ? ' [KV cache full]\n' : '\n');
    messages.push({ role: 'assistant', content: r.text });
    rl.prompt();
  }
}

async function serve(args: string[]) {
  const { values: v } = parseArgs({
    args,
    options: {
      ...modelOptions,
      host: { type: 'string' },
      port: { type: 'string' },
      'api-key': { type: 'string' },
      speculative: { type: 'boolean' },
      'max-concurrent': { type: 'string' },
      'max-queue': { type: 'string' },
      'shutdown-timeout': { type: 'string' },
      'model-name': { type: 'string' },
    },
  });
  const margs = modelArgs(v);
  const port = num(v.port, 'port', { integer: true, min: 0, max: 65535 }) ?? 8000;
  const host = v.host ?? '127.0.0.1';
  const timeout = num(v['shutdown-timeout'], 'shutdown-timeout', { min: 0 });
  if (v['api-key'] === '') throw new UsageError('--api-key must not be empty');
  // The server listens while the weights load (it answers 503 until then).
  const ac = new AbortController();
  const loading = openModel(v, margs, ac.signal);
  const server = createServer(loading, {
    ...defined({
      apiKey: v['api-key'],
      modelName: v['model-name'],
      speculative: v.speculative,
      maxConcurrent: num(v['max-concurrent'], 'max-concurrent', { integer: true, min: 1 }),
      maxQueue: num(v['max-queue'], 'max-queue', { integer: true, min: 0 }),
    }),
    ...(timeout !== undefined ? { shutdownTimeoutMs: Math.round(timeout * 1000) } : {}),
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      process.stderr.write(`longcat: ${signal} again: aborting in-flight requests\n`);
      server.abortAll();
      return;
    }
    stopping = true;
    const { running, queued } = server.load;
    process.stderr.write(`longcat: ${signal}: no new requests; waiting for ${running + queued} in flight\n`);
    ac.abort();
    void server.close();
  };
  const onTerm = () => stop('SIGTERM'),
    onInt = () => stop('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    const closed = new Promise<void>(r => server.addHook('onClose', async () => r()));
    const url = await server.listen({ host, port });
    process.stdout.write(`longcat: serving on ${url}/v1 (OpenAI API; /health, /metrics)\n`);
    let model: Model | null = null;
    try {
      model = await loading;
      process.stderr.write('longcat: model loaded, accepting requests\n');
    } catch (e) {
      if (!stopping) {
        await server.close();
        throw e;
      }
    }
    await closed;
    model?.dispose();
    process.stderr.write('longcat: stopped\n');
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}

async function inspect(args: string[]) {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const dir = positionals[0];
  if (!dir) throw new UsageError('inspect: a checkpoint directory is required');
  using ck = await openCheckpoint(dir);
  const c = ck.config;
  const typical = Math.min(8, c.moe_topk, c.n_routed_experts); // ~8 FFN experts per token in LongCat-Flash (SPEC 1.2)
  const p = activeParams(c, { expectedFfnExperts: typical, mtp: ck.hasMtp });
  const dtypes = new Map<string, number>();
  for (const t of ck.tensors.values()) dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
  console.log(`checkpoint:   ${path.resolve(dir)}`);
  console.log(`files:        ${ck.files.length} safetensors shard(s), ${formatBytes(ck.totalBytes)}`);
  console.log(
    `tensors:      ${ck.tensors.size} (${[...dtypes].map(([d, n]) => `${n} ${d}`).join(', ')})${ck.unexpected.length ? `, ${ck.unexpected.length} unexpected` : ''}`,
  );
  console.log(
    `format:       ${ck.quantization === 'fp8' ? 'block FP8 (e4m3, 128x128 scales)' : ck.quantization === 'int8' ? 'int8 weights (per-row scales)' : ck.quantization === 'int4' ? 'int4 weights (GPTQ packing, group scales)' : 'unquantized'}, experts ${[...new Set(ck.expertLayouts)].join('/')}, MTP ${ck.hasMtp ? 'present' : 'absent'}`,
  );
  console.log(
    `architecture: ${c.num_layers} layers x (2 MLA + 2 dense FFN + MoE), hidden ${c.hidden_size}, ${c.num_attention_heads} heads, vocab ${c.vocab_size}`,
  );
  console.log(
    `MoE:          ${c.n_routed_experts} FFN experts (${c.expert_ffn_hidden_size} wide) + ${c.zero_expert_num} zero experts, top-${c.moe_topk}, scale ${c.routed_scaling_factor}`,
  );
  console.log(
    `RoPE:         theta ${c.rope_theta}${c.rope_scaling ? `, YaRN x${c.rope_scaling.factor}` : ''}, context ${c.max_position_embeddings}`,
  );
  console.log(`parameters:   ${formatCount(p.total)} total${p.mtp ? ` (+${formatCount(p.mtp)} MTP)` : ''}`);
  if (c.ngram)
    console.log(
      `N-gram:       ${formatCount(p.ngramTables)} in ${c.ngram.splitNum * (c.ngram.neighborNum - 1)} tables (orders 2..${c.ngram.neighborNum}, ` +
        `${c.ngram.splitNum} splits; looked up, kept in host memory) + ${formatCount(p.ngramProjections)} projections (active)`,
    );
  console.log(
    `active/token: ${formatCount(p.activeMin)} (0 FFN experts) .. ${formatCount(p.activeMax)} (${Math.min(c.moe_topk, c.n_routed_experts)}), ${formatCount(p.activeExpected!)} at ${typical}`,
  );
  // Where generate's weights would live (its `weights:` line), from the checkpoint alone.
  console.log(`weights cpu:  ${describeMemory(modelMemory(ck, 'cpu', {}, ck.hasMtp))}`);
  console.log(`weights cuda: ${describeMemory(modelMemory(ck, 'cuda', { 'the GPU': uploadBytes(ck, ck.hasMtp) }, ck.hasMtp))}`);
}

async function initRandomCmd(args: string[]) {
  const { values: v } = parseArgs({
    args,
    options: {
      preset: { type: 'string' },
      out: { type: 'string' },
      fp8: { type: 'boolean' },
      mtp: { type: 'boolean' },
      seed: { type: 'string' },
      'draft-agreement': { type: 'string' },
    },
  });
  if (!v.out) throw new UsageError('init-random: --out DIR is required');
  const preset = (v.preset ?? 'tiny') as Preset;
  if (!['tiny', 'small', 'medium', 'lite'].includes(preset))
    throw new UsageError(`init-random: unknown preset '${preset}' (tiny, small, medium or lite)`);
  const draftAgreement = num(v['draft-agreement'], 'draft-agreement', { min: 0, max: 1 });
  if (draftAgreement !== undefined && !v.mtp) throw new UsageError('init-random: --draft-agreement needs --mtp');
  if (draftAgreement !== undefined && !AGREEMENT_PRESETS.includes(preset))
    throw new UsageError(`init-random: --draft-agreement needs --preset ${AGREEMENT_PRESETS.join('|')}, not '${preset}'`);
  const r = await initRandom({
    preset,
    out: v.out,
    fp8: v.fp8,
    mtp: v.mtp,
    seed: num(v.seed, 'seed', { integer: true, min: 0 }),
    draftAgreement,
  });
  console.log(`wrote ${r.tensorCount} tensors, ${formatBytes(r.totalBytes)} in ${r.files.length} files to ${r.dir}`);
  if (r.draftAcceptance !== undefined)
    console.log(`greedy speculative decoding (one draft token) accepts ${r.draftAcceptance.toFixed(4)} of the MTP drafts`);
}

async function quantizeCmd(args: string[]) {
  const { values: v, positionals } = parseArgs({ args, allowPositionals: true, options: { to: { type: 'string' } } });
  if (v.to === undefined) throw new UsageError('quantize: --to fp8|int8|int4 is required');
  if (v.to !== 'fp8' && v.to !== 'int8' && v.to !== 'int4')
    throw new UsageError(`quantize: --to must be fp8, int8 or int4, got '${v.to}'`);
  if (positionals.length !== 2) throw new UsageError('quantize: give the input and the output directory: quantize --to F IN OUT');
  const [input, output] = positionals as [string, string];
  const tty = process.stderr.isTTY;
  const r = await quantizeCheckpoint(input, output, {
    to: v.to,
    onProgress: p => {
      if (tty)
        process.stderr.write(
          `\r[${p.done}/${p.total}] ${formatBytes(p.bytes)} / ${formatBytes(p.totalBytes)} ${p.action} ${p.tensor}`
            .padEnd(100)
            .slice(0, 100),
        );
    },
  });
  if (tty) process.stderr.write('\n');
  console.log(
    `wrote ${r.format} checkpoint to ${r.dir}: ${r.quantized} linears quantized, ${r.copied} tensors kept, ` +
      `${formatBytes(r.inputBytes)} -> ${formatBytes(r.outputBytes)} in ${r.files.length} file(s)`,
  );
}

async function evalCmd(args: string[]) {
  const { values: v, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      kld: { type: 'boolean' },
      text: { type: 'string' },
      ctx: { type: 'string' },
      threads: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!v.kld) throw new UsageError('eval: --kld is the only evaluation: eval --kld BASE QUANT --text FILE');
  if (positionals.length !== 2) throw new UsageError('eval: give the base and the quantized checkpoint: eval --kld BASE QUANT');
  if (v.text === undefined) throw new UsageError('eval: --text FILE is required');
  const [base, quant] = positionals as [string, string];
  const r = await evalKld(base, quant, {
    textFile: v.text,
    ...defined({
      ctx: num(v.ctx, 'ctx', { integer: true, min: 3 }),
      threads: num(v.threads, 'threads', { integer: true, min: 1 }),
    }),
  });
  if (v.json) {
    console.log(JSON.stringify(r, null, 2));
    return;
  }
  const f = (x: number, d = 4) => x.toFixed(d);
  console.log(`tokens:          ${r.tokens} in ${r.windows} window(s) of ${r.ctx}, ${r.scored} predictions scored`);
  console.log(`PPL(base):       ${f(r.pplBase)}`);
  console.log(`PPL(quant):      ${f(r.pplQuant)}`);
  console.log(`ln(PPL ratio):   ${f(r.meanLnPplRatio, 6)}`);
  console.log(`mean KLD:        ${f(r.meanKld, 6)} +/- ${f(r.kldStderr, 6)}`);
  console.log(`median KLD:      ${f(r.medianKld, 6)}`);
  console.log(`99% KLD:         ${f(r.p99Kld, 6)}`);
  console.log(`max KLD:         ${f(r.maxKld, 6)}`);
  console.log(`same top token:  ${f(100 * r.top1Agreement, 3)} %`);
}

async function main(argv: string[]) {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info': {
      const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } } });
      return info(!!values.json);
    }
    case 'generate':
      return generate(rest);
    case 'chat':
      return chat(rest);
    case 'serve':
      return serve(rest);
    case 'inspect':
      return inspect(rest);
    case 'init-random':
      return initRandomCmd(rest);
    case 'quantize':
      return quantizeCmd(rest);
    case 'eval':
      return evalCmd(rest);
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return;
    default:
      process.stderr.write(`longcat: unknown command '${cmd}'\n${USAGE}`);
      process.exitCode = 2;
  }
}

// Exit codes: 0 done, 1 a runtime error, 2 a command-line mistake (printed with the usage), 130
// generation stopped by Ctrl+C.
main(process.argv.slice(2)).catch((err: unknown) => {
  const parseError = (err as { code?: string })?.code?.startsWith('ERR_PARSE_ARGS');
  if (err instanceof UsageError || parseError) {
    process.stderr.write(`longcat: ${(err as Error).message}${err instanceof LongcatError ? ` [${err.code}]` : ''}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (err instanceof LongcatError && err.code === 'E_ABORTED') {
    process.stderr.write('longcat: interrupted\n');
    process.exitCode = 130; // Ctrl+C while the model was loading
    return;
  }
  if (err instanceof LongcatError) process.stderr.write(`longcat: ${err.message} [${err.code}]\n`);
  else process.stderr.write(`longcat: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
});

#!/usr/bin/env node
// The `longcat` command: generate, chat, serve, inspect, init-random, quantize, eval, bench, doctor,
// info, help. Every argument is checked before a model is loaded or a file written; exit codes: 0
// done, 1 a runtime error (or a failed doctor check), 2 a command-line mistake (printed with the
// command's usage), 130 interrupted by Ctrl+C.
import { parseArgs } from 'node:util';
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { buildInfo, cpuFeatures, devices, native, threads } from './index.js';
import { packageVersion } from './native.js';
import { progressBar } from './progress.js';
import { benchJson, benchJsonl, benchMarkdown, benchModel } from './bench.js';
import { doctorHeader, doctorLine, doctorSummary, runDoctor } from './doctor.js';
import { LongcatError } from './errors.js';
import { loadModel, type GenerateOptions, type Model } from './generate.js';
import { AGREEMENT_PRESETS, initRandom, type InitRandomOptions, type Preset } from './init-random.js';
import { openCheckpoint } from './checkpoint.js';
import { type ModelMemory, modelMemory, uploadBytes } from './model/load.js';
import { activeParams } from './config.js';
import { quantizeCheckpoint } from './quantize.js';
import { evalKld } from './eval.js';
import type { ChatMessage } from './chat.js';
import type { Backend } from './model/load.js';
import { createServer } from './server.js';

/** Each command's help (`longcat <command> --help`): the synopsis line first (the command list shows it). */
const HELP: Record<string, string> = {
  generate: `generate [--model DIR] --prompt TEXT [options]   stream a completion
  --model DIR            a checkpoint directory (default: a generated tiny model, written once to the temp folder)
  --prompt TEXT          the prompt (required)
  --chat                 wrap the prompt as a user message in the model's chat template
  --json                 print the result (text, tokens, timings) as JSON instead of streaming the text
  --max-tokens N         tokens to generate (default 256)
  --temperature T        0 = greedy; --top-k K, --top-p P, --min-p P filter the distribution
  --seed S               the sampler's seed
  --stop STR             stop at this text (repeatable)
  --speculative          draft with the MTP head and verify (checkpoints with one)
  --backend auto|cpu|cuda, --threads N, --max-context N, --prefill-chunk N
Ctrl+C stops the generation (exit 130).`,
  chat: `chat [--model DIR] [options]   interactive chat on stdin / stdout
  --system TEXT          a system message; the sampling and model options of generate
Ctrl+C stops an answer; at the prompt it quits.`,
  serve: `serve [--model DIR] [--host H] [--port P] [options]   an OpenAI-compatible HTTP server
  --model DIR            a checkpoint (default: the generated tiny model)
  --host H, --port P     where to listen (default 127.0.0.1:8000)
  --api-key K            require "Authorization: Bearer K"
  --model-name NAME      the model id the API reports
  --speculative          MTP speculative decoding for every request
  --max-concurrent N, --max-queue N   admission limits
  --shutdown-timeout S   seconds to wait for in-flight requests on SIGTERM / Ctrl+C (a second one aborts them)
  --prefill-chunk-while-decoding N   prompt tokens per prefill step while other requests decode (default 128)
  --backend auto|cpu|cuda, --threads N, --max-context N, --prefill-chunk N`,
  inspect: `inspect DIR [--json]   a checkpoint's config, tensors, bytes, active parameters per token, where weights live
  --json                 the same facts as JSON`,
  'init-random': `init-random --out DIR [--preset tiny|small|medium|lite] [options]   write a random LongCat-Flash checkpoint
  --preset P             tiny (default), small, medium (about 1.6 GB) or lite (the N-gram layout)
  --fp8                  block-FP8 linears, as the released checkpoints
  --mtp                  with the MTP head; --draft-agreement F (tiny|small|lite): greedy text follows a
                         fixed token cycle and the MTP drafts are accepted at rate F
  --seed S               the weights' seed`,
  quantize: `quantize --to fp8|int8|int4 IN OUT   write IN's linears quantized to OUT (new or empty), shard by shard
  --to fp8               block FP8 (SPEC 7.1); int8: per-row int8; int4: GPTQ-packed 4-bit (group 128, symmetric)`,
  eval: `eval --kld BASE QUANT --text FILE [options]   how far a quantized checkpoint is from its base
  KL divergence of QUANT's next-token distribution from BASE's, top-1 agreement and both perplexities (CPU)
  --ctx N                tokens per window; --threads N; --json: the numbers as JSON`,
  bench: `bench [-m DIR | --preset P] [-p N] [-n N] [-r N] [-o md|json|jsonl]   prefill and decode tokens/s (llama-bench)
  -m, --model DIR        a checkpoint directory, or
  --preset P             a generated random checkpoint: tiny (default), small, medium or lite (written once to the temp folder)
  -p, --n-prompt N       prompt tokens of the prefill test pp<N> (default 512; 0: none)
  -n, --n-gen N          decode steps of the generation test tg<N> (default 128; 0: none)
  -r, --repetitions N    runs of each test; mean and standard deviation over them (default 5)
  -o, --output F         md (default), json or jsonl
  -t, --threads N, --backend auto|cpu|cuda
Columns beyond llama-bench's: weight bytes a decode step reads, the read bandwidth measured in the
same run and the fraction of the weight-streaming roofline (bandwidth / bytes per token) reached.`,
  doctor: `doctor [--json] [--report FILE] [--cpu-only] [--quick]   check this machine's build (about a minute)
Runs one small odd-shaped case of every CUDA op against its CPU twin and the tiny model on the GPU
against the CPU (where a CUDA device is usable; otherwise it says why), then the CPU: its vector
kernels against the scalar ones, the tiny model against the float64 reference, generate()'s tokens.
Prints a pass/fail table with the card, the driver and timings.
  --json                 print the report as JSON (attach it to a bug report) instead of the table
  --report FILE          also write the JSON report to FILE
  --cpu-only             skip the CUDA half
  --quick                fewer cases (one per op)
  --device cuda:N        the CUDA device (default cuda:0)
Exits 1 if a check fails.`,
  info: `info [--json]   backends, devices, CPU features and build flags`,
  help: `help [COMMAND]   this list, or a command's options`,
};

const USAGE = `usage: longcat <command> [options]

commands:
${Object.values(HELP)
  .map(h => `  ${h.split('\n')[0]}`)
  .join('\n')}

  longcat <command> --help   a command's options;  longcat --version   the package version
exit codes: 0 done, 1 an error (or a failed check), 2 a command-line mistake, 130 interrupted (Ctrl+C)
`;

/** A command's help text. */
const commandHelp = (cmd: string) => `usage: longcat ${HELP[cmd]}\n`;

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
  console.log(
    `backends:  cpu${b.cuda ? `, cuda (compiled for ${b.cudaArchs}; CUDA ${b.cudaRuntime} runtime, needs NVIDIA driver >= ${b.cudaMinDriver})` : ' (built without CUDA)'}`,
  );
  console.log(`cpu:       ${threads()} threads, kernels use ${f.isa}; features: ${isa || 'none'}`);
  const driver = c.driverCudaVersion ? `; driver ${c.driverVersion || '(release unknown)'} for CUDA ${c.driverCudaVersion}` : '';
  console.log(`cuda:      ${c.available ? `${c.deviceCount} device(s)` : `unavailable (${c.reason})`}${driver}`);
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
  if (m.hostMade) parts.push(`${formatBytes(m.hostMade)} made at load (quantized or repacked)`);
  return parts.join(', ');
}

/**
 * A generated checkpoint of `preset` in the temp folder (`name` says which variant), written once,
 * aside and renamed into place so an interrupted run never leaves half a checkpoint, then reused.
 */
async function presetDir(name: string, opts: Omit<InitRandomOptions, 'out' | 'onProgress'>): Promise<string> {
  const dir = path.join(tmpdir(), `longcat-flash-${name}`);
  if (!existsSync(path.join(dir, 'model.safetensors.index.json'))) {
    process.stderr.write(`longcat: writing a random ${opts.preset} LongCat-Flash checkpoint to ${dir}\n`);
    const tmp = `${dir}.tmp-${process.pid}`;
    const bar = progressBar('writing');
    try {
      await initRandom({
        ...opts,
        out: tmp,
        onProgress: p => bar.update(p.bytes, p.totalBytes, `writing ${path.basename(p.file)}`),
      });
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    } finally {
      bar.end();
    }
    rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process won the race: use its copy
    }
  }
  return dir;
}

/** The tiny model `generate`, `chat` and `serve` use when no --model is given. */
// v2: with an MTP head whose drafts are accepted 90% of the time, so --speculative shows its effect
const defaultModelDir = () => presetDir('tiny-v2', { preset: 'tiny', seed: 0, mtp: true, draftAgreement: 0.9 });

const modelOptions = {
  model: { type: 'string' },
  backend: { type: 'string' },
  threads: { type: 'string' },
  'max-context': { type: 'string' },
  'prefill-chunk': { type: 'string' },
  'prefill-chunk-while-decoding': { type: 'string' },
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
  'prefill-chunk-while-decoding'?: string;
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
    prefillChunkWhileDecoding: num(v['prefill-chunk-while-decoding'], 'prefill-chunk-while-decoding', { integer: true, min: 1 }),
  };
}

async function openModel(
  v: { model?: string },
  opts: ReturnType<typeof modelArgs>,
  signal?: AbortSignal,
  dir?: string,
): Promise<Model> {
  dir ??= v.model ?? (await defaultModelDir());
  // One bar per phase (mapping the shards, uploading to a GPU, the host-resident N-gram tables).
  let phase = '',
    bar = progressBar('');
  let model: Model;
  try {
    model = await loadModel(dir, {
      ...opts,
      signal,
      onProgress: p => {
        const label = p.phase === 'upload' ? `uploading to ${p.device}` : p.phase === 'host' ? 'host-resident tables' : 'mapping';
        if (label !== phase) {
          bar.end();
          phase = label;
          bar = progressBar(label);
        }
        bar.update(p.bytes, p.totalBytes);
      },
    });
  } finally {
    bar.end();
  }
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
    options: {
      ...modelOptions,
      ...samplingOptions,
      prompt: { type: 'string' },
      chat: { type: 'boolean' },
      json: { type: 'boolean' },
    },
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
    if (!v.json) for await (const chunk of g) process.stdout.write(chunk);
    const r = await g;
    if (r.stopReason === 'abort') process.exitCode = 130; // interrupted (128 + SIGINT), as shells report it
    if (v.json) {
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    process.stdout.write('\n');
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
  const serverOptions = {
    ...defined({
      apiKey: v['api-key'],
      modelName: v['model-name'],
      speculative: v.speculative,
      maxConcurrent: num(v['max-concurrent'], 'max-concurrent', { integer: true, min: 1 }),
      maxQueue: num(v['max-queue'], 'max-queue', { integer: true, min: 0 }),
    }),
    ...(timeout !== undefined ? { shutdownTimeoutMs: Math.round(timeout * 1000) } : {}),
  };
  // The server listens while the weights load (it answers 503 until then).
  const ac = new AbortController();
  const loading = openModel(v, margs, ac.signal);
  const server = createServer(loading, serverOptions);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      process.stderr.write(`longcat: ${signal} again: aborting in-flight requests\n`);
      server.abortAll();
      return;
    }
    stopping = true;
    if (signal === 'SIGINT') process.exitCode = 130; // interrupted; SIGTERM is an orderly stop (0)
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
  const { values: v, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
  const dir = positionals[0];
  if (!dir) throw new UsageError('inspect: a checkpoint directory is required');
  if (positionals.length > 1) throw new UsageError(`inspect: one checkpoint directory, got ${positionals.length} arguments`);
  using ck = await openCheckpoint(dir);
  const c = ck.config;
  const typical = Math.min(8, c.moe_topk, c.n_routed_experts); // ~8 FFN experts per token in LongCat-Flash (SPEC 1.2)
  const p = activeParams(c, { expectedFfnExperts: typical, mtp: ck.hasMtp });
  const dtypes = new Map<string, number>();
  for (const t of ck.tensors.values()) dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
  const onCpu = modelMemory(ck, 'cpu', {}, ck.hasMtp),
    onCuda = modelMemory(ck, 'cuda', { gpu: uploadBytes(ck, ck.hasMtp) }, ck.hasMtp);
  if (v.json) {
    const facts = {
      checkpoint: path.resolve(dir),
      files: ck.files.length,
      totalBytes: ck.totalBytes,
      tensors: ck.tensors.size,
      dtypes: Object.fromEntries(dtypes),
      unexpected: ck.unexpected,
      quantization: ck.quantization ?? null,
      expertLayouts: [...new Set(ck.expertLayouts)],
      mtp: ck.hasMtp,
      config: c,
      parameters: { ...p, expectedFfnExperts: typical },
      weights: { cpu: onCpu, cuda: onCuda },
    };
    console.log(JSON.stringify(facts, null, 2));
    return;
  }
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
  console.log(`weights cpu:  ${describeMemory(onCpu)}`);
  console.log(`weights cuda: ${describeMemory({ ...onCuda, uploaded: { 'the GPU': onCuda.uploaded.gpu ?? 0 } })}`);
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
  const seed = num(v.seed, 'seed', { integer: true, min: 0 });
  const bar = progressBar('writing');
  const r = await initRandom({
    preset,
    out: v.out,
    fp8: v.fp8,
    mtp: v.mtp,
    seed,
    draftAgreement,
    onProgress: p => bar.update(p.bytes, p.totalBytes, `writing ${path.basename(p.file)}`),
  }).finally(() => bar.end());
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
  const bar = progressBar('quantizing');
  const r = await quantizeCheckpoint(input, output, {
    to: v.to,
    onProgress: p => bar.update(p.bytes, p.totalBytes, `${p.action} ${p.done}/${p.total}`),
  }).finally(() => bar.end());
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
  const bar = progressBar('windows', { unit: 'items' });
  const r = await evalKld(base, quant, {
    textFile: v.text,
    onProgress: (done, total) => bar.update(done, total),
    ...defined({
      ctx: num(v.ctx, 'ctx', { integer: true, min: 3 }),
      threads: num(v.threads, 'threads', { integer: true, min: 1 }),
    }),
  }).finally(() => bar.end());
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

const PRESETS = ['tiny', 'small', 'medium', 'lite'];

async function benchCmd(args: string[], signal: AbortSignal) {
  const { values: v } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' },
      preset: { type: 'string' },
      'n-prompt': { type: 'string', short: 'p' },
      'n-gen': { type: 'string', short: 'n' },
      repetitions: { type: 'string', short: 'r' },
      output: { type: 'string', short: 'o' },
      threads: { type: 'string', short: 't' },
      backend: { type: 'string' },
    },
  });
  if (v.model !== undefined && v.preset !== undefined) throw new UsageError('bench: give --model DIR or --preset P, not both');
  const preset = v.preset ?? 'tiny';
  if (!PRESETS.includes(preset)) throw new UsageError(`bench: unknown preset '${preset}' (tiny, small, medium or lite)`);
  const nPrompt = num(v['n-prompt'], 'n-prompt', { integer: true, min: 0 }) ?? 512;
  const nGen = num(v['n-gen'], 'n-gen', { integer: true, min: 0 }) ?? 128;
  const repetitions = num(v.repetitions, 'repetitions', { integer: true, min: 1 }) ?? 5;
  if (nPrompt + nGen === 0) throw new UsageError('bench: -p and -n are both 0: nothing to run');
  const output = v.output ?? 'md';
  if (!['md', 'json', 'jsonl'].includes(output)) throw new UsageError(`--output must be md, json or jsonl, got '${output}'`);
  const margs = modelArgs({ backend: v.backend, threads: v.threads });
  const dir = v.model ?? (await presetDir(`${preset}-bench`, { preset: preset as Preset, seed: 0 }));
  using model = await openModel(v, { ...margs, maxContext: Math.max(nPrompt, nGen, 16) }, signal, dir);
  const bar = progressBar('bench', { unit: 'items' });
  const runs = (nPrompt > 0 ? repetitions : 0) + (nGen > 0 ? repetitions : 0);
  let done = 0;
  const r = benchModel(model, path.basename(path.resolve(dir)), {
    nPrompt,
    nGen,
    repetitions,
    signal,
    onRun: (test, rep, of) => bar.update(done++, runs, `${test} ${rep + 1}/${of}`),
  });
  bar.update(runs, runs);
  bar.end();
  process.stdout.write(output === 'json' ? benchJson(r) : output === 'jsonl' ? benchJsonl(r) : benchMarkdown(r));
}

async function doctorCmd(args: string[], signal: AbortSignal) {
  const { values: v } = parseArgs({
    args,
    options: {
      json: { type: 'boolean' },
      report: { type: 'string' },
      'cpu-only': { type: 'boolean' },
      quick: { type: 'boolean' },
      device: { type: 'string' },
    },
  });
  if (v.device !== undefined && !/^cuda:\d+$/.test(v.device)) throw new UsageError(`--device must be cuda:N, got '${v.device}'`);
  if (v.report === '') throw new UsageError('--report must name a file');
  const print = (s: string) => {
    if (!v.json) process.stdout.write(s);
  };
  let section = '';
  const r = await runDoctor({
    cpuOnly: v['cpu-only'],
    quick: v.quick,
    ...defined({ device: v.device }),
    signal,
    onStart: env => print(doctorHeader(env)),
    onCheck: c => {
      if (c.section !== section) {
        section = c.section;
        print(`\n${section}:\n`);
      }
      print(doctorLine(c));
    },
  });
  print(`\n${doctorSummary(r)}`);
  const json = `${JSON.stringify(r, null, 2)}\n`;
  if (v.json) process.stdout.write(json);
  if (v.report !== undefined) {
    writeFileSync(v.report, json);
    process.stderr.write(`longcat: report written to ${path.resolve(v.report)} (attach it to a bug report)\n`);
  } else if (!v.json)
    process.stderr.write('longcat: `longcat doctor --json > report.json` writes the report to attach to a bug report\n');
  if (!r.ok) process.exitCode = 1;
}

/** Commands that take Ctrl+C themselves (generate, chat, serve), and those that stop at their next check (bench, doctor). */
const OWN_SIGINT = new Set(['generate', 'chat', 'serve']);
const COMMANDS: Record<string, (args: string[], signal: AbortSignal) => Promise<void> | void> = {
  generate,
  chat,
  serve,
  inspect,
  'init-random': initRandomCmd,
  quantize: quantizeCmd,
  eval: evalCmd,
  bench: benchCmd,
  doctor: doctorCmd,
  info: args => {
    const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
    info(!!values.json);
  },
  help: args => {
    const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
    const [cmd, ...more] = positionals;
    if (more.length) throw new UsageError('help: one command at most');
    if (cmd === undefined) process.stdout.write(USAGE);
    else if (HELP[cmd]) process.stdout.write(commandHelp(cmd));
    else throw new UsageError(`help: unknown command '${cmd}'`);
  },
};

/** The command a usage error is about (its usage is printed with it). */
let current: string | undefined;

function interrupted(): never {
  process.stderr.write('\nlongcat: interrupted\n');
  process.exit(130);
}

async function main(argv: string[]) {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help') {
    process.stdout.write(USAGE);
    return;
  }
  if (cmd === '--version' || cmd === '-v') {
    process.stdout.write(`longcat-flash ${packageVersion()}\n`);
    return;
  }
  const run = COMMANDS[cmd];
  if (!run) {
    process.stderr.write(`longcat: unknown command '${cmd}'\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  current = cmd;
  // --help anywhere before a `--` shows the command's help, whatever else is on the line
  const end = rest.indexOf('--');
  if ((end < 0 ? rest : rest.slice(0, end)).some(a => a === '--help' || a === '-h')) {
    process.stdout.write(commandHelp(cmd));
    return;
  }
  const ac = new AbortController();
  if (!OWN_SIGINT.has(cmd))
    process.once('SIGINT', () => {
      // bench and doctor stop at their next run or check (and clean up); the rest stop now. A second Ctrl+C always does.
      if (cmd !== 'bench' && cmd !== 'doctor') interrupted();
      ac.abort();
      process.once('SIGINT', interrupted);
    });
  await run(rest, ac.signal);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const code = (err as { code?: unknown })?.code;
  const parseError = typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS');
  if (err instanceof UsageError || parseError) {
    const usage = current ? `${commandHelp(current)}(longcat ${current} --help)\n` : USAGE;
    process.stderr.write(`longcat: ${(err as Error).message}${err instanceof LongcatError ? ` [${err.code}]` : ''}\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if ((err instanceof LongcatError && err.code === 'E_ABORTED') || (err as Error)?.name === 'AbortError') {
    process.stderr.write('longcat: interrupted\n');
    process.exitCode = 130; // Ctrl+C while the model was loading, or between bench runs / doctor checks
    return;
  }
  if (err instanceof LongcatError) process.stderr.write(`longcat: ${err.message} [${err.code}]\n`);
  else process.stderr.write(`longcat: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
});

// Hostile inputs and faults of issue 13 that must end as typed LongcatErrors: shards changed on
// disk while mapped, FIFOs and symlinks out of the checkpoint, implausible config sizes, runaway
// chat templates, non-finite logits, and options that used to be checked late or never.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';
import { openCheckpoint } from '../lib/checkpoint.js';
import { CONFIG_LIMITS, parseConfig } from '../lib/config.js';
import { LONGCAT_CHAT_TEMPLATE, renderChatTemplate } from '../lib/chat.js';
import { loadModel } from '../lib/generate.js';
import { full, tensor } from '../lib/tensor.js';
import { native } from '../lib/native.js';
import { DisposedError, LongcatError } from '../lib/errors.js';
import { cudaAvailable, expectCode, rejects } from './helpers.js';

const root = mkdtempSync(path.join(tmpdir(), 'lc-reliability-'));
const tiny = path.join(root, 'tiny');
beforeAll(async () => {
  await initRandom({ preset: 'tiny', out: tiny, seed: 3 });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const SHARDS = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];

/** A fresh copy of the tiny checkpoint. */
function copyTiny(name: string): string {
  const dir = path.join(root, name);
  cpSync(tiny, dir, { recursive: true });
  return dir;
}

describe('a shard changed on disk while mapped (item 5)', () => {
  /** openCheckpoint with LONGCAT_WATCH_MAPPINGS set to `watch` ('0': the per-step check fstat()s every shard). */
  async function openWatched(dir: string, watch: string) {
    const was = process.env.LONGCAT_WATCH_MAPPINGS;
    process.env.LONGCAT_WATCH_MAPPINGS = watch;
    try {
      return await openCheckpoint(dir);
    } finally {
      if (was === undefined) delete process.env.LONGCAT_WATCH_MAPPINGS;
      else process.env.LONGCAT_WATCH_MAPPINGS = was;
    }
  }

  it.each(['1', '0'])(
    'Checkpoint.verify() names a truncated, an overwritten and a replaced shard (LONGCAT_WATCH_MAPPINGS=%s)',
    async watch => {
      for (const change of ['truncate', 'overwrite', 'replace'] as const) {
        const dir = copyTiny(`changed-${change}-${watch}`);
        const ck = await openWatched(dir, watch);
        try {
          ck.verify(); // unchanged: passes
          ck.verifyMappings();
          const shard = path.join(dir, SHARDS[1]!);
          const size = statSync(shard).size;
          if (change === 'truncate') truncateSync(shard, size - 64);
          if (change === 'overwrite') {
            // Same size, new bytes, then an mtime set far from the mapping's (no clock granularity involved).
            const bytes = readFileSync(shard);
            bytes.fill(0x7f, size - 64);
            writeFileSync(shard, bytes);
            utimesSync(shard, 1_000_000, 1_000_000);
          }
          if (change === 'replace') {
            writeFileSync(`${shard}.new`, readFileSync(shard));
            renameSync(`${shard}.new`, shard);
          }
          const what = { truncate: /size \d+ -> \d+/, overwrite: /modified/, replace: /replaced/ }[change];
          expectCode(() => ck.verify(), 'E_CHECKPOINT', new RegExp(`${SHARDS[1]}.*changed on disk`));
          expectCode(() => ck.verify(), 'E_CHECKPOINT', what);
          // The per-step check (the mapped files' descriptors, no path lookup) sees each of them too.
          expectCode(() => ck.verifyMappings(), 'E_CHECKPOINT', new RegExp(`${SHARDS[1]}.*changed on disk`));
          expectCode(() => ck.verifyMappings(), 'E_CHECKPOINT', what);
        } finally {
          ck.close();
        }
        expectCode(() => ck.verify(), 'E_DISPOSED');
        expectCode(() => ck.verifyMappings(), 'E_DISPOSED');
      }
    },
  );

  it.each(['1', '0'])(
    'verifyMappings() sees a deleted shard; a shard replaced while the mapped file keeps a name only verify() (LONGCAT_WATCH_MAPPINGS=%s)',
    async watch => {
      const dir = copyTiny(`changed-names-${watch}`);
      const ck = await openWatched(dir, watch);
      try {
        const shard = path.join(dir, SHARDS[0]!);
        // An event that changes nothing checked (the mode): still unchanged.
        chmodSync(shard, 0o400);
        ck.verifyMappings();
        ck.verify();
        // Replaced, the old file still linked elsewhere: the mapping is unharmed, only the path tells.
        linkSync(shard, `${shard}.old`);
        writeFileSync(`${shard}.new`, readFileSync(shard));
        renameSync(`${shard}.new`, shard);
        ck.verifyMappings();
        expectCode(() => ck.verify(), 'E_CHECKPOINT', /replaced/);
        // Its last name gone: deleted.
        unlinkSync(`${shard}.old`);
        expectCode(() => ck.verifyMappings(), 'E_CHECKPOINT', new RegExp(`${SHARDS[0]}.*changed on disk.*deleted`));
        // The mapping still holds the deleted file: its tensors still read.
        expect(ck.get('model.embed_tokens.weight').toBytes().length).toBeGreaterThan(0);
      } finally {
        ck.close();
      }
    },
  );

  // (hugePages: the weights a step streams are copies, but the embeddings are still read from the shards)
  it.each([false, true])(
    'generation on the CPU stops with E_CHECKPOINT instead of SIGBUS after a truncation (hugePages %s)',
    async hugePages => {
      const dir = copyTiny(`changed-generate-${hugePages}`);
      const model = await loadModel(dir, { backend: 'cpu', maxContext: 128, hugePages });
      try {
        const s = model.createSession();
        const ok = await s.generate('hello', { maxTokens: 2 });
        expect(ok.tokens.length + (ok.stopReason === 'eos' ? 1 : 0)).toBeGreaterThan(0);
        for (const f of SHARDS) truncateSync(path.join(dir, f), 8);
        await rejects(s.generate('hello again', { maxTokens: 2 }), 'E_CHECKPOINT', /changed on disk/);
        expectCode(() => model.forward([1, 2, 3]), 'E_CHECKPOINT', /changed on disk/);
        s.dispose();
      } finally {
        model.dispose();
      }
    },
  );
});

describe('only regular files inside the checkpoint (item 6)', () => {
  const mkfifo = (p: string) => execFileSync('mkfifo', [p]);

  it('a FIFO shard, config or tokenizer file is refused at once (never waits for a writer)', async () => {
    const dir = copyTiny('fifo-shard');
    unlinkSync(path.join(dir, SHARDS[0]!));
    mkfifo(path.join(dir, SHARDS[0]!));
    await rejects(openCheckpoint(dir), 'E_CHECKPOINT', SHARDS[0]!, /not a regular file/);
    expectCode(() => native.mapFile(path.join(dir, SHARDS[0]!)), 'E_CHECKPOINT', /not a regular file/);

    const cfgDir = copyTiny('fifo-config');
    unlinkSync(path.join(cfgDir, 'config.json'));
    mkfifo(path.join(cfgDir, 'config.json'));
    await rejects(openCheckpoint(cfgDir), 'E_CHECKPOINT', 'config.json', /not a regular file/);

    const tokDir = copyTiny('fifo-tokenizer');
    unlinkSync(path.join(tokDir, 'tokenizer_config.json'));
    mkfifo(path.join(tokDir, 'tokenizer_config.json'));
    await rejects(loadModel(tokDir, { backend: 'cpu', maxContext: 64 }), 'E_CHECKPOINT', /not a regular file/);
  });

  it('a shard symlinked to a file outside the directory is refused, inside or HF-cache blobs are fine', async () => {
    const outside = path.join(root, 'outside');
    mkdirSync(outside);
    // Listed by the index, a symlink leading out.
    const dir = copyTiny('symlink-out');
    renameSync(path.join(dir, SHARDS[1]!), path.join(outside, SHARDS[1]!));
    symlinkSync(path.join(outside, SHARDS[1]!), path.join(dir, SHARDS[1]!));
    await rejects(openCheckpoint(dir), 'E_CHECKPOINT', /resolves to .*outside the checkpoint directory/);
    // A single model.safetensors leading out.
    const single = path.join(root, 'symlink-single');
    mkdirSync(single);
    writeFileSync(path.join(single, 'config.json'), readFileSync(path.join(tiny, 'config.json')));
    symlinkSync(path.join(outside, SHARDS[1]!), path.join(single, 'model.safetensors'));
    await rejects(openCheckpoint(single), 'E_CHECKPOINT', /outside the checkpoint directory/);

    // A symlink within the directory, and the Hugging Face cache layout, load.
    const inside = copyTiny('symlink-in');
    mkdirSync(path.join(inside, 'real'));
    renameSync(path.join(inside, SHARDS[0]!), path.join(inside, 'real', SHARDS[0]!));
    symlinkSync(path.join('real', SHARDS[0]!), path.join(inside, SHARDS[0]!));
    (await openCheckpoint(inside)).close();
    const repo = path.join(root, 'hub', 'models--x--tiny');
    const snap = path.join(repo, 'snapshots', 'abc123');
    mkdirSync(path.join(repo, 'blobs'), { recursive: true });
    mkdirSync(snap, { recursive: true });
    for (const f of ['config.json', 'model.safetensors.index.json', ...SHARDS]) {
      cpSync(path.join(tiny, f), path.join(repo, 'blobs', `blob-${f}`));
      symlinkSync(path.join('..', '..', 'blobs', `blob-${f}`), path.join(snap, f));
    }
    const ck = await openCheckpoint(snap);
    expect(ck.files.length).toBe(2);
    ck.close();
  });
});

describe('resource bounds (item 7)', () => {
  const cfg = () => JSON.parse(readFileSync(path.join(tiny, 'config.json'), 'utf8')) as Record<string, unknown>;
  const configError = (json: unknown, field: string) => {
    const t0 = performance.now();
    let err: unknown;
    try {
      parseConfig(json);
    } catch (e) {
      err = e;
    }
    expect(err, field).toBeInstanceOf(LongcatError);
    expect((err as LongcatError).code).toBe('E_CONFIG');
    expect((err as { field?: string }).field).toBe(field);
    expect((err as Error).message).toMatch(`'${field}'`);
    return performance.now() - t0;
  };

  it('rejects implausible sizes at parse, naming the field', () => {
    configError({ ...cfg(), num_layers: 1e7 }, 'num_layers');
    configError({ ...cfg(), n_routed_experts: 1e8 }, 'n_routed_experts');
    configError({ ...cfg(), vocab_size: 1e12 }, 'vocab_size');
    configError({ ...cfg(), hidden_size: 2 ** 40 }, 'hidden_size');
    configError({ ...cfg(), zero_expert_num: 1e9 }, 'zero_expert_num');
    configError({ ...cfg(), expert_ffn_hidden_size: 1e10 }, 'expert_ffn_hidden_size');
    configError({ ...cfg(), max_position_embeddings: 1e15 }, 'max_position_embeddings');
    // Each within its bound, together too many expert tensors.
    configError({ ...cfg(), num_layers: 1000, n_routed_experts: 1000 }, 'n_routed_experts');
  });

  it('accepts the sizes of every LongCat model (Flash-Chat; the Lite dims with YaRN)', () => {
    const flash = {
      architectures: ['LongcatFlashForCausalLM'],
      vocab_size: 131072,
      hidden_size: 6144,
      num_layers: 28,
      num_attention_heads: 64,
      q_lora_rank: 1536,
      kv_lora_rank: 512,
      qk_nope_head_dim: 128,
      qk_rope_head_dim: 64,
      v_head_dim: 128,
      ffn_hidden_size: 12288,
      expert_ffn_hidden_size: 2048,
      n_routed_experts: 512,
      zero_expert_num: 256,
      moe_topk: 12,
      routed_scaling_factor: 6,
      max_position_embeddings: 131072,
    };
    expect(parseConfig(flash).num_layers).toBe(28);
    const lite = {
      ...flash,
      hidden_size: 3072,
      num_layers: 14,
      num_attention_heads: 32,
      ffn_hidden_size: 6144,
      expert_ffn_hidden_size: 1024,
      n_routed_experts: 256,
      zero_expert_num: 128,
      max_position_embeddings: 327680,
      rope_scaling: { rope_type: 'yarn', factor: 10, original_max_position_embeddings: 32768 },
    };
    expect(parseConfig(lite).max_position_embeddings).toBe(327680);
    // And the limits themselves.
    const atLimit = { ...flash, num_layers: CONFIG_LIMITS.num_layers, n_routed_experts: 256, zero_expert_num: 0 };
    expect(parseConfig(atLimit).num_layers).toBe(CONFIG_LIMITS.num_layers);
  });

  const user = [{ role: 'user', content: 'hi' }];
  const renderFails = (template: string, why: RegExp, messages = user) =>
    expectCode(() => renderChatTemplate(template, messages), 'E_CHECKPOINT', why);

  it('stops a runaway chat template with a typed error', () => {
    renderFails('{% for i in range(100000000) %}x{% endfor %}', /range\(\) produced more than/);
    renderFails(
      '{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}',
      /range\(\)/,
    );
    const many = Array.from({ length: 120 }, (_, i) => ({ role: 'user', content: String(i) }));
    renderFails(
      '{% for a in messages %}{% for b in messages %}{% for c in messages %}{{ c.content }}{% endfor %}{% endfor %}{% endfor %}',
      /evaluated more than/,
      many,
    );
    renderFails(
      "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
      /string of \d+ characters/,
    );
    renderFails("{{ raise_exception('no tools here') }}", /no tools here/);
  });

  it('renders real templates as before, with the library globals', () => {
    expect(renderChatTemplate(LONGCAT_CHAT_TEMPLATE, user)).toBe('[Round 0] USER:hi ASSISTANT:');
    expect(renderChatTemplate("{{ strftime_now('%Y') }}|{{ range(3) | join(',') }}|{{ True }}{{ none is none }}", user)).toMatch(
      /^\d{4}\|0,1,2\|truetrue$/,
    );
    expect(renderChatTemplate('{% for i in range(10, 0, -3) %}{{ i }},{% endfor %}', user)).toBe('10,7,4,1,');
    // A long conversation stays within the per-message budget.
    const long = Array.from({ length: 4000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `m${i}` }));
    expect(renderChatTemplate(LONGCAT_CHAT_TEMPLATE, long)).toMatch(
      /^\[Round 0\] USER:m0 ASSISTANT:m1<\/longcat_s> .* ASSISTANT:$/,
    );
  });
});

describe('non-finite logits (item 8)', () => {
  it.each(cudaAvailable ? (['cpu', 'cuda'] as const) : (['cpu'] as const))(
    'NaN weights end generation with E_NUMERIC naming the step, greedy or sampled (%s)',
    async backend => {
      const model = await loadModel(copyTiny(`nan-${backend}`), { backend, maxContext: 128 });
      try {
        const norm = model.engine.w.norm;
        expect(norm.dtype).toBe('bf16');
        norm.copyFromBytes(new Uint16Array(norm.shape[0]!).fill(0x7fc0)); // bf16 NaN
        for (const temperature of [0, 0.7]) {
          const s = model.createSession();
          await rejects(s.generate('hello', { maxTokens: 8, temperature }), 'E_NUMERIC', /step 0/, /not finite/);
          s.dispose();
        }
      } finally {
        model.dispose();
      }
    },
  );
});

describe('options checked up front, clear messages (item 11)', () => {
  const nowhere = path.join(root, 'does-not-exist');
  it('loadModel options are checked before the checkpoint is read', async () => {
    await rejects(loadModel(nowhere, { maxContext: 0 }), 'E_ARGUMENT', /loadModel: maxContext/);
    await rejects(loadModel(nowhere, { maxContext: 100.5 }), 'E_ARGUMENT', /maxContext/);
    await rejects(loadModel(nowhere, { threads: 0 }), 'E_ARGUMENT', /threads/);
    await rejects(loadModel(nowhere, { cacheBlocks: -1 }), 'E_ARGUMENT', /cacheBlocks/);
    await rejects(loadModel(nowhere, { cacheDtype: 'f16' as 'f32' }), 'E_ARGUMENT', /cacheDtype/);
    await rejects(loadModel(nowhere, { deviceIndex: 0.5 }), 'E_ARGUMENT', /deviceIndex/);
  });

  it('maxContext 0 of an engine is blamed on maxContext, not the block allocator', async () => {
    const model = await loadModel(tiny, { backend: 'cpu', maxContext: 64 });
    try {
      const { LongcatModel } = await import('../lib/model/model.js');
      expectCode(
        () => new LongcatModel(model.engine.dims, model.engine.w, { device: 'cpu', maxContext: 0 }),
        'E_ARGUMENT',
        /maxContext/,
      );
    } finally {
      model.dispose();
    }
  });

  it('generation_config.json token ids that are not ids of the vocabulary are a ConfigError', async () => {
    for (const eos of ['x', [1e12], [], -1]) {
      const dir = copyTiny(`gen-${JSON.stringify(eos).replace(/\W/g, '_')}`);
      const f = path.join(dir, 'generation_config.json');
      writeFileSync(f, JSON.stringify({ eos_token_id: eos }));
      await rejects(openCheckpoint(dir), 'E_CONFIG', /eos_token_id/, /generation_config\.json/);
    }
  });

  it('a disposed model throws DisposedError; forward with a non-array and full(1e12) are typed', async () => {
    const model = await loadModel(tiny, { backend: 'cpu', maxContext: 64 });
    const s = model.createSession();
    expectCode(() => model.forward(5 as unknown as number[]), 'E_ARGUMENT', /array/);
    // Option values too deeply nested to print are still named, not a RangeError.
    let deep: unknown = 'x';
    for (let i = 0; i < 20000; i++) deep = [deep];
    await rejects(s.generate('hi', { stop: deep as string[] }), 'E_ARGUMENT', /stop must be an array of strings/);
    await rejects(s.generate('hi', { stop: [null as unknown as string] }), 'E_ARGUMENT', /stop/);
    expectCode(() => model.engine.forward([s as never], ['abc' as unknown as number[]]), 'E_ARGUMENT', /array/);
    model.dispose();
    const e = await s.generate('hi', { maxTokens: 1 }).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(DisposedError);
    expect((e as LongcatError).code).toBe('E_DISPOSED');
    expectCode(() => full(1e12 as unknown as number[], 0), 'E_SHAPE', /array of non-negative integers/);
    expectCode(() => full([-1], 0), 'E_SHAPE');
    expectCode(() => tensor([1], 5 as unknown as number[]), 'E_SHAPE');
  });

  it('E_OOM for the KV cache suggests bf16 only when the cache is f32', async () => {
    for (const cacheDtype of ['bf16', 'f32'] as const) {
      const e = await rejects(
        loadModel(tiny, { backend: 'cpu', maxContext: 64, cacheBlocks: 2 ** 27, cacheDtype }),
        'E_OOM',
        /KV cache does not fit/,
      );
      if (cacheDtype === 'bf16') expect(e.message).not.toMatch(/cacheDtype 'bf16'/);
      else expect(e.message).toMatch(/cacheDtype 'bf16'/);
    }
  });
});

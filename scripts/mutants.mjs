// npm run mutants [-- --only NAME[,NAME]] [--full] [--keep]: measures the test suite's strength by
// planting known bugs, one at a time, in a scratch copy of the tree and requiring that the tests fail
// for each ("killed"). Each mutant names the test files that must catch it, so a run takes minutes;
// --full runs the whole suite per mutant instead. Exits 1 if any mutant survives or no longer
// applies (its code moved: update the mutant). Run on demand, not in CI.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** @typedef {{ name: string, area: string, file: string, from: string, to: string, tests: string[], why: string }} Mutant */

/** @type {Mutant[]} */
const MUTANTS = [
  {
    name: 'router-no-bias',
    area: 'router',
    file: 'native/cpu/moe.cc',
    tests: ['test/router.test.ts'],
    from: 'float s = std::exp(l[j] - m) / denom + bias[j];',
    to: 'float s = std::exp(l[j] - m) / denom;',
    why: 'top-k chosen without e_score_correction_bias (SPEC 4.2)',
  },
  {
    name: 'router-unscaled',
    area: 'router',
    file: 'native/cpu/moe.cc',
    tests: ['test/router.test.ts'],
    from: 'sc[j] = std::exp(l[x] - m) / denom * scale;',
    to: 'sc[j] = std::exp(l[x] - m) / denom;',
    why: 'routing weights without routed_scaling_factor',
  },
  {
    name: 'router-ties-high',
    area: 'router',
    file: 'native/cpu/moe.cc',
    tests: ['test/router.test.ts'],
    from: 'if (n == k && !(s > sc[k - 1])) continue;',
    to: 'if (n == k && !(s >= sc[k - 1])) continue;',
    why: 'equal scores go to the higher expert id',
  },
  {
    name: 'moe-zero-experts-dropped',
    area: 'moe',
    file: 'native/cpu/moe.cc',
    tests: ['test/moe.test.ts'],
    from: 'for (int64_t c = 0; c < h; ++c) o[c] += z * ui[c];',
    to: 'for (int64_t c = 0; c < h; ++c) o[c] += 0 * z * ui[c];',
    why: 'zero-computation experts contribute nothing instead of weight * u',
  },
  {
    name: 'mla-split-merge-rescale',
    area: 'mla',
    file: 'native/cpu/mla.cc',
    tests: ['test/attention.test.ts', 'test/model-long.test.ts'],
    from: 'for (int64_t c = 0; c < dl; ++c) out[c] += w * a[c];',
    to: 'for (int64_t c = 0; c < dl; ++c) out[c] += a[c];',
    why: 'split-KV merge of the decode without the e^(m_k - M) rescale',
  },
  {
    name: 'mla-softmax-mscale-once',
    area: 'mla',
    file: 'lib/config.ts',
    tests: ['test/model-long.test.ts', 'test/config.test.ts'],
    from: 'softmaxScale: (1 / Math.sqrt(qkHeadDim)) * yarnMscale * yarnMscale,',
    to: 'softmaxScale: (1 / Math.sqrt(qkHeadDim)) * yarnMscale,',
    why: 'YaRN softmax scale multiplied by mscale once instead of squared',
  },
  {
    name: 'rope-yarn-attention-factor',
    area: 'mla',
    file: 'lib/rope.ts',
    tests: ['test/model-long.test.ts', 'test/rope.test.ts'],
    from: 'mscale && mscaleAllDim ? yarnGetMscale(factor, mscale) / yarnGetMscale(factor, mscaleAllDim) : yarnGetMscale(factor);',
    to: 'yarnGetMscale(factor);',
    why: 'YaRN cos/sin factor ignores mscale / mscale_all_dim',
  },
  {
    name: 'fp8-kvb-first-block-scales',
    area: 'fp8',
    file: 'lib/model/weights.ts',
    tests: ['test/model-long.test.ts'],
    from: 'out.set(s.subarray((first(h) / 128) * G, (first(h) / 128 + 1) * G), h * G);',
    to: 'out.fill(s[(first(h) / 128) * G]!, h * G, (h + 1) * G);',
    why: 'absorbed kv_b applies the first 128-column block scale to every block',
  },
  {
    name: 'cache-slot-row',
    area: 'cache',
    file: 'lib/kv-cache.ts',
    tests: ['test/kv-cache.test.ts', 'test/model.test.ts'],
    from: 'slots[i] = this.blocks[Math.floor(pos / this.blockSize)]! * this.blockSize + (pos % this.blockSize);',
    to: 'slots[i] = this.blocks[Math.floor(pos / this.blockSize)]! * this.blockSize + ((pos + 1) % this.blockSize);',
    why: 'KV slots written one row off inside a block',
  },
  {
    name: 'session-no-truncate',
    area: 'session',
    file: 'lib/generate.ts',
    tests: ['test/model-long.test.ts'],
    from: '    this.seq.truncate(common);\n',
    to: '\n',
    why: 'a session reuses its cache after the new prompt diverged',
  },
  {
    name: 'session-stop-not-held',
    area: 'session',
    file: 'lib/generate.ts',
    tests: ['test/session.test.ts'],
    from: 'const hold = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);',
    to: 'const hold = 0;',
    why: 'streaming emits the start of a stop string before knowing it is one',
  },
  {
    name: 'sampler-temperature-ignored',
    area: 'sampler',
    file: 'native/cpu/sampling.cc',
    tests: ['test/sampling.test.ts'],
    from: 'return std::isnan(v) ? kNegInf : static_cast<float>(v / T);',
    to: 'return std::isnan(v) ? kNegInf : static_cast<float>(v);',
    why: 'sampling ignores the temperature',
  },
  {
    name: 'sampler-topp-ignored',
    area: 'sampler',
    file: 'native/cpu/sampling.cc',
    tests: ['test/sampling.test.ts', 'test/session.test.ts'],
    from: 'if (p.top_p < 1.0f && n > 1) {',
    to: 'if (false) {',
    why: 'top-p filtering skipped',
  },
  {
    name: 'norm-no-eps',
    area: 'norm',
    file: 'native/cpu/norm.cc',
    tests: ['test/rmsnorm.test.ts'],
    from: 'const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));',
    to: 'const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim));',
    why: 'rmsnorm without epsilon (scalar path)',
  },
  {
    name: 'chat-special-tokens-parsed',
    area: 'session',
    file: 'lib/tokenizer.ts',
    tests: ['test/chat-injection.test.ts'],
    from: 'const literal = opts.literal ?? [];',
    to: 'const literal: readonly (readonly [number, number])[] = [];',
    why: 'special-token text in user content becomes special tokens',
  },
];

const args = process.argv.slice(2);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : null;
const full = args.includes('--full');
const keep = args.includes('--keep');
const chosen = MUTANTS.filter(m => !only || only.includes(m.name));
if (chosen.length === 0) {
  console.error(`mutants: no mutant named ${only}; known: ${MUTANTS.map(m => m.name).join(', ')}`);
  process.exit(2);
}

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const scratch = mkdtempSync(path.join(tmpdir(), 'longcat-mutants-'));
const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard'], { cwd: repo, encoding: 'utf8' })
  .split('\n')
  .filter(Boolean);
for (const f of files) {
  if (!existsSync(path.join(repo, f))) continue; // deleted in the work tree
  mkdirSync(path.dirname(path.join(scratch, f)), { recursive: true });
  cpSync(path.join(repo, f), path.join(scratch, f));
}
symlinkSync(path.join(repo, 'node_modules'), path.join(scratch, 'node_modules'));

const sh = (cmd, cmdArgs, quiet = true) =>
  spawnSync(cmd, cmdArgs, {
    cwd: scratch,
    stdio: quiet ? 'pipe' : 'inherit',
    encoding: 'utf8',
    env: { ...process.env, LONGCAT_ADDON: path.join(scratch, 'build/Release/longcat.node') },
  });
const build = () => {
  // CPU-only: the planted bugs are in the CPU oracle and the TypeScript; CUDA would only add compile time.
  const r = sh('npx', ['cmake-js', 'compile', '--out', 'build', '--CDLONGCAT_CUDA=OFF']);
  if (r.status !== 0) throw new Error(`build failed:\n${r.stdout}\n${r.stderr}`);
};
console.log(`mutants: scratch copy in ${scratch}; building the addon (CPU only)`);
build();
if (!existsSync(path.join(scratch, 'dist/cli.js'))) sh('npx', ['tsc', '-p', 'tsconfig.json']);

const results = [];
for (const m of chosen) {
  const file = path.join(scratch, m.file);
  const original = readFileSync(file, 'utf8');
  const at = original.indexOf(m.from);
  if (at < 0 || original.indexOf(m.from, at + 1) >= 0) {
    results.push({ m, verdict: at < 0 ? 'NOT FOUND' : 'AMBIGUOUS' });
    continue;
  }
  writeFileSync(file, original.slice(0, at) + m.to + original.slice(at + m.from.length));
  const native = /\.(cc|h|cu|cuh)$/.test(m.file);
  let verdict;
  try {
    if (native) build();
    const r = sh('npx', ['vitest', 'run', ...(full ? [] : m.tests)]);
    verdict = r.status === 0 ? 'SURVIVED' : 'killed';
  } catch {
    verdict = 'NO BUILD'; // the mutant itself does not compile: fix the mutant
  } finally {
    writeFileSync(file, original);
    if (native) build();
  }
  results.push({ m, verdict });
  console.log(`${verdict.padEnd(10)} ${m.area.padEnd(8)} ${m.name}: ${m.why}`);
}

console.log('\n| mutant | area | planted bug | caught by | verdict |\n| --- | --- | --- | --- | --- |');
for (const { m, verdict } of results)
  console.log(`| ${m.name} | ${m.area} | ${m.why} | ${full ? 'the whole suite' : m.tests.join(', ')} | ${verdict} |`);
const bad = results.filter(r => !r.verdict.startsWith('killed'));
console.log(`\n${results.length - bad.length} of ${results.length} mutants killed`);
if (!keep) rmSync(scratch, { recursive: true, force: true });
process.exit(bad.length ? 1 : 0);

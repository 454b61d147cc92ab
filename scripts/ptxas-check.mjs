// CI check of the CUDA kernels' resource use (issue 10): compiles every cuda/*.cu for each checked
// architecture with the build's flags plus `-Xptxas -v` (device code only, -cubin: no host pass),
// prints one row per kernel (registers, static shared memory, stack, spill stores / loads) and exits
// 1 when any kernel spills. Architectures: sm_90a (the default build) and the fallbacks the build
// supports, sm_89 (e4m3 MMA, no wgmma) and sm_80 (no e4m3 MMA), whose kernels compile differently.
//
//   node scripts/ptxas-check.mjs [--arch 90a,89,80] [--jobs N] [--no-cache]
//
// Compiles run in parallel (--jobs, default: the CPU count). A compile's ptxas report is cached
// under node_modules/.cache/ptxas-check, keyed by the nvcc version, the flags and the contents of
// the source and every file it includes, so an unchanged tree re-checks without compiling.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cudaDir = join(root, 'cuda');

function parseArgs(argv) {
  const o = { archs: ['90a', '89', '80'], jobs: Math.max(1, cpus().length), cache: true };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '--arch')
      o.archs = argv[++i]
        .split(',')
        .map(s => s.trim())
        .filter(Boolean);
    else if (a === '--jobs') o.jobs = Math.max(1, Number(argv[++i]) | 0);
    else if (a === '--no-cache') o.cache = false;
    else {
      console.error(`ptxas-check: unknown argument ${a}`);
      process.exit(2);
    }
  }
  for (const a of o.archs) if (!/^\d{2,3}a?$/.test(a)) throw new Error(`ptxas-check: bad architecture "${a}"`);
  return o;
}

function findNvcc() {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/local/cuda/bin'])) {
    const p = join(dir, 'nvcc');
    if (dir && existsSync(p)) return p;
  }
  return null;
}

// The source and every file it includes with #include "..." (relative to the including file), in a
// stable order: what a compile's result depends on besides the toolkit.
function dependencies(file, seen = new Map()) {
  if (seen.has(file) || !existsSync(file)) return seen;
  const text = readFileSync(file, 'utf8');
  seen.set(file, text);
  for (const m of text.matchAll(/^\s*#\s*include\s+"([^"]+)"/gm)) dependencies(resolve(dirname(file), m[1]), seen);
  return seen;
}

function run(cmd, args) {
  return new Promise(res => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', d => (out += d));
    p.stderr.on('data', d => (out += d));
    p.on('close', code => res({ code, out }));
  });
}

// ptxas -v output -> [{ mangled, arch, regs, smem, stack, spillStores, spillLoads }] for entry functions.
export function parsePtxas(text) {
  const entries = new Set();
  const props = new Map();
  let current = null;
  for (const line of text.split('\n')) {
    let m = line.match(/Compiling entry function '([^']+)' for '(sm_\w+)'/);
    if (m) {
      entries.add(`${m[1]}@${m[2]}`);
      continue;
    }
    m = line.match(/Function properties for (\S+)/);
    if (m) {
      current = { mangled: m[1], regs: 0, smem: 0, stack: 0, spillStores: 0, spillLoads: 0 };
      props.set(m[1], current);
      continue;
    }
    if (!current) continue;
    m = line.match(/(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/);
    if (m) {
      current.stack = Number(m[1]);
      current.spillStores = Number(m[2]);
      current.spillLoads = Number(m[3]);
      continue;
    }
    m = line.match(/Used (\d+) registers/);
    if (m) {
      current.regs = Number(m[1]);
      const s = line.match(/(\d+) bytes smem/);
      current.smem = s ? Number(s[1]) : 0;
      current = null;
    }
  }
  const out = [];
  for (const key of entries) {
    const [mangled, arch] = key.split('@');
    const p = props.get(mangled);
    if (p) out.push({ ...p, arch: arch.replace(/^sm_/, '') });
  }
  return out;
}

// A readable kernel name: demangled, namespaces and the parameter list dropped.
function shortNames(mangled) {
  let demangled = mangled;
  try {
    demangled = execFileSync('c++filt', [], { input: mangled.join('\n'), encoding: 'utf8' })
      .trimEnd()
      .split('\n');
  } catch {
    demangled = mangled;
  }
  return demangled.map(d => {
    let s = d
      .replace(/\(anonymous namespace\)::/g, '')
      .replace(/lc::(gpu::|cpu::)?/g, '')
      .replace(/\btile::|\bmma::/g, '');
    // drop the parameter list: the last top-level "(...)"
    let depth = 0;
    for (let i = s.length - 1; i >= 0; --i) {
      if (s[i] === ')') ++depth;
      else if (s[i] === '(' && --depth === 0) {
        s = s.slice(0, i);
        break;
      }
    }
    return s.replace(/^void /, '');
  });
}

async function main() {
  const opt = parseArgs(process.argv.slice(2));
  const nvcc = findNvcc();
  if (!nvcc) {
    console.error('ptxas-check: nvcc not found (PATH or /usr/local/cuda/bin)');
    process.exit(1);
  }
  const version = execFileSync(nvcc, ['--version'], { encoding: 'utf8' });
  const release = (version.match(/release [^\n]+/) ?? ['?'])[0];
  const sources = readdirSync(cudaDir)
    .filter(f => f.endsWith('.cu'))
    .sort();
  // The build's CUDA flags (CMakeLists.txt: -O3 --expt-relaxed-constexpr, C++17, LONGCAT_WITH_CUDA).
  const flags = ['-O3', '--expt-relaxed-constexpr', '-std=c++17', '-DLONGCAT_WITH_CUDA', `-I${cudaDir}`, '-Xptxas', '-v'];
  const cacheDir = join(root, 'node_modules', '.cache', 'ptxas-check');
  if (opt.cache) mkdirSync(cacheDir, { recursive: true });
  const scratch = mkdtempSync(join(tmpdir(), 'ptxas-check-'));

  const jobs = [];
  for (const arch of opt.archs) for (const src of sources) jobs.push({ src, arch });
  const started = Date.now();
  let compiled = 0;
  const failures = [];
  const results = new Array(jobs.length);
  let next = 0;
  async function worker() {
    while (next < jobs.length) {
      const i = next++;
      const { src, arch } = jobs[i];
      const path = join(cudaDir, src);
      const args = [...flags, `-arch=sm_${arch}`, '-cubin', path, '-o', join(scratch, `${src}.${arch}.cubin`)];
      const h = createHash('sha256')
        .update(version)
        .update(JSON.stringify(args.slice(0, -2)));
      for (const [f, text] of [...dependencies(path)].sort(([a], [b]) => a.localeCompare(b)))
        h.update(f.slice(root.length)).update(text);
      const cached = join(cacheDir, `${h.digest('hex')}.log`);
      let out;
      if (opt.cache && existsSync(cached)) out = readFileSync(cached, 'utf8');
      else {
        const r = await run(nvcc, args);
        ++compiled;
        if (r.code !== 0) {
          failures.push(`${src} (sm_${arch}): nvcc exited ${r.code}\n${r.out}`);
          continue;
        }
        out = r.out;
        if (opt.cache) writeFileSync(cached, out);
      }
      results[i] = parsePtxas(out).map(k => ({ ...k, src }));
    }
  }
  await Promise.all(Array.from({ length: Math.min(opt.jobs, jobs.length) }, worker));
  rmSync(scratch, { recursive: true, force: true });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (failures.length) {
    console.error(failures.join('\n'));
    process.exit(1);
  }

  const rows = results.flat();
  const names = shortNames(rows.map(r => r.mangled));
  rows.forEach((r, i) => {
    r.name = names[i];
  });
  const archOrder = new Map(opt.archs.map((a, i) => [a, i]));
  rows.sort(
    (a, b) => a.src.localeCompare(b.src) || a.name.localeCompare(b.name) || archOrder.get(a.arch) - archOrder.get(b.arch),
  );
  console.log(
    `ptxas -v, -O3, ${release}; archs ${opt.archs.map(a => `sm_${a}`).join(', ')}; ${sources.length} sources, ` +
      `${compiled} compiled (${jobs.length - compiled} cached), ${seconds} s with ${opt.jobs} jobs`,
  );
  console.log('static shared memory only (the dynamic size is set at launch)\n');
  console.log('| file | kernel | arch | registers | smem (bytes) | stack (bytes) | spill stores / loads (bytes) |');
  console.log('| --- | --- | --- | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    const spill = r.spillStores || r.spillLoads ? `**${r.spillStores} / ${r.spillLoads}**` : '0 / 0';
    console.log(`| ${r.src} | \`${r.name.replace(/\|/g, '\\|')}\` | ${r.arch} | ${r.regs} | ${r.smem} | ${r.stack} | ${spill} |`);
  }
  const spilling = rows.filter(r => r.spillStores || r.spillLoads);
  if (spilling.length) {
    console.error(`\nptxas-check: ${spilling.length} kernel build(s) spill registers:`);
    for (const r of spilling)
      console.error(`  ${r.src} sm_${r.arch} ${r.name}: ${r.spillStores} bytes stored, ${r.spillLoads} loaded`);
    process.exit(1);
  }
  console.log(`\nptxas-check: ${rows.length} kernel builds, no spills`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();

// Child process of test/op-fuzz.test.ts: a randomized fuzzer over every module function of the addon
// and the methods of its classes, with a fixed seed and a fixed number of calls. Each call ends in
// success or a typed LongcatError (queued work is waited for after each call, so errors of kernels
// that already started count too); anything else is reported, and a signal or a hang kills this
// process, whose last "call" line on stdout then names the op and its arguments.
//
// Arguments come two ways: valid calls recorded from the op-case table (lib/check/op-cases.ts, the
// smallest cases of each op) and from loading the tiny model with two expert-parallel ranks and
// generating a few tokens (the expert-parallel and expert-set ops), mutated in one or two places, and
// argument lists made up from scratch.
// The values tried: tensors of zero-size and degenerate shapes (a zero dimension beside a huge one,
// size-1 dimensions, rank changed), other dtypes, the other device, disposed tensors, an output
// aliasing an input (the same tensor or a view of it), huge / zero / negative / fractional / NaN /
// infinite numbers, disposed streams, wrong types. Shapes with negative or overflowing dimensions
// are fed to the Tensor constructor and view().
//
// usage: node op-fuzz.mjs <seed> <calls> <device>
// prints one "call <i> <op>(<args>)" line before each call and a final "summary <json>" line.
import { mkdtempSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../../dist/native.js';
import { LongcatError } from '../../dist/errors.js';
import { initRandom } from '../../dist/init-random.js';
import { loadModel } from '../../dist/generate.js';
import { cases, overLimits, SLOW_RUN_LIMITS } from '../../dist/check/op-cases.js';
import { rng } from '../../dist/check/rng.js';

const seed = Number(process.argv[2] ?? 1);
const calls = Number(process.argv[3] ?? 1000);
const device = process.argv[4] ?? 'cpu';
const cuda = native.cudaStatus().available;
const otherDevice = device === 'cpu' ? (cuda ? 'cuda:0' : null) : 'cpu';
const r = rng(seed);
const pick = list => list[r.int(list.length)];

// ---- the functions under test -------------------------------------------------------------------

const classes = new Set(['Tensor', 'Stream', 'Event', 'Graph']);
// setErrorFactory installs the SDK's error class: fuzzing it would only break the typed-error check.
const opNames = Object.keys(native).filter(k => typeof native[k] === 'function' && !classes.has(k) && k !== 'setErrorFactory');
// The benchmarks run as long as they are asked to: they get counts from a small pool.
const boundedOps = new Set(['benchReadBandwidth', 'benchReadTensors', 'benchLinear']);

// ---- valid calls, recorded from the op-case table -------------------------------------------------

const templates = new Map(); // op -> argument lists
let recording = null;
const originals = {};
for (const name of opNames) {
  const f = native[name];
  originals[name] = f;
  native[name] = (...args) => {
    if (recording && (name === recording.op || (recording.op === '*' && name !== 'captureGraph')))
      recording.calls.push([name, args.slice()]);
    return f(...args);
  };
}
const addTemplate = (op, args) => {
  if (!templates.has(op)) templates.set(op, []);
  if (templates.get(op).length < 4) templates.get(op).push(args);
};
{
  const byOp = new Map();
  for (const c of cases) {
    if (c.gpuOnly || overLimits(c, SLOW_RUN_LIMITS)) continue;
    if (!byOp.has(c.op)) byOp.set(c.op, []);
    byOp.get(c.op).push(c);
  }
  for (const [op, list] of byOp) {
    list.sort((a, b) => a.bytes - b.bytes);
    for (const c of list.slice(0, 2)) {
      const made = c.make(device, rng(c.seed));
      recording = { op, calls: [] };
      const prev = native.setMatmulPrecision(c.precision);
      made.run(null);
      native.setMatmulPrecision(prev);
      native.synchronize(device);
      for (const [name, args] of recording.calls) addTemplate(name, args);
      recording = null;
    }
  }
}
// The model's calls (its tensors stay alive: the model is disposed only at the end).
const modelDir = mkdtempSync(path.join(tmpdir(), 'longcat-fuzz-'));
await initRandom({ preset: 'tiny', out: path.join(modelDir, 'tiny'), seed: 3 });
recording = { op: '*', calls: [] };
const model = await loadModel(path.join(modelDir, 'tiny'), {
  backend: device === 'cpu' ? 'cpu' : 'cuda',
  ranks: 2,
  maxContext: 64,
});
{
  const s = model.createSession();
  await s.generate('fuzz', { maxTokens: 2 });
  s.dispose();
}
native.synchronize(device);
for (const [name, args] of recording.calls)
  if (!templates.has(name) || name.startsWith('ep') || name === 'moeExperts') addTemplate(name, args);
recording = null;
for (const name of opNames) native[name] = originals[name];
// captureGraph over one or two streams, queueing an op on each.
{
  const s1 = new native.Stream(device);
  const s2 = new native.Stream(device);
  const x = new native.Tensor('f32', [4], device, new Float32Array(4));
  addTemplate('captureGraph', [[s1], () => native.add(s1, x, x, x)]);
  addTemplate('captureGraph', [
    [s1, s2],
    () => {
      native.add(s1, x, x, x);
      native.scale(s2, x, x, 2);
    },
  ]);
  // Captured functions that misuse the capture: each must end in a typed error.
  addTemplate('captureGraph', [[s1], () => native.captureGraph([s1], () => {})]);
  addTemplate('captureGraph', [
    [s1, s2],
    () => {
      s2.dispose();
      native.synchronize(device);
    },
  ]);
}

// ---- values --------------------------------------------------------------------------------------

const dtypes = ['f32', 'bf16', 'f16', 'fp8_e4m3', 'int8', 'int32', 'int64'];
const numbers = [
  0,
  -0,
  1,
  2,
  3,
  7,
  64,
  -1,
  -7,
  0.5,
  1e-30,
  65536,
  2 ** 31,
  2 ** 32 + 1,
  2 ** 53,
  -(2 ** 53),
  NaN,
  Infinity,
  -Infinity,
];
const smallNumbers = [0, -1, 1, 2, 0.5, 1 << 20, NaN];
const strings = [
  '',
  'cpu',
  'cuda:0',
  'cuda:99',
  'f32',
  'bf16',
  'scalar',
  'avx512',
  'highest',
  'fp8',
  'wgmma',
  'package.json',
  '/',
  'x'.repeat(300),
];
const shapes = [
  [],
  [0],
  [1],
  [5],
  [0, 0],
  [3, 0],
  [0, 4],
  [1, 1],
  [2, 3],
  [4, 8],
  [1, 1, 1, 1],
  [2, 0, 3],
  [17],
  [3, 64],
  [1, 128],
];
// Zero-size shapes with a huge dimension (views of an empty tensor; nothing is allocated).
const hugeEmpty = [
  [2 ** 31, 0],
  [0, 2 ** 31],
  [2 ** 40, 0, 3],
  [3, 0, 2 ** 40],
  [0, 2 ** 50],
];
// Constructor and view shapes that must be refused.
const badShapes = [
  [-1],
  [2 ** 32, 2 ** 32],
  [2 ** 62],
  [2 ** 53 + 2],
  [1.5],
  [NaN],
  [Infinity],
  ['3'],
  [4, 1380655685, 3340214413],
  [2 ** 31, 2 ** 31, 2],
];

// A tensor of `shape`; shapes of more than 2^22 elements (a mutated huge-but-empty shape) get a zero
// first dimension instead: allocating them is the constructor's case, and kernels would fill them.
function newTensor(dtype, shape, dev = device) {
  if (shape.reduce((a, b) => a * b, 1) > 2 ** 22) shape = [0, ...shape.slice(1)];
  if (!shape.includes(0)) return new native.Tensor(dtype, shape, dev);
  return new native.Tensor(dtype, [0], dev).view(shape);
}

function degenerateShape(shape) {
  const s = shape.slice();
  switch (r.int(6)) {
    case 0:
      if (s.length) s[r.int(s.length)] = 0;
      else s.push(0);
      return s;
    case 1:
      if (s.length) s[r.int(s.length)] = 1;
      return s;
    case 2:
      if (s.length) s[r.int(s.length)] += 1 + r.int(3);
      return s;
    case 3:
      s.splice(r.int(s.length + 1), 0, 1);
      return s;
    case 4:
      s.splice(r.int(Math.max(1, s.length)), 1);
      return s;
    default:
      return pick(hugeEmpty);
  }
}

function randomTensor(dtype = pick(dtypes), shape = pick(shapes)) {
  return r.int(5) === 0 ? newTensor(dtype, pick(hugeEmpty)) : newTensor(dtype, shape);
}

function disposedTensor() {
  const t = new native.Tensor(pick(dtypes), pick(shapes.slice(0, 6)), device);
  t.dispose();
  return t;
}

function disposedStream() {
  const s = new native.Stream(device);
  s.dispose();
  return s;
}

const isTensor = v => v instanceof native.Tensor;
const isStream = v => v instanceof native.Stream;

// A replacement for a tensor argument; `others` are the call's other tensors (for aliasing).
function mutateTensor(t, others) {
  if (t.disposed) return randomTensor();
  const live = others.filter(o => o !== t && !o.disposed);
  switch (r.int(9)) {
    case 0:
    case 1:
      return newTensor(t.dtype, degenerateShape(t.shape));
    case 2:
      return newTensor(pick(dtypes.filter(d => d !== t.dtype)), t.shape);
    case 3:
      return disposedTensor();
    case 4:
    case 5: // an alias: another argument, or a view of one with this argument's shape when it fits
      if (!live.length) return t;
      {
        const o = pick(live);
        const n = t.shape.reduce((a, b) => a * b, 1);
        const m = o.shape.reduce((a, b) => a * b, 1);
        return n === m && r.int(2) === 0 ? o.view(t.shape) : o;
      }
    case 6:
      return otherDevice ? t.to(otherDevice) : t.view(t.shape);
    case 7:
      return randomTensor();
    default:
      return pick([null, undefined, 0, 'cpu', {}, [t]]);
  }
}

function randomValue(depth = 0) {
  switch (r.int(10)) {
    case 0:
      return null;
    case 1:
    case 2:
    case 3:
      return randomTensor();
    case 4:
    case 5:
      return pick(numbers);
    case 6:
      return pick(strings);
    case 7:
      return depth ? disposedTensor() : Array.from({ length: r.int(4) }, () => randomValue(1));
    case 8:
      return pick([new native.Stream(device), disposedStream(), true, false, undefined]);
    default:
      return pick([{}, () => {}, new native.Event(device), disposedTensor()]);
  }
}

function mutate(args, op) {
  const a = args.slice();
  const tensors = a.flatMap(v => (isTensor(v) ? [v] : Array.isArray(v) ? v.filter(isTensor) : []));
  for (let m = 1 + r.int(2); m > 0; m--) {
    if (r.int(12) === 0) {
      if (r.int(2) && a.length) a.length = r.int(a.length);
      else a.push(randomValue());
      continue;
    }
    const i = r.int(Math.max(1, a.length));
    const v = a[i];
    if (isTensor(v)) a[i] = mutateTensor(v, tensors);
    else if (isStream(v) || v === null || v === undefined)
      a[i] = pick([disposedStream(), otherDevice ? new native.Stream(otherDevice) : null, randomTensor(), 0, null]);
    else if (typeof v === 'number') a[i] = pick(boundedOps.has(op) ? smallNumbers : numbers);
    else if (typeof v === 'string') a[i] = pick(strings);
    else if (Array.isArray(v)) {
      const list = v.slice();
      if (list.length && r.int(3)) {
        const j = r.int(list.length);
        list[j] = isTensor(list[j]) ? mutateTensor(list[j], tensors) : r.int(2) ? pick(list) : randomValue(1);
      } else if (r.int(2)) list.length = 0;
      else list.push(r.int(2) && list.length ? pick(list) : randomValue(1));
      a[i] = list;
    } else a[i] = randomValue();
  }
  return a;
}

function randomArgs(op) {
  const n = r.int(9);
  return Array.from({ length: n }, () => {
    const v = randomValue();
    return boundedOps.has(op) && typeof v === 'number' ? pick(smallNumbers) : v;
  });
}

// ---- methods of the classes, as "ops" taking (receiver, ...args) ------------------------------------

const methods = {
  'new Tensor': (...a) => new native.Tensor(...a),
  'Tensor.view': (t, ...a) => t.view(...a),
  'Tensor.narrow': (t, ...a) => t.narrow(...a),
  'Tensor.to': (t, ...a) => t.to(...a),
  'Tensor.toBytes': t => t.toBytes(),
  'Tensor.copyFromBytes': (t, ...a) => t.copyFromBytes(...a),
  'new Stream': (...a) => new native.Stream(...a),
  'Stream.waitEvent': (s, ...a) => s.waitEvent(...a),
  'Event.record': (e, ...a) => e.record(...a),
  'Event.elapsedMs': (e, ...a) => e.elapsedMs(...a),
  // A graph captured on a fresh stream, replayed after the JS stream was disposed (or not).
  'Graph.replay': (dispose, alpha) => {
    const s = new native.Stream(device);
    const x = new native.Tensor('f32', [3], device, new Float32Array(3));
    const g = native.captureGraph([s], () => native.scale(s, x, x, alpha));
    if (dispose) s.dispose();
    g.replay();
    g.replay();
    return g;
  },
};
function methodArgs(name) {
  switch (name) {
    case 'new Tensor':
      return [pick([...dtypes, 'f64', 7]), r.int(2) ? pick(badShapes) : pick(shapes), pick([undefined, device, 'cuda:7', 3])];
    case 'Tensor.view':
      return [randomTensor(), r.int(2) ? pick(badShapes) : pick([...shapes, ...hugeEmpty, [-1], [-1, -1], [2, -1]])];
    case 'Tensor.narrow':
      return [pick([randomTensor(), disposedTensor()]), pick(numbers), pick(numbers)];
    case 'Tensor.to':
      return [pick([randomTensor(), disposedTensor()]), pick(strings)];
    case 'Tensor.toBytes':
      return [pick([randomTensor(), disposedTensor()])];
    case 'Tensor.copyFromBytes': {
      const t = pick([randomTensor(), disposedTensor()]);
      return [t, pick([new Uint8Array(t.disposed ? 0 : t.nbytes), new Uint8Array(3), new Float32Array(1), 'x'])];
    }
    case 'new Stream':
      return [pick([...strings, 3, undefined])];
    case 'Stream.waitEvent':
      return [pick([new native.Stream(device), disposedStream()]), pick([new native.Event(device), 'x', undefined])];
    case 'Event.record':
      return [new native.Event(pick([device, 'cpu'])), pick([new native.Stream(device), disposedStream(), null, 'x'])];
    case 'Graph.replay':
      return [pick([true, false]), pick(numbers)];
    default:
      return [new native.Event(device), pick([new native.Event(device), new native.Event('cpu'), null])];
  }
}

// ---- the run -------------------------------------------------------------------------------------

function describe(v, depth = 0) {
  if (isTensor(v)) return v.disposed ? 'Tensor(disposed)' : `Tensor(${v.dtype}, [${v.shape.join(', ')}], ${v.device})`;
  if (isStream(v)) {
    try {
      return `Stream(${v.device})`;
    } catch {
      return 'Stream(disposed)';
    }
  }
  if (v instanceof native.Event) return 'Event';
  if (Array.isArray(v)) return depth > 1 ? '[...]' : `[${v.map(x => describe(x, depth + 1)).join(', ')}]`;
  if (typeof v === 'function') return 'function';
  if (typeof v === 'string') return JSON.stringify(v.length > 20 ? `${v.slice(0, 20)}...` : v);
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  if (v === undefined) return 'undefined';
  return JSON.stringify(v);
}

const names = [...opNames, ...Object.keys(methods)];
const perOp = Object.fromEntries(names.map(n => [n, { calls: 0, ok: 0, typed: 0 }]));
const untyped = [];
for (let i = 0; i < calls; i++) {
  const op = pick(names);
  let args;
  let call;
  if (op in methods) {
    args = methodArgs(op);
    call = () => methods[op](...args);
  } else {
    const t = templates.get(op);
    args = t && r.int(4) ? mutate(pick(t), op) : randomArgs(op);
    call = () => native[op](...args);
  }
  const line = `call ${i} ${op}(${args.map(a => describe(a)).join(', ')})`;
  writeSync(1, `${line}\n`);
  const stats = perOp[op];
  stats.calls++;
  try {
    const result = call();
    if (result instanceof native.Graph) {
      result.replay(); // a graph that was made must replay (and replay again)
      result.replay();
      result.dispose();
    }
    native.synchronize(device);
    if (device !== 'cpu') native.synchronize('cpu');
    stats.ok++;
  } catch (e) {
    if (e instanceof LongcatError) {
      stats.typed++;
      // The error may have come from queued work; what else is queued must finish before the next call.
      for (const d of new Set([device, 'cpu'])) {
        try {
          native.synchronize(d);
        } catch {}
      }
    } else untyped.push(`${line}: ${e?.constructor?.name}: ${e?.message}`);
  }
}
model.dispose();
rmSync(modelDir, { recursive: true, force: true });
writeSync(1, `summary ${JSON.stringify({ calls, templates: [...templates.keys()], perOp, untyped })}\n`);

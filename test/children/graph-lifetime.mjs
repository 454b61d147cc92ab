// Child process of test/lifetimes.test.ts: replays a captured graph after the JS Stream it was
// captured on was disposed (`disposed`) or garbage collected (`collected`), on the device given.
// The graph adds x into y once per replay; prints the final y as JSON. Run with --expose-gc.
import { native } from '../../dist/native.js';
import { tensor, toArray } from '../../dist/tensor.js';

const [mode, device = 'cpu'] = process.argv.slice(2);
const x = tensor([1, 2, 3, 4, 5], [5], { device });
const y = tensor([0, 0, 0, 0, 0], [5], { device });

let streamCollected;
const registry = new FinalizationRegistry(() => streamCollected()); // kept: a collected registry reports nothing
const collected = new Promise(resolve => {
  streamCollected = resolve;
});

// The stream is reachable only from this function's frame; the graph is all that is returned.
function capture() {
  const s = new native.Stream(device);
  const graph = native.captureGraph([s], () => native.add(s, y, y, x));
  if (mode === 'disposed') s.dispose();
  registry.register(s, 'stream');
  return graph;
}

const graph = capture();
if (mode === 'collected') {
  let done = false;
  collected.then(() => {
    done = true;
  });
  for (let i = 0; i < 1000 && !done; i++) {
    globalThis.gc();
    await new Promise(r => setImmediate(r));
  }
  if (!done) throw new Error('the stream was never collected');
  for (let i = 0; i < 3; i++) await new Promise(r => setImmediate(r)); // its native finalizer runs after
}
for (let i = 0; i < 3; i++) graph.replay();
native.synchronize(device);
graph.dispose();
process.stdout.write(JSON.stringify(Array.from(toArray(y))));

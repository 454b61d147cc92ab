// Prints the native sources for binding.gyp, the same set CMakeLists.txt globs (CPU only).
import { readdirSync } from 'node:fs';
const dirs = ['native', 'native/cpu', 'native/ops'];
const files = dirs.flatMap(d =>
  readdirSync(new URL(`../${d}`, import.meta.url))
    .filter(f => f.endsWith('.cc'))
    .map(f => `${d}/${f}`),
);
console.log(files.sort().join(' '));

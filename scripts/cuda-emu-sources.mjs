// Rewrites cuda/*.cu for test/emu's CPU emulator (build step of the native harness, never for the
// addon): `kernel<<<grid, block[, smem[, stream]]>>>(args)` becomes
// `lc_emu::launcher(kernel, grid, block, smem, stream)(args)`, and `extern __shared__ T name[];`
// becomes a pointer to the emulator's dynamic shared memory. Writes <out>/<name>.cc per input.
//   node scripts/cuda-emu-sources.mjs <out dir> <file.cu>...
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const [out, ...files] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
for (const file of files) {
  let src = readFileSync(file, 'utf8');
  let launches = 0;
  // the kernel expression before <<<: a name, optionally qualified and with template arguments
  src = src.replace(/([A-Za-z_][\w:]*(?:<[^<>;()]*(?:<[^<>;()]*>[^<>;()]*)*>)?)\s*<<<([\s\S]*?)>>>\s*\(/g, (_, kernel, cfg) => {
    launches++;
    return `lc_emu::launcher(${kernel}, ${cfg.trim()})(`;
  });
  src = src.replace(
    /extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;/g,
    (_, type, name) => `${type}* ${name} = reinterpret_cast<${type}*>(lc_emu::dynamic_smem());`,
  );
  if (src.includes('<<<')) throw new Error(`${file}: a launch the rewrite did not understand`);
  const dir = path.dirname(path.resolve(file));
  // includes stay relative to the original file
  src = src.replace(/#include "([^"]+)"/g, (_, inc) => `#include "${path.join(dir, inc)}"`);
  writeFileSync(
    path.join(out, path.basename(file).replace(/\.cu$/, '.cc')),
    `// generated from ${file} (${launches} launches)\n${src}`,
  );
}

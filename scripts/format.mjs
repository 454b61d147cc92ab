// npm run check:format / npm run format: the C++ and CUDA sources through clang-format (the style of
// .clang-format; the binary comes from the clang-format dev dependency, so every machine formats alike).
// Without --write it lists the files that differ and exits 1; with --write it formats them in place.
import { execFileSync, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';

const write = process.argv.includes('--write');
const require = createRequire(import.meta.url);
const binary = path.join(
  path.dirname(require.resolve('clang-format/package.json')),
  'bin',
  `${process.platform}_${process.arch}`,
  'clang-format',
);
const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', 'native', 'cuda', 'test/native', 'test/emu'], {
  encoding: 'utf8',
})
  .split('\n')
  .filter(f => /\.(cc|h|cu|cuh)$/.test(f));
const differ = [];
for (let i = 0; i < files.length; i += 50) {
  const chunk = files.slice(i, i + 50);
  const r = spawnSync(binary, write ? ['-i', '--style=file', ...chunk] : ['--dry-run', '--Werror', '--style=file', ...chunk], {
    encoding: 'utf8',
  });
  if (r.error) throw r.error;
  if (!write && r.status !== 0) differ.push(...new Set([...r.stderr.matchAll(/^([^:\n]+):\d+:\d+: error/gm)].map(m => m[1])));
  else if (r.status !== 0) throw new Error(r.stderr);
}
if (differ.length) {
  console.error(
    `clang-format: ${differ.length} file(s) differ from .clang-format (run \`npm run format\`):\n  ${differ.join('\n  ')}`,
  );
  process.exit(1);
}
console.log(`clang-format: ${files.length} C++/CUDA files ${write ? 'formatted' : 'match .clang-format'}`);

#!/usr/bin/env node
// The published package's prebuilt addon (npm's prepack step, so `npm pack` and `npm publish` run
// it): one longcat.node with the CPU backend and the CUDA kernels for every target of package.json's
// "longcat".cudaArchs (SASS for each GPU generation from sm_80, PTX for the newest), the CUDA
// runtime and libstdc++ linked statically (CMakeLists.txt), built in build-prebuild/ and copied,
// stripped, to prebuilds/linux-x64/longcat-flash.napi.glibc.node, the name node-gyp-build loads.
// Without nvcc it fails unless LONGCAT_PREBUILD_CPU_ONLY=1 (a CPU-only package, e.g. `npm install`
// from git on a machine without CUDA). scripts/pack-check.sh checks what comes out.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
/** @type {NodeJS.ProcessEnv} */
const env = { ...process.env, PATH: `${process.env.PATH}:/usr/local/cuda/bin` };
const log = msg => console.log(`prebuild: ${msg}`);

if (process.platform !== 'linux' || process.arch !== 'x64') {
  log(`no prebuild for ${process.platform}-${process.arch} (linux-x64 only); installs there build from source`);
  process.exit(0);
}
const cpuOnly = env.LONGCAT_PREBUILD_CPU_ONLY === '1';
const hasNvcc = spawnSync('nvcc', ['--version'], { env, stdio: 'ignore' }).status === 0;
if (!hasNvcc && !cpuOnly) {
  console.error('prebuild: nvcc not found (PATH and /usr/local/cuda/bin): the prebuild carries the CUDA kernels.');
  console.error('prebuild: install the CUDA toolkit (>= 13.0), or set LONGCAT_PREBUILD_CPU_ONLY=1 for a CPU-only package');
  process.exit(1);
}
const archs = cpuOnly ? '' : env.LONGCAT_CUDA_ARCHS || pkg.longcat.cudaArchs;
const out = 'build-prebuild';
const args = [createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', out];
if (cpuOnly) args.push('--CDLONGCAT_CUDA=OFF');
else env.LONGCAT_CUDA_ARCHS = archs;
log(cpuOnly ? 'CPU backend only' : `CPU backend + CUDA kernels for ${archs}`);
const t0 = process.hrtime.bigint();
const r = spawnSync(process.execPath, args, { cwd: root, env, stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
log(`built in ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(0)} s`);

const dir = path.join(root, 'prebuilds', 'linux-x64');
rmSync(path.join(root, 'prebuilds'), { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const file = path.join(dir, `${pkg.name}.napi.glibc.node`);
copyFileSync(path.join(root, out, 'Release', 'longcat.node'), file);
// Symbols only: the CUDA fat binary (.nv_fatbin) and everything the loader needs stay.
if (spawnSync('strip', ['--strip-unneeded', file], { stdio: 'inherit' }).status !== 0) log('strip failed; left unstripped');
const info = createRequire(import.meta.url)(file).buildInfo();
log(`${path.relative(root, file)}: ${JSON.stringify(info)}`);
if (!cpuOnly && info.cudaArchs !== archs.split(/[;,]/).join(',')) {
  console.error(`prebuild: the addon reports CUDA targets '${info.cudaArchs}', expected '${archs}'`);
  process.exit(1);
}

// Loads longcat.node once. Order: $LONGCAT_ADDON (an explicit path), then node-gyp-build
// (build/Release, a source build, then prebuilds/ for this platform). A load failure says how to
// build from source (the same steps as scripts/install.mjs).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type { Native } from '../types/native.js';
import { LoadError, makeError } from './errors.js';

const require = createRequire(import.meta.url);
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** This package's version (its package.json). */
export function packageVersion(): string {
  return (JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
}

function load(): Native {
  const explicit = process.env.LONGCAT_ADDON;
  try {
    const addon = (explicit ? require(path.resolve(explicit)) : require('node-gyp-build')(packageRoot)) as Native;
    addon.setErrorFactory(makeError);
    return addon;
  } catch (err) {
    const what = explicit
      ? `LONGCAT_ADDON=${explicit}`
      : `the longcat-flash native addon for ${process.platform}-${process.arch}`;
    throw new LoadError(
      'E_LOAD',
      `Could not load ${what}: ${(err as Error).message}\n` +
        'The package carries a prebuilt addon for linux-x64 with glibc >= 2.34. To build it from source, in your project:\n' +
        '  npm install --save-dev cmake-js node-addon-api\n' +
        '  npm rebuild longcat-flash --build-from-source\n' +
        'which needs cmake >= 3.18 and a C++17 compiler, and the CUDA toolkit >= 13.0 for the CUDA backend ' +
        '(README: Build from source).',
      { cause: err },
    );
  }
}

export const native: Native = load();

// Loads longcat.node once. Order: $LONGCAT_ADDON (an explicit path), then node-gyp-build
// (prebuilds/ for this platform, then build/Release). A load failure says how to fix it.
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
        'Build it from source with `npm rebuild longcat-flash` (needs cmake and a C++17 compiler; ' +
        'without cmake: `npx node-gyp rebuild` in the package folder).',
      { cause: err },
    );
  }
}

export const native: Native = load();

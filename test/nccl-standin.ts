// The NCCL stand-in of the tests (test/native/nccl_standin.cc: NCCL's C symbols between ranks of one
// process -- its threads, worker threads included -- over host memory), compiled into a temporary
// directory; loaded through LONGCAT_NCCL_PATH or a libraryPath option.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** Compiles the stand-in; returns its path and a function that removes it. */
export function buildStandin(): { dir: string; path: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'longcat-nccl-'));
  const file = path.join(dir, 'libnccl_standin.so');
  const source = path.join(__dirname, 'native', 'nccl_standin.cc');
  execFileSync('g++', ['-std=c++17', '-shared', '-fPIC', '-O1', '-Wall', source, '-o', file, '-lpthread']);
  return { dir, path: file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

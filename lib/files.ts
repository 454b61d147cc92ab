// Opening checkpoint files as regular files only. A plain open() of a FIFO waits for a writer
// forever (and readFileSync would block the whole thread), so files are opened with O_NONBLOCK
// and refused unless fstat says they are regular files; where a checkpoint's files may live
// (inside its directory, symlinks resolved) is decided here too.
import { constants, closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { type FileHandle, open, realpath } from 'node:fs/promises';
import path from 'node:path';
import { CheckpointError } from './errors.js';

const READ_NONBLOCK = constants.O_RDONLY | constants.O_NONBLOCK;

function notRegular(file: string): CheckpointError {
  return new CheckpointError('E_CHECKPOINT', `${file}: not a regular file (a directory, FIFO, socket or device)`);
}

/**
 * Opens `file` for reading; CheckpointError (E_CHECKPOINT) when it is not a regular file. Open
 * failures (ENOENT, EACCES, ...) are thrown as Node's errors, for the caller to word.
 */
export async function openRegularFile(file: string): Promise<FileHandle> {
  const fh = await open(file, READ_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) throw notRegular(file);
  } catch (e) {
    await fh.close();
    throw e;
  }
  return fh;
}

/** The UTF-8 text of a regular file (errors as openRegularFile). */
export async function readRegularText(file: string): Promise<string> {
  const fh = await openRegularFile(file);
  try {
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/** readRegularText, synchronously. */
export function readRegularTextSync(file: string): string {
  const fd = openSync(file, READ_NONBLOCK);
  try {
    if (!fstatSync(fd).isFile()) throw notRegular(file);
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether `real` (a resolved path) may hold a file of the checkpoint whose resolved directory is
 * `realRoot`: inside it, or, when the directory is a Hugging Face cache snapshot
 * (`<repo>/snapshots/<revision>`, whose files are symlinks into `<repo>/blobs`), in that blobs folder.
 */
export function insideCheckpoint(realRoot: string, real: string): boolean {
  if (real.startsWith(realRoot + path.sep)) return true;
  const snapshots = path.dirname(realRoot);
  if (path.basename(snapshots) !== 'snapshots') return false;
  return real.startsWith(path.join(path.dirname(snapshots), 'blobs') + path.sep);
}

/**
 * Checks that `file` (an absolute path under the checkpoint directory `root`) does not resolve,
 * through symlinks, to a file outside it (see insideCheckpoint). A file that does not exist passes
 * (reading it reports that). `where` names what listed the file, for the error.
 */
export async function checkContained(root: string, realRoot: string, file: string, where: string): Promise<void> {
  let real: string;
  try {
    real = await realpath(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new CheckpointError(
      'E_CHECKPOINT',
      `${where}: cannot resolve '${path.relative(root, file)}' (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
      { cause: e },
    );
  }
  if (!insideCheckpoint(realRoot, real))
    throw new CheckpointError(
      'E_CHECKPOINT',
      `${where}: shard '${path.relative(root, file)}' resolves to ${real}, outside the checkpoint directory`,
    );
}

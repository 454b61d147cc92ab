// NCCL loaded at run time (native/nccl.h, lib/parallel/nccl.ts): the loader's typed errors without
// the library or with a wrong one, and the bootstrap and grouped send/recv sequence between 2 and 4
// ranks of one process against test/native/nccl_standin.cc (the same C symbols over host memory),
// compiled here and loaded through LONGCAT_NCCL_PATH. Never run against NCCL itself.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NcclComm, ncclUniqueId, ncclVersion } from '../lib/parallel/nccl.js';
import { Stream } from '../lib/device.js';
import { tensor, empty } from '../lib/tensor.js';
import type { Tensor } from '../types/native.js';
import { native } from '../lib/native.js';
import { rng } from '../lib/check/rng.js';
import { buildStandin } from './nccl-standin.js';

const INSTALL_HINT = 'pip install nvidia-nccl-cu12';
let dir = '';
let standin = '';

let remove = () => {};
beforeAll(() => {
  ({ dir, path: standin, remove } = buildStandin());
}, 120_000); // a compile, on a machine that may be busy
afterAll(() => remove());

/** Runs fn with the given environment variables set (undefined: unset), then restores them. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T> | T): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map(k => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
    }
  };
  apply(vars);
  try {
    return await fn();
  } finally {
    apply(saved);
  }
}

const bytes = (t: Tensor) => Array.from(t.toBytes());

/** Brings up `n` ranks of one world on the CPU, each with a stream of its own. */
async function world(n: number) {
  const id = ncclUniqueId(standin);
  const comms = await Promise.all(
    Array.from({ length: n }, (_, rank) => NcclComm.init({ rank, worldSize: n, id, device: 'cpu', libraryPath: standin })),
  );
  const streams = comms.map(() => new Stream('cpu'));
  return { comms, streams };
}

describe('NCCL loader', () => {
  it('without the library: E_NCCL_UNAVAILABLE that says how to install NCCL', () => {
    // A library name searched on the loader's path, as libnccl.so.2 is, that no system has.
    expect(() => ncclVersion('libnccl-longcat-absent.so.2')).toThrow(
      expect.objectContaining({ code: 'E_NCCL_UNAVAILABLE', message: expect.stringContaining(INSTALL_HINT) }),
    );
    // The default: libnccl.so.2, unless LONGCAT_NCCL_PATH says otherwise. This machine may or may not have NCCL.
    return withEnv({ LONGCAT_NCCL_PATH: undefined }, () => {
      let version = 0;
      try {
        version = ncclVersion();
      } catch (err) {
        expect(err).toMatchObject({ code: 'E_NCCL_UNAVAILABLE', message: expect.stringContaining("'libnccl.so.2'") });
        expect((err as Error).message).toContain(INSTALL_HINT);
        expect((err as Error).message).toContain('LONGCAT_NCCL_PATH');
        expect(() => ncclUniqueId()).toThrow(expect.objectContaining({ code: 'E_NCCL_UNAVAILABLE' }));
        return;
      }
      expect(version).toBeGreaterThanOrEqual(20700);
    });
  });

  it('a wrong LONGCAT_NCCL_PATH: E_NCCL_UNAVAILABLE naming the path', async () => {
    const missing = path.join(dir, 'no-such-libnccl.so.2');
    await withEnv({ LONGCAT_NCCL_PATH: missing }, () => {
      expect(() => ncclVersion()).toThrow(
        expect.objectContaining({
          code: 'E_NCCL_UNAVAILABLE',
          message: expect.stringContaining(`'${missing}' (LONGCAT_NCCL_PATH)`),
        }),
      );
      expect(() => ncclVersion()).toThrow(expect.objectContaining({ message: expect.stringContaining(INSTALL_HINT) }));
    });
    // Not a shared library at all, and a shared library without NCCL's symbols.
    const notLibrary = path.join(__dirname, 'nccl.test.ts');
    expect(() => ncclVersion(notLibrary)).toThrow(
      expect.objectContaining({ code: 'E_NCCL_UNAVAILABLE', message: expect.stringContaining(notLibrary) }),
    );
    expect(() => ncclVersion('libm.so.6')).toThrow(
      expect.objectContaining({ code: 'E_NCCL_UNAVAILABLE', message: expect.stringContaining('no symbol ncclGetVersion') }),
    );
    await expect(
      NcclComm.init({ rank: 0, worldSize: 1, id: '00'.repeat(128), device: 'cpu', libraryPath: missing }),
    ).rejects.toMatchObject({
      code: 'E_NCCL_UNAVAILABLE',
    });
  });

  it('LONGCAT_NCCL_PATH loads the stand-in; ids are 256 hex digits and differ', async () => {
    await withEnv({ LONGCAT_NCCL_PATH: standin }, () => {
      expect(ncclVersion()).toBe(21900);
      const a = ncclUniqueId(),
        b = ncclUniqueId();
      expect(a).toMatch(/^[0-9a-f]{256}$/);
      expect(b).not.toBe(a);
    });
  });
});

describe('NCCL send/recv between ranks of one process (stand-in library)', () => {
  it('bootstrap from RANK / WORLD_SIZE / LONGCAT_NCCL_ID / LONGCAT_NCCL_PATH: a rank sends to itself', async () => {
    const id = ncclUniqueId(standin);
    const comm = await withEnv(
      { RANK: '0', WORLD_SIZE: '1', LOCAL_RANK: undefined, LONGCAT_NCCL_ID: id, LONGCAT_NCCL_PATH: standin },
      () => NcclComm.init({ device: 'cpu' }),
    );
    expect([comm.rank, comm.worldSize, comm.device]).toEqual([0, 1, 'cpu']);
    const x = tensor(rng(7).array(13), [13]),
      y = empty([13]);
    comm.group(() => {
      comm.send(x, 0);
      comm.recv(y, 0);
    });
    expect(bytes(y)).toEqual(bytes(x));
    comm.dispose();
    await withEnv({ RANK: undefined, WORLD_SIZE: '1' }, () =>
      expect(NcclComm.init({ id, device: 'cpu', libraryPath: standin })).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringContaining('set RANK'),
      }),
    );
    await withEnv({ RANK: 'one', WORLD_SIZE: '1' }, () =>
      expect(NcclComm.init({ id, device: 'cpu', libraryPath: standin })).rejects.toMatchObject({
        code: 'E_ARGUMENT',
        message: expect.stringContaining("RANK='one'"),
      }),
    );
  });

  for (const n of [2, 4]) {
    it(`${n} ranks: a ring of grouped send/recv moves every byte (f32 and bf16)`, async () => {
      const { comms, streams } = await world(n);
      const r = rng(100 + n);
      for (const dtype of ['f32', 'bf16'] as const) {
        const shape = [7, 5 + n];
        const sent = comms.map(() => tensor(r.array(7 * (5 + n), -4, 4), shape, { dtype }));
        const got = comms.map(() => empty(shape, { dtype }));
        comms.forEach((c, rank) => {
          c.group(() => {
            c.send(sent[rank]!, (rank + 1) % n);
            c.recv(got[rank]!, (rank + n - 1) % n);
          }, streams[rank]);
        });
        for (const s of streams) s.synchronize();
        for (let rank = 0; rank < n; ++rank) expect(bytes(got[rank]!)).toEqual(bytes(sent[(rank + n - 1) % n]!));
      }
      for (const c of comms) c.dispose();
    });

    it(`${n} ranks: all-to-all of chunks of different sizes, in order, self included`, async () => {
      const { comms, streams } = await world(n);
      const r = rng(200 + n);
      const size = (from: number, to: number) => 3 + 5 * from + 2 * to; // every pair its own size
      // Two rounds per pair, so messages between the same two ranks must match in issue order.
      const sent = comms.map((_, from) =>
        comms.map((_, to) => [0, 1].map(() => tensor(r.array(size(from, to)), [size(from, to)]))),
      );
      const got = comms.map((_, to) => comms.map((_, from) => [0, 1].map(() => empty([size(from, to)]))));
      comms.forEach((c, rank) => {
        c.group(() => {
          for (const round of [0, 1])
            for (let peer = 0; peer < n; ++peer) {
              c.send(sent[rank]![peer]![round]!, peer);
              c.recv(got[rank]![peer]![round]!, peer);
            }
        }, streams[rank]);
      });
      for (const s of streams) s.synchronize();
      for (let to = 0; to < n; ++to)
        for (let from = 0; from < n; ++from)
          for (const round of [0, 1]) expect(bytes(got[to]![from]![round]!)).toEqual(bytes(sent[from]![to]![round]!));
      for (const c of comms) c.dispose();
      expect(() => comms[0]!.send(sent[0]![0]![0]!, 1)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
    });
  }

  it('a mismatched world size fails every rank with E_NCCL from ncclCommInitRank', async () => {
    const id = ncclUniqueId(standin);
    const results = await Promise.allSettled([
      NcclComm.init({ rank: 0, worldSize: 2, id, device: 'cpu', libraryPath: standin }),
      NcclComm.init({ rank: 1, worldSize: 3, id, device: 'cpu', libraryPath: standin }),
    ]);
    for (const res of results) {
      expect(res.status).toBe('rejected');
      expect((res as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_NCCL',
        message: expect.stringMatching(
          // the two bootstrap threads race: whichever joins second names the mismatch
          /ncclCommInitRank failed: invalid usage .*says the world has (3 ranks, an earlier rank said 2|2 ranks, an earlier rank said 3)/,
        ),
      });
    }
  });

  it('bad rank, world size, id, peer or sizes: typed errors', async () => {
    const id = ncclUniqueId(standin);
    const init = (rank: number, worldSize: number, anId = id) =>
      NcclComm.init({ rank, worldSize, id: anId, device: 'cpu', libraryPath: standin });
    await expect(init(2, 2)).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('rank 2 is outside the world of 2 ranks'),
    });
    await expect(init(-1, 2)).rejects.toMatchObject({ code: 'E_ARGUMENT' });
    await expect(init(0, 0)).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('world size must be at least 1'),
    });
    await expect(init(0, 1, 'abc')).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining('256 hex digits'),
    });
    await expect(init(0, 1, 'zz'.repeat(128))).rejects.toMatchObject({
      code: 'E_ARGUMENT',
      message: expect.stringContaining("'z'"),
    });
    // Two processes claiming one rank.
    const twice = await Promise.allSettled([init(0, 2), init(0, 2)]);
    for (const res of twice)
      expect((res as PromiseRejectedResult).reason).toMatchObject({
        code: 'E_NCCL',
        message: expect.stringContaining('joined twice'),
      });

    const { comms, streams } = await world(2);
    const x = tensor([1, 2, 3], [3]);
    expect(() => comms[0]!.send(x, 2)).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT', message: expect.stringContaining('peer 2') }),
    );
    expect(() => comms[0]!.group(() => comms[0]!.send(x, 1, streams[1]), streams[0])).toThrow(
      expect.objectContaining({ code: 'E_ARGUMENT', message: expect.stringContaining("group's stream") }),
    );
    // Rank 1 receives 4 floats where rank 0 sent 3: the receive fails, named, at the stream's synchronize.
    comms[0]!.send(x, 1);
    comms[1]!.recv(empty([4]), 0, streams[1]);
    expect(() => streams[1]!.synchronize()).toThrow(
      expect.objectContaining({
        code: 'E_NCCL',
        message: expect.stringMatching(/ncclGroupEnd failed: invalid usage .*receives 16 bytes from rank 0, which sent 12/),
      }),
    );
    for (const c of comms) c.dispose();
  });

  it('abort fails a receive still waiting on the communicator; the aborted communicator is closed', async () => {
    const { comms, streams } = await world(2);
    const y = empty([5]);
    comms[0]!.recv(y, 1, streams[0]); // rank 1 never sends
    comms[1]!.abort();
    expect(() => streams[0]!.synchronize()).toThrow(
      expect.objectContaining({
        code: 'E_NCCL',
        message: expect.stringMatching(/ncclGroupEnd failed: remote process exited.*aborted while rank 0 waited for rank 1/),
      }),
    );
    expect(() => comms[1]!.send(y, 0)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
    comms[1]!.abort(); // idempotent
    comms[0]!.abort();
    comms[0]!.dispose();
  });
});

// The CUDA path (a cudaStream_t handed to ncclSend/ncclRecv, the device made current for the
// bootstrap) on the emulated device, whose memory is host memory the stand-in can copy. One rank
// sending to itself: a blocking stand-in would wait on the JS thread for another rank's send.
describe.skipIf(native.buildInfo().cudaArchs !== 'emulated')('NCCL on the emulated CUDA device (stand-in library)', () => {
  it('one rank on cuda:0 sends to itself; tensors must be on the communicator device', async () => {
    const comm = await NcclComm.init({
      rank: 0,
      worldSize: 1,
      id: ncclUniqueId(standin),
      device: 'cuda:0',
      libraryPath: standin,
    });
    const x = tensor(rng(11).array(29), [29], { device: 'cuda:0' }),
      y = empty([29], { device: 'cuda:0' });
    const stream = new Stream('cuda:0');
    comm.group(() => {
      comm.send(x, 0);
      comm.recv(y, 0);
    }, stream);
    stream.synchronize();
    expect(bytes(y)).toEqual(bytes(x));
    expect(() => comm.send(tensor([1], [1]), 0, stream)).toThrow(expect.objectContaining({ code: 'E_DEVICE' }));
    comm.dispose();
  });
});

// The CLI's conventions and error paths, and the interactive chat: --version, `help` and
// `<command> --help` exit 0 on stdout; usage mistakes exit 2 with the command's usage and are caught
// before any model is loaded; runtime errors exit 1; Ctrl+C exits 130; `chat` answers lines read from stdin.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initRandom } from '../lib/init-random.js';

const cli = path.resolve(__dirname, '../dist/cli.js');
// Generous limits: a loaded CI machine may be slow; nothing here measures time.
const run = (args: string[], input?: string) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input, timeout: 240_000 });
const missing = '/nonexistent/longcat-model';

describe('longcat CLI error paths', () => {
  it('an unknown command exits 2 and prints the usage', () => {
    const r = run(['frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
    expect(r.stderr).toMatch(/usage: longcat <command>/);
  });

  it('an unknown option exits 2 and names it', () => {
    const r = run(['generate', '--prompt', 'x', '--frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--frobnicate/);
    expect(r.stderr).toMatch(/usage: longcat/);
  });

  const bad: [string[], RegExp][] = [
    [['--max-tokens', 'abc'], /--max-tokens must be an integer >= 0, got 'abc'/],
    [['--max-tokens=-1'], /--max-tokens must be an integer >= 0, got '-1'/],
    [['--max-tokens', '-1'], /--max-tokens.*ambiguous/], // node:util parseArgs: a value that looks like an option
    [['--max-tokens', '1.5'], /--max-tokens must be an integer/],
    [['--temperature=-0.5'], /--temperature must be a number >= 0/],
    [['--top-p', '2'], /--top-p must be a number in \[0, 1\]/],
    [['--min-p', 'nan'], /--min-p must be a number in \[0, 1\]/],
    [['--top-k', ''], /--top-k must be an integer >= 0, got ''/],
    [['--seed=-3'], /--seed must be an integer >= 0/],
    [['--threads', '0'], /--threads must be an integer >= 1/],
    [['--max-context', '1e400'], /--max-context must be an integer >= 1/],
    [['--prefill-chunk', '0'], /--prefill-chunk must be an integer >= 1, got '0'/],
    [['--prefill-chunk-while-decoding', '2.5'], /--prefill-chunk-while-decoding must be an integer >= 1, got '2.5'/],
    [['--backend', 'gpu'], /--backend must be auto, cpu or cuda, got 'gpu'/],
  ];
  it.each(bad)('generate %j: exits 2 naming the option, before touching the model', (args, message) => {
    const r = run(['generate', '--model', missing, '--prompt', 'x', ...args]);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/nonexistent/); // validated before the checkpoint is opened
  });

  it('--version prints the package version and exits 0', () => {
    const r = run(['--version']);
    expect(r.status, r.stderr).toBe(0);
    const pkg = JSON.parse(readFileSync(path.resolve(__dirname, '../package.json'), 'utf8')) as { version: string };
    expect(r.stdout.trim()).toBe(`longcat-flash ${pkg.version}`);
  });

  it('no command, --help and `help` print the command list on stdout and exit 0', () => {
    for (const args of [[], ['--help'], ['-h'], ['help']]) {
      const r = run(args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^usage: longcat <command>/);
      for (const cmd of ['generate', 'chat', 'serve', 'inspect', 'init-random', 'quantize', 'eval', 'bench', 'doctor', 'info'])
        expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
    }
  });

  const commands = ['generate', 'chat', 'serve', 'inspect', 'init-random', 'quantize', 'eval', 'bench', 'doctor', 'info', 'help'];
  it.each(commands)('%s: --help, -h and `help <command>` print its usage and options, exit 0, and load nothing', cmd => {
    for (const args of [
      [cmd, '--help'],
      [cmd, '-h'],
      ['help', cmd],
    ]) {
      const r = run(args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^usage: longcat ${cmd} `));
      expect(r.stderr).toBe(''); // no model loaded or written, nothing else said
    }
    // --help wins over a missing required argument or an invalid value
    const r = run([cmd, '--max-tokens', 'x', '--help']);
    expect(r.status).toBe(0);
  });

  it('help of an unknown command exits 2', () => {
    const r = run(['help', 'frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command 'frobnicate'/);
  });

  const early: [string[], RegExp][] = [
    [['bench', '--model', missing, '-p', 'x'], /--n-prompt must be an integer >= 0, got 'x'/],
    [['bench', '--model', missing, '-n', '1.5'], /--n-gen must be an integer >= 0/],
    [['bench', '--model', missing, '-r', '0'], /--repetitions must be an integer >= 1, got '0'/],
    [['bench', '--model', missing, '-o', 'xml'], /--output must be md, json or jsonl, got 'xml'/],
    [['bench', '--model', missing, '-p', '0', '-n', '0'], /nothing to run/],
    [['bench', '--model', missing, '--backend', 'tpu'], /--backend must be auto, cpu or cuda/],
    [['bench', '--model', missing, '--preset', 'tiny'], /--model DIR or --preset P, not both/],
    [['bench', '--preset', 'huge'], /unknown preset 'huge'/],
    [['doctor', '--device', 'gpu0'], /--device must be cuda:N, got 'gpu0'/],
    [['doctor', '--frobnicate'], /--frobnicate/],
    [['inspect', missing, 'extra'], /one checkpoint directory, got 2 arguments/],
    [['serve', '--model', missing, '--max-concurrent', '0'], /--max-concurrent must be an integer >= 1/],
    [['serve', '--model', missing, '--port', '70000'], /--port must be an integer in \[0, 65535\]/],
    [['quantize', '--to', 'fp4', missing, '/tmp/never'], /--to must be fp8, int8 or int4/],
    [['eval', '--kld', missing, missing, '--text', 'x', '--ctx', '2'], /--ctx must be an integer >= 3/],
  ];
  it.each(early)("%j: exits 2 naming the problem, with the command's usage, before touching a model", (args, message) => {
    const r = run(args);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(new RegExp(`usage: longcat ${args[0]} `));
    expect(r.stderr).not.toMatch(/nonexistent|writing a random/); // validated before a checkpoint is opened or written
  });

  it('missing required arguments exit 2', () => {
    expect(run(['generate', '--model', missing]).stderr).toMatch(/--prompt TEXT is required/);
    expect(run(['generate', '--model', missing]).status).toBe(2);
    expect(run(['inspect']).status).toBe(2);
    expect(run(['init-random', '--preset', 'huge', '--out', path.join(tmpdir(), 'never-written')]).stderr).toMatch(
      /unknown preset 'huge'/,
    );
    expect(run(['chat', '--model', missing, '--top-k', 'x']).status).toBe(2);
  });

  const badAgreement: [string[], RegExp][] = [
    [['--mtp', '--draft-agreement', '1.5'], /--draft-agreement must be a number in \[0, 1\], got '1.5'/],
    [['--mtp', '--draft-agreement', 'most'], /--draft-agreement must be a number in \[0, 1\], got 'most'/],
    [['--draft-agreement', '0.5'], /--draft-agreement needs --mtp/],
    [
      ['--preset', 'medium', '--mtp', '--draft-agreement', '0.5'],
      /--draft-agreement needs --preset tiny\|small\|lite, not 'medium'/,
    ],
  ];
  it.each(badAgreement)('init-random %j: exits 2 naming the option, before writing anything', (args, message) => {
    const out = path.join(tmpdir(), 'longcat-never-written');
    const r = run(['init-random', '--out', out, ...args]);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(existsSync(out)).toBe(false);
  });

  it('a runtime error (a missing checkpoint) exits 1', () => {
    const r = run(['chat', '--model', missing]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/nonexistent.*\[E_(CHECKPOINT|CONFIG)\]/s);
  });
});

describe('longcat chat', () => {
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'longcat-chat-'));
    await initRandom({ preset: 'tiny', out: dir, seed: 4 });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('answers each non-empty line from stdin and exits 0 at its end', () => {
    const r = run(['chat', '--model', dir, '--max-tokens', '3', '--system', 'Be brief.'], 'Hello\n\nHow are you?\n');
    expect(r.status, r.stderr).toBe(0);
    // One prompt per line read (the empty one re-prompts) plus the last one before end of input.
    expect(r.stdout.split('> ').length - 1).toBe(4);
    expect(r.stderr).toMatch(/ on (cpu|cuda:\d+)\n/); // auto: the emulated or real GPU where there is one
  });
});

describe('longcat generate interrupted', () => {
  it('Ctrl+C stops the generation, prints what it has and exits 130', async () => {
    const { spawn } = await import('node:child_process');
    const dir = mkdtempSync(path.join(tmpdir(), 'longcat-int-'));
    try {
      // A model whose greedy text has no EOS in its first 300 tokens, so the generation is still
      // running (hundreds of steps) when the signal sent at its first output lands.
      for (let seed = 5; ; seed++) {
        await initRandom({ preset: 'tiny', out: dir, seed });
        const probe = run(['generate', '--model', dir, '--prompt', 'x', '--max-tokens', '300', '--backend', 'cpu']);
        expect(probe.status, probe.stderr).toBe(0);
        if (/\[length\]/.test(probe.stderr)) break;
        expect(seed, 'a seed without an early EOS').toBeLessThan(40);
        rmSync(dir, { recursive: true, force: true });
      }
      const child = spawn(
        process.execPath,
        [cli, 'generate', '--model', dir, '--prompt', 'x', '--max-tokens', '100000', '--backend', 'cpu'],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let err = '';
      child.stderr.on('data', d => {
        err += d;
      });
      child.stdout.once('data', () => child.kill('SIGINT'));
      const code = await new Promise<number | null>(resolve => child.on('exit', c => resolve(c)));
      expect(code, err).toBe(130);
      expect(err).toMatch(/\[abort\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('Ctrl+C during a long prompt stops its prefill at a chunk boundary: no token generated, exit 130', async () => {
    const { spawn } = await import('node:child_process');
    const dir = mkdtempSync(path.join(tmpdir(), 'longcat-int-prefill-'));
    try {
      await initRandom({ preset: 'tiny', out: dir, seed: 5 });
      // About 2,200 prompt tokens, one per forward step: thousands of steps, far more than the few
      // that run before the signal, sent once the model is loaded, is handled.
      const words = 'the shepherd counted forty two sheep in the green valley and wrote their names down'.split(' ');
      const prompt = Array.from({ length: 900 }, (_, i) => words[i % words.length]).join(' ');
      const child = spawn(
        process.execPath,
        [cli, 'generate', '--model', dir, '--prompt', prompt, '--max-tokens', '5', '--backend', 'cpu', '--prefill-chunk', '1'],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let err = '',
        sent = false;
      child.stderr.on('data', d => {
        err += d;
        if (!sent && / on cpu\n/.test(err)) {
          sent = true;
          child.kill('SIGINT');
        }
      });
      const code = await new Promise<number | null>(resolve => child.on('exit', c => resolve(c)));
      expect(code, err).toBe(130);
      expect(err).toMatch(/\[abort\] prompt \d+ tokens .*generated 0 tokens/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

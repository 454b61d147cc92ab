#!/usr/bin/env node
// The `longcat` command.
import { parseArgs } from 'node:util';
import { buildInfo, cpuFeatures, devices, native, threads } from './index.js';
import { LongcatError } from './errors.js';

const USAGE = `usage: longcat <command> [options]

commands:
  info                      backends, devices, CPU features and build flags
`;

function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function info(json: boolean) {
  const b = buildInfo(), f = cpuFeatures(), c = native.cudaStatus();
  const facts = { build: b, cpu: f, threads: threads(), cuda: c, devices: devices() };
  if (json) {
    console.log(JSON.stringify(facts, null, 2));
    return;
  }
  const isa = Object.entries(f).filter(([k, v]) => k !== 'isa' && v === true).map(([k]) => k).join(' ');
  console.log(`longcat-flash native addon (${b.buildSystem} build, ${b.compiler}${b.debug ? ', debug' : ''}, N-API ${b.napiVersion})`);
  console.log(`backends:  cpu${b.cuda ? `, cuda (compiled for sm_${b.cudaArchs})` : ' (built without CUDA)'}`);
  console.log(`cpu:       ${threads()} threads, kernels use ${f.isa}; features: ${isa || 'none'}`);
  console.log(`cuda:      ${c.available ? `${c.deviceCount} device(s)` : `unavailable (${c.reason})`}`);
  for (const d of devices()) {
    if (d.kind === 'cuda')
      console.log(`  ${d.id}: ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${d.multiprocessors} SMs, ${formatBytes(d.totalBytes)} (${formatBytes(d.freeBytes)} free)`);
  }
}

async function main(argv: string[]) {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info': {
      const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } } });
      info(!!values.json);
      return;
    }
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return;
    default:
      process.stderr.write(`longcat: unknown command '${cmd}'\n${USAGE}`);
      process.exitCode = 2;
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof LongcatError) {
    process.stderr.write(`longcat: ${err.message} [${err.code}]\n`);
  } else {
    process.stderr.write(`longcat: ${(err as Error)?.stack ?? String(err)}\n`);
  }
  process.exitCode = 1;
});

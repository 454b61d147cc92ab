// The CLI's progress bar: one line on stderr, redrawn in place, with the rate and the time left,
// only when that stream is a terminal (piped or redirected output stays free of it).

/** Where the bar is drawn: a stream that may be a terminal. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

export interface ProgressOptions {
  /** What is counted: 'bytes' (rates in MB/s) or items (rates per second). Default 'bytes'. */
  unit?: 'bytes' | 'items';
  /** Default process.stderr. */
  stream?: ProgressStream;
  /** Milliseconds clock (tests). Default performance.now. */
  now?: () => number;
  /** Least milliseconds between redraws (the last one is always drawn). Default 100. */
  interval?: number;
}

export interface Progress {
  /** `done` of `total` so far; `label` replaces the bar's label (the phase or the file at hand). */
  update(done: number, total: number, label?: string): void;
  /** Ends the line (if anything was drawn). */
  end(): void;
}

function bytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < u.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

/** Seconds as 42s, 3m05s or 1h02m. */
export function duration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

export function progressBar(label: string, opts: ProgressOptions = {}): Progress {
  const out = opts.stream ?? process.stderr;
  const now = opts.now ?? (() => performance.now());
  const interval = opts.interval ?? 100;
  const unitBytes = (opts.unit ?? 'bytes') === 'bytes';
  const tty = !!out.isTTY;
  const start = now();
  let last = -Infinity,
    drawn = false,
    current = label;
  return {
    update(done, total, l) {
      if (l !== undefined) current = l;
      if (!tty) return;
      const t = now();
      if (t - last < interval && done < total) return;
      last = t;
      const frac = total > 0 ? Math.min(1, done / total) : 1;
      const secs = (t - start) / 1e3;
      const rate = secs > 0 ? done / secs : 0;
      const eta = rate > 0 ? (total - done) / rate : Infinity;
      const bar = '#'.repeat(Math.round(frac * 24)).padEnd(24, '.');
      const amount = unitBytes ? `${bytes(done)} / ${bytes(total)}` : `${done}/${total}`;
      const speed = unitBytes ? `${bytes(rate)}/s` : `${rate.toFixed(1)}/s`;
      const line = `${current} [${bar}] ${amount} ${speed} ETA ${done >= total ? '0s' : duration(eta)}`;
      const width = (out.columns ?? 100) - 1;
      out.write(`\r${line.length > width ? line.slice(0, width) : line.padEnd(width)}`);
      drawn = true;
    },
    end() {
      if (drawn) out.write('\n');
      drawn = false;
    },
  };
}
